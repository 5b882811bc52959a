// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Baton",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Baton", targets: ["Baton"]),
        .library(name: "BatonTesting", targets: ["BatonTesting"]),
        .library(name: "BatonSQLite", targets: ["BatonSQLite"]),
        .library(name: "BatonNode", targets: ["BatonNode"]),
        .library(name: "BatonAMQP", targets: ["BatonAMQP"]),
        .library(name: "BatonAMQPTransport", targets: ["BatonAMQPTransport"]),
        .library(name: "BatonService", targets: ["BatonService"]),
        .library(name: "BatonHTTP", targets: ["BatonHTTP"]),
        .executable(name: "baton-transport-benchmark", targets: ["BatonTransportBenchmark"]),
        .executable(name: "amqp-c-baseline", targets: ["CAMQPBaseline"]),
        .executable(name: "baton-benchmark", targets: ["BatonBenchmark"]),
        .executable(name: "orders", targets: ["orders"]),
        .executable(name: "inventory", targets: ["inventory"]),
        .executable(name: "shipping", targets: ["shipping"]),
        .executable(name: "fulfillment", targets: ["fulfillment"]),
        .executable(name: "bookstore-demo", targets: ["BookstoreDemo"]),
        .executable(name: "bookstore-chaos", targets: ["BookstoreChaos"]),
    ],
    traits: [
        .trait(
            name: "OpenTelemetry",
            description:
                "The services export their traces over OTLP/HTTP (swift-otel) when OTEL_EXPORTER_OTLP_ENDPOINT is set; off by default, so the default and Docker builds do not compile swift-otel"
        )
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.0"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // The core: messages, process managers and their engine. Pure, no I/O.
        .target(name: "Baton"),
        // The testing kit, shipped: scenarios for process managers, a controllable clock, the in-process transport.
        .target(
            name: "BatonTesting",
            dependencies: [
                "Baton", "BatonNode", .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The store port over PostgreSQL (postgres-nio), for replicas that share a database.
        .target(
            name: "BatonPostgres",
            dependencies: [
                "BatonNode", .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The transport port's adapter for RabbitMQ, over BatonAMQP.
        .target(name: "BatonAMQPTransport", dependencies: ["BatonNode", "BatonAMQP"]),
        // The store port's SQLite adapter: streams, inbox, outbox, timers, dead letters in one transaction.
        .target(
            name: "BatonSQLite",
            dependencies: [
                "Baton", "BatonNode", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ]
        ),
        // The runtime: a node's consume loop, outbox relay and deadlines over the transport port.
        .target(
            name: "BatonNode",
            dependencies: [
                "Baton",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // The operations endpoint of a service: Prometheus metrics and health checks over HTTP.
        .target(
            name: "BatonHTTP",
            dependencies: [
                "BatonNode",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The shell every service executable shares: options, serve, operator commands, dead letters.
        .target(
            name: "BatonService",
            dependencies: [
                "BatonNode", "BatonAMQPTransport", "BatonSQLite", "BatonPostgres", "BatonHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel", condition: .when(traits: ["OpenTelemetry"])),
            ]
        ),
        // The bookstore's published contract: the only code its bounded contexts share.
        .target(name: "BookstoreContracts", dependencies: ["Baton"]),
        // The bookstore's bounded contexts, each a library with a thin executable.
        .target(name: "Orders", dependencies: ["BatonService", "BookstoreContracts"]),
        .executableTarget(name: "orders", dependencies: ["Orders"]),
        .target(name: "Inventory", dependencies: ["BatonService", "BookstoreContracts"]),
        .executableTarget(name: "inventory", dependencies: ["Inventory"]),
        .target(name: "Shipping", dependencies: ["BatonService", "BookstoreContracts"]),
        .executableTarget(name: "shipping", dependencies: ["Shipping"]),
        .target(name: "Fulfillment", dependencies: ["BatonService", "BookstoreContracts"]),
        .executableTarget(name: "fulfillment", dependencies: ["Fulfillment"]),
        // The README's process manager, built and tested so that the documentation cannot drift from the API.
        .target(name: "ExampleFulfillment", dependencies: ["BatonService"]),
        .executableTarget(name: "example-fulfillment", dependencies: ["ExampleFulfillment"]),
        // Operator tooling over all four services: the invariants, the demo load.
        .target(
            name: "BookstoreOperations",
            dependencies: [
                "Orders", "Inventory", "Shipping", "Fulfillment", "ChildProcesses", "BatonAMQP", "BatonService",
            ]
        ),
        .executableTarget(
            name: "BookstoreDemo",
            dependencies: ["BookstoreOperations", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "BookstoreChaos",
            dependencies: [
                "BookstoreOperations", "ChildProcesses",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The benchmark: the broker's ceiling (C relays), the mesh of service executables, embedded mode, scale.
        .executableTarget(
            name: "BatonBenchmark",
            dependencies: [
                "BatonNode", "BatonAMQPTransport", "BatonSQLite", "BatonTesting", "ChildProcesses", "BatonService",
                "BookstoreOperations",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "OTel", package: "swift-otel", condition: .when(traits: ["OpenTelemetry"])),
                .product(name: "Hummingbird", package: "hummingbird", condition: .when(traits: ["OpenTelemetry"])),
            ]
        ),
        // A node that kills itself at a chosen point; run as a child process by the crash-injection tests.
        .executableTarget(
            name: "BatonCrashProbe",
            dependencies: [
                "BatonNode", "BatonAMQPTransport", "BatonSQLite", "CPowerLossVFS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // A SQLite VFS that drops every write no sync covered, for the crash probe's power-loss runs: not shipped.
        .target(name: "CPowerLossVFS", linkerSettings: [.linkedLibrary("sqlite3")]),
        // Child processes for tools and tests (services, probes, scripts): one helper, not shipped.
        .target(name: "ChildProcesses"),
        // rabbitmq-c (Debian's librabbitmq-dev), wrapped once and imported only by BatonAMQP.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // The AMQP 0-9-1 transport: connections confined to their own threads, confirms, consumers.
        .target(
            name: "BatonAMQP",
            dependencies: [
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The same measurements as the Swift benchmark, in plain C against the same librabbitmq.
        .executableTarget(
            name: "CAMQPBaseline",
            dependencies: ["CRabbitMQ"]
        ),
        .executableTarget(
            name: "BatonTransportBenchmark",
            dependencies: [
                "BatonAMQP", "ChildProcesses",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Test support (not shipped): the test broker node the README's test command starts.
        .target(
            name: "BatonTestSupport",
            dependencies: ["Baton", "BatonNode", "ChildProcesses", .product(name: "Logging", package: "swift-log")],
            path: "Tests/Support"
        ),
        .testTarget(
            name: "BatonTests",
            dependencies: ["Baton", "BatonTesting"]
        ),
        .testTarget(
            name: "BatonNodeTests",
            dependencies: [
                "BatonNode", "BatonTesting", "Baton", "BatonSQLite", "BatonTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "BookstoreTests",
            dependencies: [
                "BookstoreOperations", "BookstoreContracts", "BatonAMQP", "BatonService", "BatonTestSupport",
                "BatonTesting", "ChildProcesses",
                "Shipping", "Fulfillment",
                "orders", "inventory", "shipping", "fulfillment",
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .testTarget(name: "BookstoreContractsTests", dependencies: ["BookstoreContracts", "Baton"]),
        .testTarget(name: "OrdersTests", dependencies: ["Orders", "BookstoreContracts", "BatonTesting", "BatonNode"]),
        .testTarget(
            name: "InventoryTests",
            dependencies: ["Inventory", "BookstoreContracts", "BatonTesting", "BatonNode"]
        ),
        .testTarget(
            name: "ShippingTests",
            dependencies: ["Shipping", "BookstoreContracts", "BatonTesting", "BatonNode"]
        ),
        .testTarget(
            name: "FulfillmentTests",
            dependencies: [
                "Fulfillment", "BookstoreContracts", "BatonTesting", "Baton", "BatonNode", "BatonSQLite",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "BatonSQLiteTests",
            dependencies: [
                "BatonSQLite", "BatonNode", "Baton", "BatonTestSupport", .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .testTarget(
            name: "BatonPostgresTests",
            dependencies: [
                "BatonPostgres", "BatonNode", "Baton", "BatonTesting", "BatonTestSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "BatonTestingTests",
            dependencies: ["BatonTesting", "BatonNode", "Baton", "BatonTestSupport"]
        ),
        .testTarget(
            name: "BatonAMQPTransportTests",
            dependencies: ["BatonAMQPTransport", "BatonAMQP", "BatonNode", "BatonTestSupport"]
        ),
        .testTarget(
            name: "ExampleFulfillmentTests",
            dependencies: ["ExampleFulfillment", "BatonNode", "BatonTesting"]
        ),
        .testTarget(name: "ChildProcessesTests", dependencies: ["ChildProcesses"]),
        .testTarget(name: "BatonBenchmarkTests", dependencies: ["BatonBenchmark"]),
        .testTarget(
            name: "BatonHTTPTests",
            dependencies: [
                "BatonHTTP", "BatonNode", "BatonTestSupport", "Baton", "BatonTesting",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "BatonServiceTests",
            dependencies: [
                "BatonService", "BatonNode", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "BatonAMQPTests",
            dependencies: ["BatonAMQP"]
        ),
        // Integration tests: the real broker, real processes.
        .testTarget(
            name: "BatonAMQPIntegrationTests",
            dependencies: ["BatonAMQP", "BatonTestSupport"]
        ),
        .testTarget(
            name: "BatonNodeIntegrationTests",
            dependencies: [
                "BatonNode", "BatonSQLite", "BatonAMQP", "BatonAMQPTransport", "BatonCrashProbe", "BatonTestSupport",
                "Baton", "ChildProcesses", .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
