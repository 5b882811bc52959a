import Baton
import Testing

@testable import BatonNode

@Suite struct InstanceCacheTests {
    struct Count: ProcessState {
        var value = 0
    }

    func instance(_ id: String, version: Int64 = 1) -> ProcessInstance<Count> {
        var instance = ProcessInstance<Count>(id: id)
        instance.version = version
        return instance
    }

    @Test func theLeastRecentlyUsedInstanceIsEvicted() {
        let cache = InstanceCache<Count>(capacity: 2)
        cache["a"] = instance("a")
        cache["b"] = instance("b")
        _ = cache["a"]  // a is used after b
        cache["c"] = instance("c")
        #expect(cache["b"] == nil)
        #expect(cache["a"] != nil)
        #expect(cache["c"] != nil)
        #expect(cache.count == 2)
    }

    @Test func anUpdatedInstanceCountsAsUsed() {
        let cache = InstanceCache<Count>(capacity: 2)
        cache["a"] = instance("a")
        cache["b"] = instance("b")
        cache["a"] = instance("a", version: 2)
        cache["c"] = instance("c")
        #expect(cache["a"]?.version == 2)
        #expect(cache["b"] == nil)
    }

    @Test func aHotInstanceKeepsItsPlaceAndTheRecordOfUsesStaysBounded() {
        let cache = InstanceCache<Count>(capacity: 3)
        for round in 0..<1_000 {
            _ = cache["hot"]
            cache["hot"] = instance("hot", version: Int64(round + 1))
            cache["cold-\(round)"] = instance("cold-\(round)")
        }
        #expect(cache["hot"]?.version == 1_000)
        #expect(cache["cold-999"] != nil)
        #expect(cache["cold-998"] != nil)
        #expect(cache["cold-997"] == nil)
        #expect(cache.count == 3)
        #expect(cache.recordedUses <= 6)
    }

    @Test func aCacheOfNoCapacityHoldsNothing() {
        let cache = InstanceCache<Count>(capacity: 0)
        cache["a"] = instance("a")
        #expect(cache["a"] == nil)
    }
}
