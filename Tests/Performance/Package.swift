// swift-tools-version: 6.1
// Micro-benchmarks of Baton's hot paths with ordo-one/benchmark, in a package of their own so that the
// framework's build does not carry the benchmark harness:
//
//   swift package --package-path Tests/Performance benchmark
import PackageDescription

let package = Package(
    name: "BatonPerformance",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Baton", path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "BatonHotPaths",
            dependencies: [
                .product(name: "Baton", package: "Baton"),
                .product(name: "BatonSQLite", package: "Baton"),
                .product(name: "BatonNode", package: "Baton"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/BatonHotPaths",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ],
    swiftLanguageModes: [.v6]
)
