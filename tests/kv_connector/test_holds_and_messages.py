"""Hold/receive bookkeeping with an explicit clock, the handshake wire format and protocol versioning."""

from __future__ import annotations

import msgspec
import pytest

from kv_connector.holds import HoldTable, ReceiveTracker
from kv_connector.identity import PROTOCOL_VERSION, UNVERSIONED, kv_fingerprint, version_problem
from kv_connector.layout import KVLayout, Region
from kv_connector.messages import PushRequest, PushResult, decode, encode


def test_hold_is_claimed_once_and_released_to_its_owner():
    t = HoldTable()
    t.add("t1", "req-1", [4, 5], now=0.0, ttl_s=10)
    hold = t.claim("t1")
    assert hold is not None and hold.block_ids == [4, 5]
    assert t.claim("t1") is None  # a second consumer cannot take it
    assert t.expire(now=100.0) == []  # a running push never expires under it
    assert t.release("t1") == "req-1"
    assert "t1" not in t and t.release("t1") is None


def test_unclaimed_holds_expire_and_free_their_blocks():
    t = HoldTable()
    t.add("a", "ra", [1], now=0.0, ttl_s=5)
    t.add("b", "rb", [2], now=3.0, ttl_s=5)
    assert t.expire(now=4.9) == []
    assert t.expire(now=5.0) == [("a", "ra")]
    assert t.claim("a") is None and len(t) == 1
    with pytest.raises(ValueError):
        t.add("b", "rb", [2], now=0, ttl_s=1)


def test_receive_tracker_reports_done_failed_and_timeouts():
    r = ReceiveTracker()
    r.start("k1", "ok-req", deadline=10)
    r.start("k2", "bad-req", deadline=10)
    r.start("k3", "slow-req", deadline=5)
    assert r.complete("k1", True)
    assert r.complete("k2", False, "producer said no")
    assert not r.complete("k1", True)  # late duplicate: ignored
    r.fail("never-started", "bad params")
    assert r.expire(now=4) == []
    assert r.expire(now=5) == [("k3", "slow-req")]
    done, failed = r.take()
    assert done == {"ok-req"}
    assert failed == {
        "bad-req": "producer said no",
        "never-started": "bad params",
        "slow-req": "timed out waiting for the producer to push KV",
    }
    assert r.take() == (set(), {}) and len(r) == 0


def test_messages_round_trip_and_garbage_is_rejected():
    layout = KVLayout(regions=(Region(0, 0, 64, 64, 8),), memory=(b"\x01\x02",))
    req = PushRequest(
        transfer_id="e/1",
        ticket="t",
        producer_engine_id="e",
        consumer_engine_id="d",
        fingerprint="f",
        consumer_endpoint=b"127.0.0.1:1",
        consumer_layout=layout,
        dst_block_ids=[3, 4],
        timeout_s=30.0,
        first_block=1,
        protocol_version=PROTOCOL_VERSION,
    )
    assert decode(encode(req)) == req
    res = PushResult("e/1", "t", ok=False, error="nope")
    assert decode(encode(res)) == res
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode(b"\x93garbage")


def test_a_request_without_a_version_comes_from_an_unversioned_build():
    """Builds before versioning sent no version field: they decode as UNVERSIONED and are refused."""
    layout = KVLayout(regions=(Region(0, 0, 64, 64, 8),), memory=(b"\x01",))
    old = {
        "type": "push",
        "transfer_id": "e/1",
        "ticket": "t",
        "producer_engine_id": "e",
        "consumer_engine_id": "d",
        "fingerprint": "f",
        "consumer_endpoint": b"127.0.0.1:1",
        "consumer_layout": msgspec.to_builtins(layout, builtin_types=(bytes,)),
        "dst_block_ids": [3],
        "timeout_s": 30.0,
        "tamper": None,  # fields an old build sent and this one no longer knows are ignored
    }
    req = decode(msgspec.msgpack.encode(old))
    assert isinstance(req, PushRequest) and req.protocol_version == UNVERSIONED
    assert version_problem(req.protocol_version, "consumer") is not None


def test_version_problem_names_both_versions_and_the_fix():
    assert version_problem(PROTOCOL_VERSION, "prefill engine") is None
    problem = version_problem(PROTOCOL_VERSION + 1, "prefill engine")
    assert problem is not None
    assert f"prefill engine speaks version {PROTOCOL_VERSION + 1}, this engine {PROTOCOL_VERSION}" in problem
    assert "same atom-mesh release" in problem


def test_fingerprint_changes_with_the_protocol_version(monkeypatch):
    """A peer that only compares fingerprints still refuses another protocol version."""
    import kv_connector.identity as identity

    same_kv = {"model": "m", "dtype": "float32", "block_size": 128}
    now = kv_fingerprint(same_kv)
    assert kv_fingerprint(dict(reversed(same_kv.items()))) == now  # key order does not matter
    assert kv_fingerprint({**same_kv, "block_size": 16}) != now
    monkeypatch.setattr(identity, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    assert kv_fingerprint(same_kv) != now
