"""Graceful shutdown state: the inference requests in flight, and whether the router drains.

Why one object: the signal handler (router.server), readiness (router.app) and the
inference path (router.inference) need the same two facts, and the request path must pay
no more than a counter for them. The sequence, driven by `router.server`:

1. `begin()` at the first SIGTERM/SIGINT: /readiness answers 503 `shutting_down` at once
   and `enter()` refuses new inference requests with the same error. The listener stays
   open meanwhile, so clients (and a load balancer still sending) get that answer rather
   than a refused connection.
2. `wait_idle(grace)` returns once the last in-flight request has left, or False when
   the grace period is over first.
3. Then `expire()`, and the server cancels what is left; `InferencePath.serve` ends each
   such request with `ShuttingDown` (an SSE error event on a started stream), and the
   cancellation aborts its upstream legs as a client hang-up does.
"""

from __future__ import annotations

import asyncio

from router.errors import ShuttingDown


class Drain:
    """In-flight inference requests of one router, and its shutdown phase."""

    __slots__ = ("in_flight", "draining", "expired", "_idle")

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False  # shutting down: no new requests, readiness 503
        self.expired = False  # the grace period is over: the requests left are being cancelled
        self._idle: asyncio.Event | None = None

    def begin(self) -> None:
        """Start draining. Safe in a signal handler: it only sets a flag."""
        self.draining = True

    def expire(self) -> None:
        self.expired = True

    def enter(self) -> None:
        """Count a new inference request in; `ShuttingDown` once draining."""
        if self.draining:
            raise ShuttingDown("router is shutting down and takes no new requests; send them to another instance")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self._idle is not None and not self.in_flight:
            self._idle.set()

    async def wait_idle(self, within_secs: float) -> bool:
        """Wait until no inference request is in flight; False if `within_secs` seconds pass first."""
        if not self.in_flight:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), within_secs)
        except TimeoutError:
            return False
        return True
