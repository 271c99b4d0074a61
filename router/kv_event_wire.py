"""vLLM's KV-event wire format and the chained block hash, defined once.

The router reads these messages (`router.kv_events`) and the simulator writes them
(`engine_sim.kv_events`); both import this module, so a field renamed here changes both
sides together. The router must not import the simulator, hence it lives here.

What vLLM's `ZmqEventPublisher` sends (vllm/distributed/kv_events.py):
- a PUB socket sends multipart `(topic, seq, payload)`; `seq` is 8 bytes big-endian and
  counts batches from 0, so a gap means the subscriber lost messages;
- `payload` is a msgpack array `[ts, events, data_parallel_rank?]`, each event a map
  tagged by `"type"`: `BlockStored`, `BlockRemoved` or `AllBlocksCleared`;
- a ROUTER socket serves replay: a client sends `(b"", start_seq)` and gets
  `(b"", topic, seq, payload)` for every buffered batch from `start_seq` on, then
  `(b"", b"", END_SEQ, b"")`.

Block hashes are opaque engine values: unsigned 64-bit ints by default
(`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`), bytes otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

BlockHash = int | bytes


class BlockStored(msgspec.Struct, tag=True, kw_only=True):
    """Blocks that entered an engine's prefix cache, with the tokens they hold.

    Fields vLLM always sends but older versions lacked default to None, so a reader
    accepts both; vLLM's later additions (group_idx, extra_keys, ...) are ignored.
    """

    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None = None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None


class BlockRemoved(msgspec.Struct, tag=True, kw_only=True):
    """Blocks evicted from an engine's prefix cache."""

    block_hashes: list[BlockHash]
    medium: str | None = None


class AllBlocksCleared(msgspec.Struct, tag=True):
    """The engine dropped its whole prefix cache (e.g. a reset)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
EVENT_TYPES: dict[str, type[KVEvent]] = {cls.__name__: cls for cls in (BlockStored, BlockRemoved, AllBlocksCleared)}


class KVEventBatch(msgspec.Struct, array_like=True):
    """One published payload.

    `events` stays untyped on purpose (as in vLLM's own `EventBatch`): an event type a
    newer engine adds must cost that one event, not the whole batch. `decode_batch`
    converts the known ones. vLLM appends `data_parallel_rank`; nothing here reads it,
    so it is left out (decoding ignores trailing items) and the simulator sends none.
    """

    ts: float
    events: list[Any]


_batch_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_encoder = msgspec.msgpack.Encoder()

SEQ_BYTES = 8


def encode_seq(seq: int) -> bytes:
    """The sequence-number frame: 8 bytes big-endian, signed (END_SEQ is -1)."""
    return seq.to_bytes(SEQ_BYTES, "big", signed=True)


def decode_seq(frame: bytes) -> int:
    return int.from_bytes(frame, "big", signed=True)


# Ends a replay answer.
END_SEQ = encode_seq(-1)

_U64 = (1 << 64) - 1


def external_block_hash(block_hash: int) -> int:
    """A block hash as vLLM publishes int hashes: unsigned 64-bit."""
    return block_hash & _U64


def encode_batch(events: Sequence[KVEvent], ts: float) -> bytes:
    return _encoder.encode(KVEventBatch(ts, list(events)))


def decode_batch(payload: bytes) -> tuple[list[KVEvent], int]:
    """The known events of one payload, in order, and how many events had an unknown type.

    Raises ValueError for a payload that is not a KV event batch, or a known event whose
    fields are wrong; nothing of such a batch should be applied.
    """
    try:
        batch = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(f"not a [ts, events, ...] KV event batch: {exc}") from None
    events: list[KVEvent] = []
    unknown = 0
    for raw in batch.events:
        tag = raw.get("type") if isinstance(raw, dict) else None
        kind = EVENT_TYPES.get(tag) if isinstance(tag, str) else None
        if kind is None:
            unknown += 1
            continue
        try:
            events.append(msgspec.convert(raw, kind))
        except msgspec.ValidationError as exc:
            raise ValueError(f"malformed {tag} event: {exc}") from None
    return events, unknown


ROOT_HASH = 0


def chain_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (a trailing partial block has none).

    hash(block i) = hash((hash(block i-1), tokens of block i)), so equal hashes mean equal
    whole prefixes, as in the engines' own prefix caches. The simulator uses these as its
    engine block hashes; the router's `KVBlockIndex` re-keys every engine's blocks with them.
    Python's hash of an int tuple is not randomized per process, so the values are stable.
    """
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes
