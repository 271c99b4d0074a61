"""The KV-event wire schema both sides share: what the simulator encodes, the router decodes.

(Decoding the simulator's batches with vLLM's own msgspec types is
`tests/engine_sim/test_kv_events.py::test_batches_decode_with_vllms_own_types`.)
"""

from __future__ import annotations

import msgspec
import pytest

from engine_sim import kv_cache
from engine_sim.kv_events import encode_batch as encode_sim_batch
from router.kv_event_wire import (
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    chain_hashes,
    decode_batch,
    decode_seq,
    encode_seq,
)

U64 = (1 << 64) - 1


def test_simulator_batches_decode_to_the_events_it_recorded() -> None:
    tokens = list(range(8))
    hashes = chain_hashes(tokens, 4)
    payload = encode_sim_batch(
        [kv_cache.BlockStored(hashes, None, tokens), kv_cache.BlockRemoved(hashes[1:])], block_size=4, ts=5.0
    )
    events, unknown = decode_batch(payload)
    assert unknown == 0
    stored, removed = events
    assert isinstance(stored, BlockStored) and isinstance(removed, BlockRemoved)
    # Published as vLLM publishes int hashes: unsigned 64-bit, whatever sign Python's hash has.
    assert stored.block_hashes == [h & U64 for h in hashes] and all(h >= 0 for h in stored.block_hashes)
    assert (stored.parent_block_hash, stored.token_ids, stored.block_size, stored.medium) == (None, tokens, 4, "GPU")
    assert removed.block_hashes == [hashes[1] & U64]


def test_unknown_event_types_are_counted_and_the_rest_kept() -> None:
    payload = msgspec.msgpack.encode(
        [1.0, [{"type": "SomethingNewer", "x": 1}, {"type": "AllBlocksCleared"}, 7], 0]  # vLLM appends the DP rank
    )
    events, unknown = decode_batch(payload)
    assert events == [AllBlocksCleared()] and unknown == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgspec.msgpack.encode({"not": "a batch"}),
        msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved"}]]),  # a known event missing its hashes
        msgspec.msgpack.encode([1.0, [{"type": "BlockStored", "block_hashes": [1], "token_ids": ["a"], "block_size": 1}]]),
    ],
)
def test_malformed_batches_are_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_batch(payload)


def test_sequence_frames_are_8_bytes_big_endian_and_end_seq_is_minus_one() -> None:
    assert encode_seq(1) == b"\x00" * 7 + b"\x01"
    assert decode_seq(encode_seq(2**40)) == 2**40
    assert decode_seq(END_SEQ) == -1 and END_SEQ == b"\xff" * 8
