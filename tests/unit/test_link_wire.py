"""The coordinator <-> relay link's schema: every value crosses it unchanged."""

from __future__ import annotations

import pytest

from router.errors import ApiError, NoHealthyPrefillError, PlacementError, QueueFull
from router.placement.types import DisaggDecision, Pair, RequestDescriptor, Single
from router.processes import link_wire as wire
from router.workers.worker import Role, Worker


def _through_link(value: object) -> object:
    """`value` as the other end reads it: framed, sent, parsed."""
    (message,) = wire.FrameReader().feed(wire.frame([value]))
    return message[0]


def test_frames_split_anywhere_come_out_whole() -> None:
    messages = [[wire.PLACE, 1, ["x" * 300]], [wire.RELEASE_LOAD, 7], [wire.SUCCEEDED, "w1"]]
    data = b"".join(wire.frame(m) for m in messages)
    for cut in range(1, len(data)):
        reader = wire.FrameReader()
        got = [*reader.feed(data[:cut]), *reader.feed(data[cut:])]
        assert got == messages, cut


def test_descriptor_round_trip() -> None:
    d = RequestDescriptor(
        "req-1",
        "m",
        "hello",
        stream=True,
        routing_tokens=[1, 2, 3],
        session_key="s",
        estimated_tokens=40,
        prompt_tokens=3,
        excluded={"w2", "w1"},
        failed_decision="pair",
    )
    assert wire.decode_descriptor(_through_link(wire.encode_descriptor(d))) == d


def test_plans_resolve_to_the_relays_own_worker_objects() -> None:
    prefill, decode = Worker("http://p:1", Role.PREFILL, worker_id="w1"), Worker("http://d:1", Role.DECODE, worker_id="w2")
    mine = {w.worker_id: Worker(w.url, w.role, worker_id=w.worker_id) for w in (prefill, decode)}
    disagg = DisaggDecision("pair", "uncached_above_threshold", 900, 100)
    pair = wire.decode_plan(wire.encode_plan(Pair(prefill, decode, "rr", "ca", disagg)), mine.__getitem__)
    assert pair == Pair(mine["w1"], mine["w2"], "rr", "ca", disagg)
    single = wire.decode_plan(wire.encode_plan(Single(decode, "least_load", None)), mine.__getitem__)
    assert single == Single(mine["w2"], "least_load", None)


def test_worker_copy_then_update_in_place() -> None:
    w = Worker("http://h:8000/", Role.PREFILL, models=frozenset({"a"}), bootstrap_port=9, labels={"z": "1"}, worker_id="w5")
    w.engine_info["kv_transfer_info"] = {"engine_id": "e"}
    copy = wire.update_worker(None, wire.encode_worker(w))
    assert (copy.worker_id, copy.url, copy.role, copy.models, copy.bootstrap_port, copy.labels, copy.engine_info) == (
        "w5", "http://h:8000", Role.PREFILL, frozenset({"a"}), 9, {"z": "1"}, {"kv_transfer_info": {"engine_id": "e"}}
    )
    w.models = frozenset({"a", "b"})
    same = wire.update_worker(copy, wire.encode_worker(w))
    assert same is copy and copy.models == frozenset({"a", "b"})


@pytest.mark.parametrize(
    "err",
    [
        QueueFull("full", retry_after=1.0),
        NoHealthyPrefillError("no prefill"),
        ApiError(502, "bad gateway", code="upstream_error", param="p"),
    ],
)
def test_errors_keep_their_class_and_fields(err: ApiError) -> None:
    back = wire.decode_error(_through_link(wire.encode_error(err)))
    assert type(back) is type(err)
    assert (back.status, back.message, back.type, back.param, back.code, back.retry_after) == (
        err.status, err.message, err.type, err.param, err.code, err.retry_after
    )
    assert isinstance(back, PlacementError) == isinstance(err, PlacementError)
