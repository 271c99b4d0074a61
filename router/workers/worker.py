"""The router's view of one engine worker.

A `Worker` is plain data plus load counters: policies and the placement core read it
without I/O, so they can be unit-tested by building workers directly.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from router.workers.circuit_breaker import CircuitBreaker
from router.workers.engine_load import EngineLoad


class Role(enum.StrEnum):
    """What a worker does in a plan: serve whole requests, or one P/D leg."""

    REGULAR = "regular"
    PREFILL = "prefill"
    DECODE = "decode"


class WorkerState(enum.StrEnum):
    """Lifecycle: pending -> ready <-> not_ready; draining -> removed; failed."""

    PENDING = "pending"
    READY = "ready"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    FAILED = "failed"


_ids = itertools.count(1)


@dataclass(eq=False)
class Worker:
    """One engine endpoint. Identity is the object (eq=False), so workers hash cheaply."""

    url: str
    role: Role = Role.REGULAR
    # Models this worker serves; empty means "not discovered yet", which matches any model.
    models: frozenset[str] = frozenset()
    bootstrap_port: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Where the engine publishes its KV events (ZMQ), if the router should listen.
    kv_events_endpoint: str | None = None
    worker_id: str = ""
    state: WorkerState = WorkerState.READY
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    # Engine-specific facts found at registration (ATOM /kv_transfer_info, mooncake engine id ...).
    engine_info: dict[str, Any] = field(default_factory=dict)
    in_flight_requests: int = 0
    in_flight_tokens: int = 0
    # Why the worker is failed / not ready, for operators (GET /workers shows it).
    last_error: str = ""
    # Set while a drain waits for the last in-flight request; `LoadGuard.release` sets the
    # event when `in_flight_requests` reaches 0, so the drain needs no polling.
    idle: asyncio.Event | None = field(default=None, repr=False)
    # The engine's own numbers from the load monitor's last fresh scrape (None: no fresh
    # sample), and `in_flight_requests` at that moment, so load estimates can add what
    # this router sent (or saw finish) since (`router.policies.load`).
    engine_load: EngineLoad | None = None
    in_flight_at_sample: int = 0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.worker_id:
            self.worker_id = f"w{next(_ids)}"

    def serves(self, model: str | None) -> bool:
        """True if a request for `model` may go here (no model or undiscovered models match)."""
        return model is None or not self.models or model in self.models

    def accepts_new_requests(self, now: float) -> bool:
        """Ready and not blocked by an open circuit breaker at time `now`."""
        return self.state is WorkerState.READY and self.breaker.allows(now)

    @property
    def host(self) -> str:
        """Host part of the URL, as engines expect it in bootstrap fields."""
        rest = self.url.split("://", 1)[-1].split("/", 1)[0]
        if rest.startswith("["):
            return rest[1 : rest.index("]")]
        return rest.rsplit(":", 1)[0] if ":" in rest else rest

    def __repr__(self) -> str:
        return f"Worker({self.worker_id}, {self.url}, {self.role.value}, {self.state.value})"
