"""Hold/receive bookkeeping with an explicit clock, and the handshake wire format."""

from __future__ import annotations

import msgspec
import pytest

from kv_connector.holds import HoldTable, ReceiveTracker
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
        first_block=1,
    )
    assert decode(encode(req)) == req
    res = PushResult("e/1", "t", ok=False, error="nope")
    assert decode(encode(res)) == res
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode(b"\x93garbage")
