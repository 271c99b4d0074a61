"""Health checks: the pure threshold tracker, the probe, and one checker round over real HTTP."""

import pytest

from router.config import HealthCheckConfig
from router.workers.health import HealthChecker, HealthTracker, HealthVerdict, probe
from router.workers.worker import Worker


def test_tracker_needs_consecutive_failures_to_turn_unhealthy():
    t = HealthTracker(failure_threshold=3, success_threshold=2)
    assert t.observe(False) is None
    assert t.observe(False) is None
    assert t.observe(True) is None  # a good probe resets the failure streak
    assert t.observe(False) is None and t.observe(False) is None
    assert t.observe(False) is HealthVerdict.BECAME_UNHEALTHY
    assert not t.healthy
    assert t.observe(False) is None  # already unhealthy: no second verdict


def test_tracker_needs_consecutive_successes_to_recover():
    t = HealthTracker(failure_threshold=1, success_threshold=2, healthy=False)
    assert t.observe(True) is None
    assert t.observe(False) is None
    assert t.observe(True) is None
    assert t.observe(True) is HealthVerdict.BECAME_HEALTHY
    assert t.healthy and t.observe(True) is None


def test_tracker_rejects_zero_thresholds():
    with pytest.raises(ValueError, match="threshold"):
        HealthTracker(failure_threshold=0)


async def test_probe_reports_status_and_timeout(endpoint, session):
    assert await probe(session, endpoint.url, "/health", 2) == ""
    endpoint.health_status = 503
    assert "503" in await probe(session, endpoint.url, "health", 2)
    endpoint.hang = True
    assert "timed out" in await probe(session, endpoint.url, "/health", 0.2)


async def test_probe_reports_refused_connection(session):
    from testbed.ports import free_port

    reason = await probe(session, f"http://127.0.0.1:{free_port()}", "/health", 2)
    assert "failed" in reason


async def test_checker_round_applies_thresholds(endpoint, session):
    worker = Worker(url=endpoint.url)
    verdicts = []
    checker = HealthChecker(
        HealthCheckConfig(failure_threshold=2, success_threshold=1, timeout_secs=2, interval_secs=3600),
        session,
        lambda: [worker],
        lambda w, v, reason: verdicts.append((w, v, reason)),
    )
    endpoint.health_status = 500
    await checker.check_once()
    assert verdicts == []
    await checker.check_once()
    assert [(w, v) for w, v, _ in verdicts] == [(worker, HealthVerdict.BECAME_UNHEALTHY)]
    assert "500" in verdicts[0][2]
    endpoint.health_status = 200
    await checker.check_once()
    assert verdicts[-1][1] is HealthVerdict.BECAME_HEALTHY
    assert endpoint.health_hits == 3



async def test_a_worker_removed_while_its_probe_is_in_flight_gets_no_verdict(endpoint, session):
    worker = Worker(url=endpoint.url)
    rounds = iter([[worker]])  # listed when the round starts, gone (removed) when it ends

    def workers_to_check():
        return next(rounds, [])

    verdicts = []
    config = HealthCheckConfig(failure_threshold=1, success_threshold=1, timeout_secs=2, interval_secs=3600)
    checker = HealthChecker(config, session, workers_to_check, lambda w, v, r: verdicts.append(v))
    endpoint.health_status = 500
    await checker.check_once()
    assert endpoint.health_hits == 1 and verdicts == []  # probed, but its outcome counts for nothing
