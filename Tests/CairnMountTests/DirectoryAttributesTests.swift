@testable import CairnMount
@testable import MetaState
import Testing

/// The mount's memory of directory attributes its own mutations returned (pure logic).
@Suite struct DirectoryAttributesTests {
    func directory(_ inode: InodeNumber, ctime: Int64, nlink: UInt32 = 2) -> Attributes {
        Attributes(inode: inode, type: .directory, mode: 0o755, uid: 0, gid: 0, nlink: nlink, size: 0,
                   atime: Timestamp(seconds: ctime, nanoseconds: 0), mtime: Timestamp(seconds: ctime, nanoseconds: 0),
                   ctime: Timestamp(seconds: ctime, nanoseconds: 0), rdev: 0)
    }

    @Test func answersOnceWithTheLatestStateThenAsksAgain() {
        let memory = DirectoryAttributes(keptFor: .seconds(60))
        memory.record([directory(5, ctime: 10), directory(6, ctime: 10)])
        memory.record([directory(5, ctime: 12, nlink: 3)])
        // An answer that arrives late (an earlier mutation) does not replace a later state.
        memory.record([directory(5, ctime: 11)])
        #expect(memory.take(5) == directory(5, ctime: 12, nlink: 3))
        #expect(memory.take(5) == nil, "a remembered state answers one getattr only")
        #expect(memory.take(6) == directory(6, ctime: 10))
        #expect(memory.take(7) == nil)
        #expect(memory.servedTotal == 2)
    }

    @Test func forgetsOnOwnChangesAndAfterTheAttributeTimeout() async throws {
        let memory = DirectoryAttributes(keptFor: .seconds(60))
        memory.record([directory(5, ctime: 10)])
        memory.forget(5)
        #expect(memory.take(5) == nil)

        let brief = DirectoryAttributes(keptFor: .milliseconds(20))
        brief.record([directory(5, ctime: 10)])
        try await Task.sleep(for: .milliseconds(60))
        #expect(brief.take(5) == nil, "nothing older than the attribute timeout is served")

        let off = DirectoryAttributes(keptFor: .zero)
        off.record([directory(5, ctime: 10)])
        #expect(off.take(5) == nil, "attr_timeout=0 turns it off")
    }

    @Test func holdsAtMostItsBoundKeepingTheNewest() {
        let memory = DirectoryAttributes(keptFor: .seconds(60))
        let count = DirectoryAttributes.entriesMax + 100
        for inode in 1...count { memory.record([directory(InodeNumber(inode), ctime: 10)]) }
        var kept = 0
        for inode in 1...count where memory.take(InodeNumber(inode)) != nil { kept += 1 }
        #expect(kept == DirectoryAttributes.entriesMax)
        memory.record([directory(1, ctime: 10)])
        #expect(memory.take(1) != nil)
    }
}
