"""The KV event index and the kv_aware policy: pure, no engines, no sockets."""

from __future__ import annotations

import random

import pytest

from router.config import PolicyConfig
from router.kv_event_wire import chain_hashes as chain_keys
from router.placement.types import RequestDescriptor
from router.policies.kv_aware import KVAwarePolicy
from router.policies.kv_block_index import KVBlockIndex
from router.policies.registry import create_policy
from router.workers.worker import Worker

BS = 4  # block size


def tokens(n: int, start: int = 100) -> list[int]:
    return list(range(start, start + n))


def store_prompt(
    index: KVBlockIndex, worker_id: str, prompt: list[int], *, salt: str = "", split: int | None = None
) -> list[str]:
    """Store `prompt`'s full blocks as an engine would, with opaque engine hashes; optionally
    in two events (parent link through the engine hash). Returns the engine hashes."""
    n = len(prompt) // BS
    hashes = [f"{salt}{worker_id}-h{i}" for i in range(n)]
    cut = n if split is None else split
    index.stored(worker_id, hashes[:cut], None, prompt[: cut * BS], BS)
    if cut < n:
        index.stored(worker_id, hashes[cut:], hashes[cut - 1], prompt[cut * BS : n * BS], BS)
    return hashes


def test_chain_keys_depend_on_the_whole_prefix() -> None:
    a = chain_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], BS)
    b = chain_keys([0, 2, 3, 4, 5, 6, 7, 8], BS)
    assert len(a) == 2  # the trailing partial block has no key
    assert a[0] != b[0] and a[1] != b[1]  # same second block, other first block: other key
    assert chain_keys([1, 2, 3, 4, 5, 6, 7, 8], BS) == a


def test_stored_blocks_match_the_leading_blocks_of_a_prompt() -> None:
    index = KVBlockIndex()
    store_prompt(index, "w1", tokens(12), split=1)  # 3 blocks over two events, chained by engine hash
    store_prompt(index, "w2", tokens(4))  # the first block only
    matched, total = index.matched_blocks(tokens(14), ["w1", "w2", "w3"])
    assert total == 3 and matched == {"w1": 3, "w2": 1, "w3": 0}
    # Another first block: nothing matches, even though later tokens agree.
    matched, _ = index.matched_blocks([0] + tokens(11, start=101), ["w1", "w2"])
    assert matched == {"w1": 0, "w2": 0}


def test_removed_and_cleared_blocks_stop_matching() -> None:
    index = KVBlockIndex()
    hashes = store_prompt(index, "w1", tokens(12))
    store_prompt(index, "w2", tokens(12))
    index.removed("w1", [hashes[1]])  # a hole: only the first block still counts for w1
    assert index.matched_blocks(tokens(12), ["w1", "w2"])[0] == {"w1": 1, "w2": 3}
    assert index.block_count("w1") == 2
    index.cleared("w2")
    assert index.matched_blocks(tokens(12), ["w1", "w2"])[0] == {"w1": 1, "w2": 0}
    assert index.block_count("w2") == 0
    index.removed("w1", ["never-stored"])  # unknown hashes are ignored
    index.removed("nobody", hashes)


def test_a_block_whose_parent_was_never_seen_is_not_indexed() -> None:
    index = KVBlockIndex()
    assert index.stored("w1", ["h9"], "unknown-parent", tokens(4), BS) == 0
    assert index.block_count("w1") == 0


def test_the_same_block_on_two_media_counts_until_both_are_gone() -> None:
    index = KVBlockIndex()
    index.stored("w1", ["h0"], None, tokens(4), BS, medium="GPU")
    index.stored("w1", ["h0"], None, tokens(4), BS, medium="CPU")
    index.removed("w1", ["h0"], medium="GPU")
    assert index.matched_blocks(tokens(4), ["w1"])[0] == {"w1": 1}
    index.removed("w1", ["h0"], medium="CPU")
    assert index.matched_blocks(tokens(4), ["w1"])[0] == {"w1": 0}


def test_no_block_size_known_means_no_blocks() -> None:
    assert KVBlockIndex().matched_blocks(tokens(8), ["w1"]) == ({"w1": 0}, 0)


# --- the policy --------------------------------------------------------------------------


def workers(*loads: int) -> list[Worker]:
    ws = [Worker(f"http://10.0.1.{i}:8000", worker_id=f"w{i}") for i in range(len(loads))]
    for w, load in zip(ws, loads, strict=True):
        w.in_flight_requests = load
    return ws


def request(prompt: list[int] | None) -> RequestDescriptor:
    return RequestDescriptor("r", None, "text", routing_tokens=prompt)


def policy(index: KVBlockIndex, **weights: float) -> KVAwarePolicy:
    return KVAwarePolicy(PolicyConfig(**weights), index, random.Random(0))


def test_the_worker_holding_the_prefix_wins_over_an_idle_one() -> None:
    index = KVBlockIndex()
    store_prompt(index, "w1", tokens(16))
    ws = workers(0, 2, 0)  # w1 is the busiest, but holds all 4 blocks
    chosen = policy(index).select_worker(ws, request(tokens(18)))
    assert (chosen.worker.worker_id, chosen.reason) == ("w1", "kv_hit")
    assert policy(index).scores(ws, request(tokens(18)))["w1"] == (1.0, 0.0)


def test_load_outweighs_a_small_overlap_when_weighted_so() -> None:
    index = KVBlockIndex()
    store_prompt(index, "w0", tokens(4))  # 1 of 4 blocks: prefix score 0.25
    ws = workers(4, 0)
    # Default weights: w0 scores 1.0*0.25 + 0.5*0 = 0.25; w1 scores 0 + 0.5*1 = 0.5.
    chosen = policy(index).select_worker(ws, request(tokens(16)))
    assert (chosen.worker.worker_id, chosen.reason) == ("w1", "kv_miss")
    # Prefix weighted far above load: the overlap wins.
    chosen = policy(index, kv_overlap_weight=10.0).select_worker(ws, request(tokens(16)))
    assert (chosen.worker.worker_id, chosen.reason) == ("w0", "kv_hit")


def test_without_tokens_or_cached_blocks_load_decides() -> None:
    index = KVBlockIndex()
    ws = workers(3, 1, 2)
    assert policy(index).select_worker(ws, request(None)).worker.worker_id == "w1"
    assert policy(index).select_worker(ws, request(None)).reason == "no_tokens"
    chosen = policy(index).select_worker(ws, request(tokens(16)))
    assert (chosen.worker.worker_id, chosen.reason) == ("w1", "kv_miss")


def test_equal_scores_spread_over_the_tied_workers() -> None:
    ws = workers(0, 0, 0)
    p = policy(KVBlockIndex())
    chosen = {p.select_worker(ws, request(tokens(8))).worker.worker_id for _ in range(60)}
    assert chosen == {"w0", "w1", "w2"}


def test_kv_aware_needs_the_index() -> None:
    with pytest.raises(ValueError, match="KV event index"):
        create_policy("kv_aware", PolicyConfig(), random.Random(0))
