import ArgumentParser
import Logging
import SystemPackage

/// `--log-level`, shared by every daemon.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level '\(logLevel)'") }
    }

    /// A logger writing to standard error at the chosen level.
    func makeLogger(label: String) -> Logger {
        var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return logger
    }
}

/// Writes a line to standard output unbuffered (scripts and tests wait for such lines).
func printLine(_ message: String) {
    _ = try? FileDescriptor.standardOutput.writeAll(Array((message + "\n").utf8))
}

/// Writes a line to standard error.
func printError(_ message: String) {
    _ = try? FileDescriptor.standardError.writeAll(Array((message + "\n").utf8))
}
