"""Admission control: a concurrency limit with a bounded FIFO queue, and a token-bucket rate limit.

Why: a router that accepts everything turns overload into unbounded memory and latency
for every client. Here each request either gets a slot, waits in a queue of at most
`queue_size` for at most `queue_timeout_secs`, or is refused at once with a status and a
Retry-After the client can act on:

- rate limit exceeded    -> 429 `rate_limited`  (Retry-After: when the next token is due)
- queue full             -> 429 `queue_full`
- waited past the timeout -> 503 `queue_timeout`

Wiring (router/app.py):
- At app start: `admission = AdmissionController(config.admission)`.
- Per inference request, around prepare..render (the whole time an upstream is busy,
  streaming included):

      async with admission.admit():  # or raises `router.errors.AdmissionRejected`
          ...  # the stream must be fully sent (or aborted) before the block ends

  A rejection is an `ApiError` like any other: the app renders its status, OpenAI body
  and Retry-After header.

  For a streaming response, enter with `slot = await admission.acquire()` before
  returning the StreamingResponse and call `slot.release()` (idempotent) in the stream's
  `finally`, so the slot is held until the last byte or the client's disconnect.
- Metrics: `prometheus_registry.register(AdmissionCollector(admission))` at app start.
- At shutdown: nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.config import AdmissionConfig
from router.errors import QueueFull, QueueTimeout, RateLimited

logger = logging.getLogger("atom_mesh.admission")


@dataclass
class TokenBucket:
    """Classic token bucket, pure: the caller passes `now`.

    Starts full, so a fresh router takes a burst of `capacity` requests at once.
    """

    rate: float
    capacity: float
    tokens: float = field(init=False)
    updated_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity < 1:
            raise ValueError("token bucket needs rate > 0 and capacity >= 1 (check --rate-limit-tokens-per-second)")
        self.tokens = self.capacity

    def try_take(self, now: float) -> float:
        """Take one token: return 0.0 if granted, else the seconds until one is available."""
        if self.updated_at is not None:
            self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated_at) * self.rate)
            now = max(now, self.updated_at)  # a clock that steps back refills nothing
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def bucket_capacity(rate: float) -> float:
    """The burst a rate limit of `rate` tokens/s allows: one second's worth (at least one
    token), which smooths client jitter without allowing floods. One rule for the local
    bucket and the shared one in Redis."""
    return max(1.0, rate)


class RateLimiter(Protocol):
    """Where the global rate limit's tokens come from: this process's own bucket, or one
    shared by every replica (`router.shared_state.redis_rate_limit`)."""

    async def try_take(self) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is due."""
        ...


class LocalRateLimiter:
    """The rate limit as this replica's own `TokenBucket` on the monotonic clock."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(rate, bucket_capacity(rate))
        self._clock = clock

    async def try_take(self) -> float:
        return self._bucket.try_take(self._clock())


class _Expired(Exception):
    """A queued request's wait ran out (internal; surfaces as `QueueTimeout`)."""


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class Slot:
    """One admitted request's hold on a concurrency slot; `release()` is idempotent."""

    __slots__ = ("_controller", "_held")

    def __init__(self, controller: AdmissionController | None) -> None:
        self._controller = controller
        self._held = controller is not None

    def release(self) -> None:
        if self._held:
            self._held = False
            assert self._controller is not None
            self._controller._release()


class AdmissionController:
    """Admits requests under `AdmissionConfig`; counters are exposed for metrics."""

    def __init__(
        self,
        config: AdmissionConfig,
        clock: Callable[[], float] = time.monotonic,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """`rate_limiter` replaces the local bucket `--rate-limit-tokens-per-second` would
        get (the app passes the Redis-shared one with `--redis-url`)."""
        if config.queue_size < 0:
            raise ValueError("--queue-size must be >= 0")
        self.config = config
        rate = config.rate_limit_tokens_per_second
        if rate_limiter is None and rate:
            rate_limiter = LocalRateLimiter(rate, clock)
        self._rate_limiter = rate_limiter
        self._limit = config.max_concurrent_requests
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.rejected: dict[str, int] = {"rate_limited": 0, "queue_full": 0, "queue_timeout": 0}

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> Slot:
        """Wait for admission; raise an `AdmissionRejected` subclass if refused."""
        if self._rate_limiter is not None:
            wait = await self._rate_limiter.try_take()
            if wait > 0:
                self._reject("rate_limited")
                raise RateLimited("rate limit exceeded; retry after the Retry-After delay", retry_after=wait)
        if self._limit <= 0:
            return Slot(None)
        if self.active < self._limit and not self.queued:
            self.active += 1
            return Slot(self)
        if self.queued >= self.config.queue_size:
            self._reject("queue_full")
            raise QueueFull(
                f"router is at its limit of {self._limit} concurrent requests and its queue "
                f"({self.config.queue_size}) is full; retry later",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(self.config.queue_timeout_secs, _expire, fut)
        try:
            await fut
        except _Expired:
            self._discard(fut)
            self._reject("queue_timeout")
            raise QueueTimeout(
                f"request waited {self.config.queue_timeout_secs:g}s in the admission queue; retry later",
                retry_after=self.config.queue_timeout_secs,
            ) from None
        except asyncio.CancelledError:
            # Cancelled (client gone) after the slot was handed over: pass it on.
            if fut.done() and not fut.cancelled():
                self._release()
            else:
                self._discard(fut)
            raise
        finally:
            timer.cancel()
        return Slot(self)  # the releasing request handed its slot over; `active` is unchanged

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Slot]:
        """`async with admission.admit():` — holds a slot for the block."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            slot.release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot straight to the oldest waiter
                return
        self.active -= 1

    def _discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        logger.info("request rejected", extra={"reason": reason, "active": self.active, "queued": self.queued})


class AdmissionCollector:
    """Prometheus collector: active requests, queue depth, rejections by reason.

    Wiring: `prometheus_registry.register(AdmissionCollector(admission))` once at app start.
    """

    def __init__(self, controller: AdmissionController) -> None:
        self._controller = controller

    def collect(self) -> Iterator[Metric]:
        c = self._controller
        yield GaugeMetricFamily("atom_mesh_admission_active_requests", "Requests holding an admission slot.", value=c.active)
        yield GaugeMetricFamily("atom_mesh_admission_queue_depth", "Requests waiting for an admission slot.", value=c.queued)
        rejected = CounterMetricFamily(
            "atom_mesh_admission_rejections", "Requests refused by admission control.", labels=["reason"]
        )
        for reason, count in sorted(c.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
