"""Admission: token bucket (injected clock), concurrency limit, bounded queue, queue timeout."""

import asyncio

import pytest

from router.admission import AdmissionController, TokenBucket
from router.config import AdmissionConfig
from router.errors import QueueFull, QueueTimeout, RateLimited


def test_token_bucket_bursts_then_refills():
    b = TokenBucket(rate=2, capacity=3)
    assert [b.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.try_take(0.0) == pytest.approx(0.5)  # next token due in 1/rate
    assert b.try_take(0.25) == pytest.approx(0.25)
    assert b.try_take(0.5) == 0.0
    assert b.try_take(100.0) == 0.0
    assert b.tokens == pytest.approx(2.0)  # refill is capped at capacity


def test_token_bucket_ignores_clock_going_back():
    b = TokenBucket(rate=1, capacity=1)
    assert b.try_take(10.0) == 0.0
    assert b.try_take(5.0) == pytest.approx(1.0)
    assert b.try_take(11.0) == 0.0


def test_token_bucket_rejects_bad_settings():
    with pytest.raises(ValueError, match="rate-limit"):
        TokenBucket(rate=0, capacity=1)


async def test_rate_limit_rejects_with_retry_after():
    now = [0.0]
    adm = AdmissionController(AdmissionConfig(rate_limit_tokens_per_second=2), clock=lambda: now[0])
    for _ in range(2):
        async with adm.admit():
            pass
    with pytest.raises(RateLimited) as info:
        await adm.acquire()
    err = info.value
    assert (err.status, err.type, err.code) == (429, "rate_limit_exceeded", "rate_limited")
    assert err.headers == [("retry-after", "1")] and err.retry_after == pytest.approx(0.5)
    now[0] = 0.5
    (await adm.acquire()).release()
    assert adm.rejected["rate_limited"] == 1


async def test_unlimited_concurrency_never_queues():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=-1, queue_size=0))
    slots = [await adm.acquire() for _ in range(50)]
    assert adm.active == 0 and adm.queued == 0
    for s in slots:
        s.release()


async def test_queue_full_rejects_and_slots_pass_in_fifo_order():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=2, queue_size=2, queue_timeout_secs=30))
    held = [await adm.acquire(), await adm.acquire()]
    order = []

    async def waiter(name):
        async with adm.admit():
            order.append(name)

    tasks = [asyncio.create_task(waiter("a")), asyncio.create_task(waiter("b"))]
    await asyncio.sleep(0)
    assert (adm.active, adm.queued) == (2, 2)
    with pytest.raises(QueueFull) as info:
        await adm.acquire()
    assert (info.value.status, info.value.code) == (429, "queue_full")
    assert dict(info.value.headers) == {"retry-after": "1"}
    held[0].release()
    held[0].release()  # idempotent: must not free a second slot
    await asyncio.gather(*tasks)
    assert order == ["a", "b"]
    assert (adm.active, adm.queued) == (1, 0)
    held[1].release()
    assert adm.active == 0 and adm.rejected["queue_full"] == 1


async def test_queue_timeout_is_503():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=5, queue_timeout_secs=0.05))
    slot = await adm.acquire()
    with pytest.raises(QueueTimeout) as info:
        await adm.acquire()
    assert (info.value.status, info.value.code, info.value.type) == (
        503,
        "queue_timeout",
        "service_unavailable",
    )
    assert adm.queued == 0
    slot.release()
    assert adm.active == 0


async def test_zero_queue_rejects_at_once():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=0))
    slot = await adm.acquire()
    with pytest.raises(QueueFull):
        await adm.acquire()
    slot.release()


async def test_cancelled_waiter_leaves_queue_and_loses_no_slot():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=3, queue_timeout_secs=30))
    slot = await adm.acquire()
    gone = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    assert adm.queued == 1
    gone.cancel()  # client disconnected while queued
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert adm.queued == 0
    slot.release()
    assert adm.active == 0
    (await adm.acquire()).release()
    assert adm.active == 0


async def test_slot_handed_to_a_waiter_that_is_then_cancelled_is_passed_on():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=3, queue_timeout_secs=30))
    slot = await adm.acquire()
    first = asyncio.create_task(adm.acquire())
    second = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    slot.release()  # hands the slot to `first` ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    (await second).release()  # the slot reached the next waiter instead of leaking
    assert (adm.active, adm.queued) == (0, 0)


async def test_admit_releases_on_error():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=0))
    with pytest.raises(RuntimeError):
        async with adm.admit():
            raise RuntimeError("upstream broke")
    assert adm.active == 0


def test_negative_queue_size_is_refused():
    with pytest.raises(ValueError, match="queue-size"):
        AdmissionController(AdmissionConfig(queue_size=-1))
