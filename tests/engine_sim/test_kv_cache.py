"""The prefix cache: chained hashes, hits after an identical prefix, LRU eviction under pressure."""

from engine_sim.kv_cache import PrefixCache, block_hashes


def test_hashes_are_chained_and_skip_partial_blocks():
    a = block_hashes(list(range(10)), 4)
    assert len(a) == 2  # 10 tokens: two full blocks, the partial third has no hash
    b = block_hashes([99] + list(range(1, 10)), 4)
    # The first block differs, so every later block differs too (the chain carries it).
    assert a[0] != b[0] and a[1] != b[1]
    assert block_hashes(list(range(8)), 4) == a


def test_identical_prefix_hits_after_commit():
    cache = PrefixCache(num_blocks=8, block_size=4)
    hashes = block_hashes(list(range(12)), 4)
    first = cache.allocate(hashes, 3)
    assert first is not None and first.num_cached_blocks == 0
    assert cache.match(hashes) == 0  # not computed yet: nothing to hit
    cache.commit(first, hashes)
    first_ids = list(first.block_ids)
    cache.free(first)
    second = cache.allocate(hashes, 4)
    assert second is not None and second.num_cached_blocks == 3
    assert second.block_ids[:3] == first_ids  # the very blocks the first request filled
    other = block_hashes([7] + list(range(1, 12)), 4)
    assert cache.match(other) == 0


def test_allocation_fails_without_side_effects_when_full():
    cache = PrefixCache(num_blocks=4, block_size=4)
    held = cache.allocate([], 3)
    assert held is not None and cache.num_free == 1
    assert cache.allocate([], 2) is None
    assert cache.num_free == 1 and cache.usage == 0.75
    cache.free(held)
    assert cache.num_free == 4 and cache.usage == 0.0


def test_lru_eviction_under_pressure_drops_oldest_prefix_tail_first():
    cache = PrefixCache(num_blocks=4, block_size=2)
    old = block_hashes([1, 1, 2, 2], 2)
    new = block_hashes([3, 3, 4, 4], 2)
    for hashes in (old, new):
        alloc = cache.allocate(hashes, 2)
        cache.commit(alloc, hashes)
        cache.free(alloc)
    assert cache.match(old) == 2 and cache.match(new) == 2
    # One fresh block must evict: the least recently used prefix loses its tail first.
    alloc = cache.allocate([], 1)
    assert alloc is not None
    assert cache.match(old) == 1 and cache.match(new) == 2
    assert cache.evictions == 1
    # Using `old`'s head again makes it recent; the next eviction takes `new`'s tail.
    cache.free(alloc)
    again = cache.allocate(old[:1], 1)
    cache.free(again)
    cache.allocate([], 1)
    assert cache.match(old) == 1 and cache.match(new) == 1
    assert cache.evictions == 2


def test_referenced_blocks_are_never_evicted():
    cache = PrefixCache(num_blocks=2, block_size=2)
    hashes = block_hashes([5, 5], 2)
    running = cache.allocate(hashes, 1)
    cache.commit(running, hashes)
    assert cache.allocate([], 2) is None  # only one free block; the running one is pinned
    assert cache.match(hashes) == 1
