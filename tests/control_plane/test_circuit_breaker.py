"""Circuit breaker: thresholds, half-open probing, and the failure window."""

from router.config import CircuitBreakerConfig
from router.workers.circuit_breaker import BreakerState, CircuitBreaker


def test_opens_after_threshold_and_recovers_through_half_open():
    b = CircuitBreaker(failure_threshold=3, success_threshold=2, timeout_secs=10)
    for t in (1, 2):
        b.record_failure(t)
    assert b.state is BreakerState.CLOSED and b.allows(2)
    b.record_failure(3)
    assert b.state is BreakerState.OPEN
    assert not b.allows(12.9)
    assert b.retry_after(5) == 8
    assert b.allows(13)  # timeout elapsed: half-open lets probes through
    assert b.state is BreakerState.HALF_OPEN
    b.record_success()
    assert b.state is BreakerState.HALF_OPEN
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.retry_after(20) == 0


def test_half_open_failure_reopens():
    b = CircuitBreaker(failure_threshold=1, success_threshold=1, timeout_secs=5)
    b.record_failure(0)
    assert b.allows(5)
    b.record_failure(6)
    assert b.state is BreakerState.OPEN and b.opened_at == 6 and not b.allows(10)


def test_success_resets_the_consecutive_count():
    b = CircuitBreaker(failure_threshold=2)
    b.record_failure(0)
    b.record_success()
    b.record_failure(1)
    assert b.state is BreakerState.CLOSED


def test_failures_older_than_the_window_do_not_count():
    b = CircuitBreaker(failure_threshold=3, window_secs=10)
    b.record_failure(0)
    b.record_failure(5)
    b.record_failure(11)  # the failure at 0 fell out of the window
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 2
    b.record_failure(12)
    assert b.state is BreakerState.OPEN


def test_without_window_old_failures_still_count():
    b = CircuitBreaker(failure_threshold=3, window_secs=None)
    for t in (0, 1000, 5000):
        b.record_failure(t)
    assert b.state is BreakerState.OPEN


def test_disabled_breaker_always_allows():
    b = CircuitBreaker(failure_threshold=1, enabled=False)
    b.record_failure(0)
    assert b.allows(0) and b.retry_after(0) == 0


def test_from_config():
    cfg = CircuitBreakerConfig(failure_threshold=4, success_threshold=2, timeout_duration_secs=7, window_duration_secs=30)
    b = CircuitBreaker.from_config(cfg)
    assert (b.failure_threshold, b.success_threshold, b.timeout_secs, b.window_secs, b.enabled) == (4, 2, 7, 30, True)
    assert CircuitBreaker.from_config(CircuitBreakerConfig(window_duration_secs=0)).window_secs is None
    assert not CircuitBreaker.from_config(CircuitBreakerConfig(enabled=False)).enabled
