// swift-tools-version:6.1
// Cairn — a distributed file system. See README.md and ../shared/DESIGN.md.
import PackageDescription

/// One set of Swift settings for every Swift target (as grpc-swift-2 does).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "cairn",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cairn", targets: ["cairn"]),
        .executable(name: "cairn-sim", targets: ["cairn-sim"]),
        .executable(name: "cairn-bench", targets: ["cairn-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    ],
    targets: [
        // C modules: each C library is wrapped once.
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "CCairnLinux"),
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),

        // Shared value types, limits, errors, hashing and checksums.
        .target(
            name: "CairnCore",
            dependencies: ["CCrypto", "CCairnLinux", .product(name: "SystemPackage", package: "swift-system"),
                           .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // The on-disk, content-addressed chunk store (blocking I/O; callers choose the thread).
        .target(
            name: "ChunkStore",
            dependencies: [
                "CairnCore", "CCairnLinux",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The chunk data protocol: frames, protobuf headers, a client.
        .target(
            name: "ChunkProtocol",
            dependencies: [
                "CairnCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        // The `cairn chunkserver` daemon: serves a ChunkStore over ChunkProtocol, scrubs it.
        .target(
            name: "ChunkServer",
            dependencies: [
                "CairnCore", "ChunkStore", "ChunkProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Consistent-hashing placement of chunks on chunkservers (pure: no I/O, clock or randomness).
        .target(name: "Placement", dependencies: ["CairnCore"], swiftSettings: swiftSettings),
        // The client side of chunk data: a connection pool, replicated uploads with failover,
        // verified fetches, the chunk cache and the per-file write buffer.
        .target(
            name: "ChunkTransfer",
            dependencies: [
                "CairnCore", "ChunkProtocol", "MetaState",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The metadata namespace as a pure, deterministic replicated state machine (no I/O, no clock).
        .target(name: "MetaState", dependencies: ["CairnCore", "Placement"], swiftSettings: swiftSettings),
        // The metadata service: the namespace state machine on Raft behind a gRPC API, its client
        // and session, and the chunkserver side of the registry.
        .target(
            name: "MetaService",
            dependencies: [
                "MetaState", "Placement", "RaftRuntime", "RaftCore", "CairnCore",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // The libfuse3 low-level bridge: a `FuseFileSystem` protocol of async methods, and `FuseMount`,
        // the service that mounts one and runs the session loop.
        .target(
            name: "FuseKernel",
            dependencies: [
                "CFuse", "CairnCore",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A FuseFileSystem mirroring a local directory: the baseline `tools/bench` runs beside Cairn.
        .target(
            name: "FusePassthrough",
            dependencies: [
                "FuseKernel", "CairnCore", "CCairnLinux",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // `cairn mount`: Cairn as a FUSE file system — namespace calls to the metadata service,
        // data to and from chunkservers placed on the ring.
        .target(
            name: "CairnMount",
            dependencies: [
                "FuseKernel", "MetaService", "MetaState", "ChunkTransfer", "Placement", "CairnCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // What integration tests share: temp directories, real daemon processes, seeded bytes.
        .target(
            name: "CairnTestSupport",
            dependencies: [
                "CairnCore", "RaftCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        .executableTarget(
            name: "cairn",
            dependencies: [
                "CairnCore", "CCairnLinux", "ChunkStore", "ChunkProtocol", "ChunkServer", "RaftCore", "RaftRuntime", "ReplicatedKV",
                "MetaService", "MetaState", "FuseKernel", "FusePassthrough", "CairnMount",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // Raft: the pure consensus core (no I/O, no clock, no threads, no global randomness) ...
        .target(name: "RaftCore", swiftSettings: swiftSettings),
        // ... and the deterministic simulator that tries to break it (test support, used by `tools/simulate`).
        .target(name: "RaftSimulation", dependencies: ["RaftCore"], swiftSettings: swiftSettings),
        // The Raft runtime: write-ahead log, snapshot files, the driver and its transport.
        .target(
            name: "RaftRuntime",
            dependencies: [
                "RaftCore", "CairnCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        // A replicated key-value store on the Raft runtime (real-process tests and benchmarks).
        .target(
            name: "ReplicatedKV",
            dependencies: [
                "RaftRuntime", "RaftCore", "CairnCore",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "cairn-sim",
            dependencies: [
                "RaftSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // Micro-benchmarks driven by tools/bench (not part of the test run).
        .executableTarget(
            name: "cairn-bench",
            dependencies: [
                "CairnCore", "CCairnLinux", "ChunkProtocol", "ReplicatedKV", "MetaService", "MetaState",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        .testTarget(
            name: "RaftCoreTests",
            dependencies: ["RaftCore", "RaftSimulation"],
            resources: [.copy("testdata")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RaftRuntimeTests",
            dependencies: [
                "RaftRuntime", "RaftCore", "CairnCore", "CairnTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ReplicatedKVTests",
            dependencies: [
                "ReplicatedKV", "RaftRuntime", "CairnCore", "CairnTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MetaServiceTests",
            dependencies: [
                "MetaService", "MetaState", "Placement", "CairnCore", "CairnTestSupport", "RaftRuntime",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CairnMountTests",
            dependencies: ["CairnCore", "CairnMount", "MetaState", "CairnTestSupport", "CCairnLinux",
                           .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FuseKernelTests",
            dependencies: [
                "FuseKernel", "FusePassthrough", "CairnCore", "CairnTestSupport", "CCairnLinux",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "CairnCoreTests", dependencies: ["CairnCore"], swiftSettings: swiftSettings),
        .testTarget(name: "PlacementTests", dependencies: ["Placement", "CairnCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "MetaStateTests",
            dependencies: ["MetaState", "Placement", "CairnCore", "CairnTestSupport", "CCairnLinux"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChunkStoreTests",
            dependencies: ["ChunkStore", "CairnCore", "CairnTestSupport", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChunkTransferTests",
            dependencies: [
                "ChunkTransfer", "ChunkServer", "ChunkProtocol", "MetaState", "CairnCore", "CairnTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChunkServerTests",
            dependencies: [
                "ChunkServer", "ChunkProtocol", "ChunkStore", "CairnCore", "CairnTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
