"""A finite paged KV cache with a prefix cache, shaped like vLLM's block manager (pure, no I/O).

- Full blocks are identified by chained hashes (`block_hashes`, i.e.
  `router.kv_event_wire.chain_hashes`): a block's hash covers its tokens and its parent's
  hash, so equal hashes mean equal whole prefixes.
- Blocks nobody references stay cached in an LRU free queue; allocation takes from its head
  and evicts whatever prefix that block held.
- Freed requests put their blocks at the queue's tail in reverse order, so a prefix's tail
  is evicted before its head (a shorter shared prefix stays useful longer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# The chained hash the router's KV index computes too: one definition for both sides.
from router.kv_event_wire import chain_hashes as block_hashes

__all__ = ["Allocation", "BlockRemoved", "BlockStored", "PrefixCache", "block_hashes"]


@dataclass(frozen=True)
class BlockStored:
    """Blocks that became cached (vLLM's `BlockStored` KV event, before encoding)."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]


@dataclass(frozen=True)
class BlockRemoved:
    """Cached blocks that were evicted (vLLM's `BlockRemoved`)."""

    block_hashes: list[int]


@dataclass
class Allocation:
    """The blocks one request holds; the first `num_cached_blocks` were prefix-cache hits."""

    block_ids: list[int]
    num_cached_blocks: int


class PrefixCache:
    def __init__(self, num_blocks: int, block_size: int, record_events: bool = False) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        # Unreferenced blocks, least recently used first (cached or empty alike).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.evictions = 0
        # Cache changes since the last `drain_events()`, kept only when someone publishes them.
        self._record_events = record_events
        self._events: list[BlockStored | BlockRemoved] = []

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by running requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._by_hash)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` are cached now (a lookup; changes nothing)."""
        n = 0
        for h in hashes:
            if h not in self._by_hash:
                break
            n += 1
        return n

    def allocate(self, hashes: Sequence[int], total_blocks: int) -> Allocation | None:
        """Reserve `total_blocks`, reusing the cached prefix of `hashes`; None if they do not fit.

        `hashes` are the prefix blocks the request may reuse (already capped by the caller).
        Nothing changes when None is returned, so the caller can queue and retry.
        """
        hits = [self._by_hash[h] for h in hashes[: self.match(hashes)]]
        hits = hits[:total_blocks]
        reusable_free = sum(1 for b in hits if self._ref[b] == 0)
        need = total_blocks - len(hits)
        if need > len(self._free) - reusable_free:
            return None
        for b in hits:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
        fresh = []
        for _ in range(need):
            b, _ = self._free.popitem(last=False)
            old = self._hash_of[b]
            if old is not None:
                del self._by_hash[old]
                self._hash_of[b] = None
                self.evictions += 1
                if self._record_events:
                    self._events.append(BlockRemoved([old]))
            self._ref[b] = 1
            fresh.append(b)
        return Allocation(block_ids=hits + fresh, num_cached_blocks=len(hits))

    def commit(self, allocation: Allocation, hashes: Sequence[int], token_ids: Sequence[int] = ()) -> None:
        """Record that the allocation's first `len(hashes)` blocks now hold those prefixes.

        `token_ids` are the tokens the hashes cover (only used for KV events). A prefix
        another request cached meanwhile keeps its first block (like vLLM).
        """
        stored: list[int] = []
        first = 0
        for i, (block, h) in enumerate(zip(allocation.block_ids, hashes, strict=False)):
            if self._hash_of[block] is None and h not in self._by_hash:
                self._hash_of[block] = h
                self._by_hash[h] = block
                if not stored:
                    first = i
                stored.append(h)
        if self._record_events and stored:
            bs = self.block_size
            parent = hashes[first - 1] if first > 0 else None
            self._events.append(BlockStored(stored, parent, list(token_ids[first * bs : (first + len(stored)) * bs])))

    def drain_events(self) -> list[BlockStored | BlockRemoved]:
        events, self._events = self._events, []
        return events

    def free(self, allocation: Allocation) -> None:
        """Drop a request's references; unreferenced blocks join the LRU tail, tail-first."""
        for b in reversed(allocation.block_ids):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
        allocation.block_ids = []
