"""Which worker holds which prefix blocks, as the engines' own KV events report it.

Engines that publish KV events (vLLM's `--kv-events-config`, the simulator's
`--kv-events`) announce every block they store and evict: `BlockStored` carries the
block's engine hash, its parent's engine hash and the block's token ids; `BlockRemoved`
the hashes that left. Engine hashes are opaque to the router (vLLM's depend on its hash
function and seed), so the index re-keys each block by a *chain key* it computes itself
from the token ids (`router.kv_event_wire.chain_hashes`): key(block i) =
hash((key(block i-1), tokens of block i)). A request's
token ids give the same keys, so "how many leading blocks of this prompt does worker W
hold" is a walk down the request's keys. Equal keys mean equal whole prefixes, as in the
engines' own prefix caches.

Pure bookkeeping: no I/O, no clocks. `router.kv_events` feeds it; the `kv_aware` policy
reads it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

from router.kv_event_wire import ROOT_HASH, chain_hashes

ChainKey = int


class _WorkerBlocks:
    """One worker's blocks: engine hash (per storage medium) -> chain key."""

    def __init__(self) -> None:
        self.by_engine_hash: dict[tuple[str | None, Hashable], ChainKey] = {}
        self.block_size: int | None = None


class KVBlockIndex:
    """Chain key -> the workers holding that block; fed by engine KV events."""

    def __init__(self) -> None:
        self._workers: dict[str, _WorkerBlocks] = {}
        # How many of a worker's stored blocks (across media) have this key.
        self._holders: dict[ChainKey, Counter[str]] = {}

    # -- events ---------------------------------------------------------------------

    def stored(
        self,
        worker_id: str,
        block_hashes: Sequence[Hashable],
        parent_block_hash: Hashable | None,
        token_ids: Sequence[int],
        block_size: int,
        medium: str | None = None,
    ) -> int:
        """Record a `BlockStored` event; returns how many blocks were indexed.

        Blocks whose parent the index never saw (an event lost before this one) cannot
        be chained and are skipped: a missing block only costs a cache hit, a wrong key
        would send requests to a worker that lacks the prefix.
        """
        if block_size <= 0 or len(token_ids) < len(block_hashes) * block_size:
            return 0
        blocks = self._workers.setdefault(worker_id, _WorkerBlocks())
        blocks.block_size = block_size
        if parent_block_hash is None:
            parent = ROOT_HASH
        else:
            found = blocks.by_engine_hash.get((medium, parent_block_hash))
            if found is None:
                return 0
            parent = found
        keys = chain_hashes(token_ids[: len(block_hashes) * block_size], block_size, parent)
        for engine_hash, key in zip(block_hashes, keys, strict=True):
            slot = (medium, engine_hash)
            old = blocks.by_engine_hash.get(slot)
            if old == key:
                continue
            if old is not None:
                self._drop(worker_id, old)
            blocks.by_engine_hash[slot] = key
            self._holders.setdefault(key, Counter())[worker_id] += 1
        return len(keys)

    def removed(self, worker_id: str, block_hashes: Iterable[Hashable], medium: str | None = None) -> None:
        """Record a `BlockRemoved` event (unknown hashes are ignored)."""
        blocks = self._workers.get(worker_id)
        if blocks is None:
            return
        for engine_hash in block_hashes:
            key = blocks.by_engine_hash.pop((medium, engine_hash), None)
            if key is not None:
                self._drop(worker_id, key)

    def cleared(self, worker_id: str) -> None:
        """Forget everything a worker holds (`AllBlocksCleared`, lost events, removal)."""
        blocks = self._workers.pop(worker_id, None)
        if blocks is None:
            return
        for key in blocks.by_engine_hash.values():
            self._drop(worker_id, key)

    def _drop(self, worker_id: str, key: ChainKey) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders[worker_id] -= 1
        if holders[worker_id] <= 0:
            del holders[worker_id]
        if not holders:
            del self._holders[key]

    # -- queries --------------------------------------------------------------------

    def block_count(self, worker_id: str) -> int:
        blocks = self._workers.get(worker_id)
        return len(blocks.by_engine_hash) if blocks else 0

    def block_size(self, worker_ids: Iterable[str]) -> int | None:
        """The block size the given workers reported (the first one known)."""
        for worker_id in worker_ids:
            blocks = self._workers.get(worker_id)
            if blocks is not None and blocks.block_size:
                return blocks.block_size
        return None

    def matched_blocks(self, token_ids: Sequence[int], worker_ids: Iterable[str]) -> tuple[dict[str, int], int]:
        """For each worker, how many leading full blocks of `token_ids` it holds; and how
        many full blocks the prompt has (0 when no worker reported a block size yet)."""
        wanted = list(worker_ids)
        matched = dict.fromkeys(wanted, 0)
        block_size = self.block_size(wanted)
        if block_size is None:
            return matched, 0
        keys = chain_hashes(token_ids, block_size)
        alive = set(wanted)
        for depth, key in enumerate(keys, start=1):
            alive &= self._holders.get(key, Counter()).keys()
            if not alive:
                break
            for worker_id in alive:
                matched[worker_id] = depth
        return matched, len(keys)
