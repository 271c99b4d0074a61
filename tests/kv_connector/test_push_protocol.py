"""Producer and consumer cores end to end: real side channel (ZMQ), real Mooncake TCP.

Each side owns a numpy "KV cache" of 2 layers x 8 pages; the consumer asks for a held
transfer and the producer pushes pages into the consumer's blocks. Failure paths:
another protocol version, stale engine identity, another model's fingerprint, a producer
that never holds the transfer (timeout), and holds that nobody claims (freed). The
test-only fault wrapper the real-engine tests use (tests/support/kv_faults.py) is
checked here against the same real pair.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

pytest.importorskip("mooncake.engine")

from kv_connector.consumer import ConsumerConfig, KVConsumer
from kv_connector.identity import PROTOCOL_VERSION
from kv_connector.layout import KVLayout, Region
from kv_connector.messages import Hold, Message, PushRequest, PushResult
from kv_connector.mooncake import MooncakeTransport
from kv_connector.producer import KVProducer, ProducerConfig
from kv_connector.side_channel import ReplyTo, SideChannel
from kv_connector.transport import TransferError, Transport
from testbed.ports import free_port
from tests.support.kv_faults import FaultInjectingTransport, KVFaults

LAYERS, BLOCKS, PAGE = 2, 8, 256


def _kv(fill: str) -> np.ndarray:
    if fill == "zeros":
        return np.zeros((LAYERS, BLOCKS, PAGE), dtype=np.uint8)
    return np.random.default_rng(7).integers(1, 256, (LAYERS, BLOCKS, PAGE), dtype=np.uint8)


def _layout(t: MooncakeTransport, kv: np.ndarray) -> KVLayout:
    mem = t.register_memory(kv.ctypes.data, kv.nbytes)
    return KVLayout(tuple(Region(0, i * BLOCKS * PAGE, PAGE, PAGE, BLOCKS) for i in range(LAYERS)), (mem,))


def _wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _wait_results(consumer: KVConsumer, owner: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Poll like the engine does each step; the deadline inside the consumer ends every wait."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, failed = consumer.take_results()
        if owner in done:
            return True, ""
        if owner in failed:
            return False, failed[owner]
        time.sleep(0.01)
    raise AssertionError("consumer never reported a result")


@pytest.fixture
def make_pair():
    """Build a producer/consumer pair; generous timeouts unless a test is about timeouts
    (the CI machine is shared, so a push can stall for seconds under load)."""
    parts = []

    def make(hold_ttl_s: float = 60.0, timeout_s: float = 30.0, regions_per_batch: int = 1, faults: KVFaults | None = None):
        src, dst = _kv("random"), _kv("zeros")
        real_pt, ct = MooncakeTransport(), MooncakeTransport()
        pt: Transport = real_pt if faults is None else FaultInjectingTransport(real_pt, faults)
        port = free_port()
        config = ProducerConfig("P1", "fp", hold_ttl_s=hold_ttl_s, regions_per_batch=regions_per_batch)
        producer = KVProducer(pt, _layout(real_pt, src), config, bind=("127.0.0.1", port))
        consumer = KVConsumer(ct, _layout(ct, dst), ConsumerConfig("D1", "fp", timeout_s=timeout_s, grace_s=0.5))
        parts.extend([producer, consumer, pt, ct])
        return producer, consumer, src, dst, f"tcp://127.0.0.1:{port}"

    yield make
    for part in parts:
        part.close()


@pytest.fixture
def pair(make_pair):
    return make_pair()


def _request(consumer, address, owner, transfer_id, dst_blocks, *, engine="P1", first_block=0):
    consumer.request(
        owner,
        transfer_id=transfer_id,
        producer_address=address,
        producer_engine_id=engine,
        dst_block_ids=dst_blocks,
        first_block=first_block,
    )


def test_push_lands_pages_in_the_named_blocks_and_frees_the_hold(pair):
    producer, consumer, src, dst, address = pair
    producer.hold("P1/a", "req-a", [1, 2, 6])
    _request(consumer, address, "dec-a", "P1/a", [5, 0], first_block=1)  # decode already had page 0
    assert _wait_results(consumer, "dec-a") == (True, "")
    for layer in range(LAYERS):
        assert np.array_equal(dst[layer, 5], src[layer, 2]) and np.array_equal(dst[layer, 0], src[layer, 6])
        assert not dst[layer, [1, 2, 3, 4, 6, 7]].any()  # nothing else touched
    _wait_until(lambda: "req-a" in producer.take_finished(), "the hold's release")
    assert producer.num_held() == 0


def test_request_before_hold_waits_for_it(pair):
    producer, consumer, src, dst, address = pair
    _request(consumer, address, "dec-b", "P1/b", [3])
    _wait_until(lambda: producer.num_parked() == 1, "the request to be parked on the producer")
    producer.hold("P1/b", "req-b", [4])
    assert _wait_results(consumer, "dec-b") == (True, "")
    assert np.array_equal(dst[:, 3], src[:, 4])


def test_stale_engine_and_foreign_fingerprint_are_refused(pair):
    producer, consumer, src, dst, address = pair
    producer.hold("P1/c", "req-c", [1])
    _request(consumer, address, "dec-c", "P1/c", [1], engine="P0-previous-run")
    ok, why = _wait_results(consumer, "dec-c")
    assert not ok and "stale transfer" in why
    other_transport = MooncakeTransport()
    other = KVConsumer(other_transport, consumer._layout, ConsumerConfig("D2", "another-model"))
    try:
        _request(other, address, "dec-c2", "P1/c", [1])
        ok, why = _wait_results(other, "dec-c2")
        assert not ok and "fingerprint mismatch" in why
    finally:
        other.close()
        other_transport.close()
    assert not dst.any()  # no byte of refused KV landed


def test_unknown_transfer_times_out_and_unclaimed_hold_is_freed(make_pair):
    producer, consumer, src, dst, address = make_pair(hold_ttl_s=2.0, timeout_s=2.0)
    producer.hold("P1/d", "req-d", [1])
    _request(consumer, address, "dec-x", "P1/never-held", [2])
    ok, why = _wait_results(consumer, "dec-x", timeout=60)
    assert not ok and ("unknown" in why or "timed out" in why)
    _wait_until(lambda: "req-d" in producer.take_finished(), "the unclaimed hold to expire")  # hold_ttl_s=2
    _request(consumer, address, "dec-d", "P1/d", [2])  # too late: refused, not loaded
    ok, why = _wait_results(consumer, "dec-d")
    assert not ok and not dst.any()


def test_dead_producer_fails_the_wait(pair):
    """A producer whose port refuses connections is gone: no need to wait for the deadline."""
    producer, consumer, src, dst, address = pair
    producer.close()
    _request(consumer, address, "dec-e", "P1/e", [1])
    ok, why = _wait_results(consumer, "dec-e")
    assert not ok and "is gone" in why


def test_silent_producer_becomes_a_timeout(make_pair):
    """A port that accepts but never answers (a hung producer) ends at the deadline."""
    import socket

    producer, consumer, src, dst, _ = make_pair(timeout_s=1.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        _request(consumer, f"tcp://127.0.0.1:{silent.getsockname()[1]}", "dec-f", "P1/f", [1])
        ok, why = _wait_results(consumer, "dec-f")
    assert not ok and "timed out" in why


def test_hold_message_from_the_engine_scheduler_is_honoured_only_for_this_engine(pair):
    producer, consumer, src, dst, address = pair
    scheduler = SideChannel(lambda to, msg: None)
    try:
        scheduler.send(ReplyTo(address=address), Hold("P0/x", "req-x", [1], engine_id="P0-previous-run"))
        scheduler.send(ReplyTo(address=address), Hold("P1/y", "req-y", [2], engine_id="P1"))
        _request(consumer, address, "dec-y", "P1/y", [6])
        assert _wait_results(consumer, "dec-y") == (True, "")
        assert np.array_equal(dst[:, 6], src[:, 2])
        assert producer.num_held() == 0  # the foreign hold was dropped, the other one pushed
    finally:
        scheduler.close()


def test_failed_write_batch_is_retried(pair, monkeypatch):
    """A batch that fails once (a TCP stall under load) is written again: the push still lands."""
    producer, consumer, src, dst, address = pair
    real_submit = producer._transport.submit_write  # the fixture pushes one batch per layer
    failures = []

    def flaky_submit(peer, ops):
        if not failures:
            failures.append(1)
            raise TransferError("injected failure")
        return real_submit(peer, ops)

    monkeypatch.setattr(producer._transport, "submit_write", flaky_submit)
    producer.hold("P1/r", "req-r", [3])
    _request(consumer, address, "dec-r", "P1/r", [7])
    assert _wait_results(consumer, "dec-r") == (True, "")
    assert failures and np.array_equal(dst[:, 7], src[:, 3])


def test_consumer_of_another_protocol_version_is_refused_with_a_clear_error(pair):
    """A request from a build that speaks another protocol version is refused before anything is written."""
    producer, consumer, src, dst, address = pair
    producer.hold("P1/v", "req-v", [1])
    answers: queue.SimpleQueue[Message] = queue.SimpleQueue()
    peer = SideChannel(lambda to, msg: answers.put(msg))
    try:
        for version in (PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1):
            peer.send(
                ReplyTo(address=address),
                PushRequest(
                    transfer_id="P1/v",
                    ticket=f"v{version}",
                    producer_engine_id="P1",
                    consumer_engine_id="D-other-build",
                    fingerprint="fp",
                    consumer_endpoint=consumer._endpoint,
                    consumer_layout=consumer._layout,
                    dst_block_ids=[1],
                    timeout_s=30.0,
                    protocol_version=version,
                ),
            )
            answer = answers.get(timeout=30)
            assert isinstance(answer, PushResult) and not answer.ok
            assert f"speaks version {version}, this engine {PROTOCOL_VERSION}" in answer.error
            assert "same atom-mesh release" in answer.error
    finally:
        peer.close()
    assert not dst.any()
    _request(consumer, address, "dec-v", "P1/v", [1])  # the hold is still there for a compatible consumer
    assert _wait_results(consumer, "dec-v") == (True, "")


def test_fault_wrapper_rotates_the_next_push_across_layers(make_pair, tmp_path):
    """The real-engine tamper tests rely on this: layer i+1's pages land in layer i, once."""
    faults = KVFaults(tmp_path)
    producer, consumer, src, dst, address = make_pair(regions_per_batch=0, faults=faults)
    faults.rotate_next_push()
    producer.hold("P1/t", "req-t", [2, 3])
    _request(consumer, address, "dec-t", "P1/t", [4, 5])
    assert _wait_results(consumer, "dec-t") == (True, "")
    assert not faults.rotation_pending()
    for layer in range(LAYERS):
        assert np.array_equal(dst[layer, 4:6], src[(layer + 1) % LAYERS, 2:4])
    producer.hold("P1/u", "req-u", [6])  # the flag was used up: the next push is honest
    _request(consumer, address, "dec-u", "P1/u", [7])
    assert _wait_results(consumer, "dec-u") == (True, "")
    assert np.array_equal(dst[:, 7], src[:, 6])


def test_fault_wrapper_stalls_pushes_until_released(make_pair, tmp_path):
    """The killed-producer test relies on this: a push is seen in flight and held there."""
    faults = KVFaults(tmp_path)
    producer, consumer, src, dst, address = make_pair(faults=faults)
    faults.stall_pushes()
    producer.hold("P1/s", "req-s", [1])
    _request(consumer, address, "dec-s", "P1/s", [2])
    faults.wait_stalled(timeout_s=30)
    assert consumer.num_waiting() == 1 and not dst.any()  # stalled before any byte moved
    faults.release_pushes()
    assert _wait_results(consumer, "dec-s") == (True, "")
    assert np.array_equal(dst[:, 2], src[:, 1])
