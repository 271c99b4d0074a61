"""Per-worker circuit breaker: a pure state machine driven by outcomes and a clock it is given.

closed --(failure_threshold consecutive failures)--> open
open --(timeout elapsed)--> half_open (probe requests allowed)
half_open --(success_threshold successes)--> closed; any failure --> open again.

With `window_secs` set, only failures inside the last `window_secs` count toward the
threshold: a worker that fails once an hour never trips a breaker meant for bursts. The
window keeps the breaker pure: it only compares the timestamps it was given.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.config import CircuitBreakerConfig


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int = 10
    success_threshold: int = 3
    timeout_secs: float = 60.0
    enabled: bool = True
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    opened_at: float = 0.0
    # None: every consecutive failure counts, however old.
    window_secs: float | None = None
    # Times of the consecutive failures still inside the window (only kept with a window).
    _failure_times: deque[float] = field(default_factory=deque, repr=False)

    @classmethod
    def from_config(cls, config: CircuitBreakerConfig) -> CircuitBreaker:
        """A fresh breaker with the router's `--cb-*` settings (one per worker)."""
        return cls(
            failure_threshold=config.failure_threshold,
            success_threshold=config.success_threshold,
            timeout_secs=config.timeout_duration_secs,
            enabled=config.enabled,
            window_secs=config.window_duration_secs if config.window_duration_secs > 0 else None,
        )

    def allows(self, now: float) -> bool:
        """May a new request be sent at time `now`? Moves open -> half_open after the timeout."""
        if not self.enabled or self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.timeout_secs:
            self.state = BreakerState.HALF_OPEN
            self.consecutive_successes = 0
        return self.state is BreakerState.HALF_OPEN

    def retry_after(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when it already would)."""
        if not self.enabled or self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.timeout_secs - now)

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._failure_times.clear()
        if self.state is BreakerState.HALF_OPEN:
            self.consecutive_successes += 1
            if self.consecutive_successes >= self.success_threshold:
                self.state = BreakerState.CLOSED
                self.consecutive_successes = 0

    def record_failure(self, now: float) -> None:
        self.consecutive_successes = 0
        if self.window_secs is None:
            self.consecutive_failures += 1
        else:
            self._failure_times.append(now)
            while self._failure_times and self._failure_times[0] <= now - self.window_secs:
                self._failure_times.popleft()
            self.consecutive_failures = len(self._failure_times)
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
