"""Per-worker circuit breaker: a pure state machine driven by outcomes and a clock it is given.

closed --(failure_threshold consecutive failures)--> open
open --(timeout elapsed)--> half_open (probe requests allowed)
half_open --(success_threshold successes)--> closed; any failure --> open again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(str, enum.Enum):
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

    def allows(self, now: float) -> bool:
        """May a new request be sent at time `now`? Moves open -> half_open after the timeout."""
        if not self.enabled or self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.timeout_secs:
            self.state = BreakerState.HALF_OPEN
            self.consecutive_successes = 0
        return self.state is BreakerState.HALF_OPEN

    def record_success(self) -> None:
        self.consecutive_failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self.consecutive_successes += 1
            if self.consecutive_successes >= self.success_threshold:
                self.state = BreakerState.CLOSED
                self.consecutive_successes = 0

    def record_failure(self, now: float) -> None:
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
