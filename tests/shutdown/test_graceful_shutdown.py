"""Graceful shutdown of a real router process in front of a real `engine_sim` fleet.

The sim's decode steps are slowed (`--step-overhead-ms`) so streams are still running when
the router gets SIGTERM. What must hold (issue 14): readiness answers 503 at once, a new
request gets 503 `shutting_down`, every stream already running completes with `[DONE]`,
the metrics listener answers throughout, and the process exits 0; with a grace period the
streams outlive, each stream ends with an error event, the engine sees its request
aborted, and the exit is still 0; a second signal ends the process at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.sim_fleet import SimFleet, start_fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = "sim-model"
STEP_MS = 100  # one decode step of the sim: a stream of N tokens takes about N * 0.1 s
DEADLINE_SECS = 60.0  # bound on every wait for observable state


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[SimFleet]:
    f = start_fleet(tmp_path_factory.mktemp("shutdown"), "--regular", "1", "--step-overhead-ms", str(STEP_MS))
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def pd_fleet(tmp_path_factory) -> Iterator[SimFleet]:
    f = start_fleet(
        tmp_path_factory.mktemp("shutdown-pd"),
        "--prefill", "1", "--decode", "1", "--protocol", "vllm", "--step-overhead-ms", str(STEP_MS),
    )  # fmt: skip
    try:
        yield f
    finally:
        f.stop()


def _pd_args(pd_fleet: SimFleet) -> list[str]:
    """A vLLM-protocol P/D router over `pd_fleet`, pairing every request (both legs run)."""
    ((prefill_url, _),) = pd_fleet.prefill_endpoints()
    return [
        "--pd-disaggregation", "--backend", "vllm", "--always-pair",
        "--prefill", prefill_url, "none", "--decode", *pd_fleet.urls("decode"),
    ]  # fmt: skip


@pytest.fixture(params=["colocated", "pd"])
def worker_args(request) -> list[str]:
    """The router flags naming the workers: a co-located worker, or a P/D pair."""
    if request.param == "pd":
        return _pd_args(request.getfixturevalue("pd_fleet"))
    return ["--worker-urls", *request.getfixturevalue("fleet").urls()]


def _payload(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": max_tokens, "stream": True}


@dataclass
class Stream:
    """One streaming request: its events so far and whether `[DONE]` came."""

    response: httpx.Response
    lines: AsyncIterator[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    async def next_event(self) -> None:
        """Read up to the next `data:` line (an event or `[DONE]`)."""
        async for line in self.lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
            else:
                self.events.append(json.loads(data))
            return
        raise AssertionError(f"stream closed without [DONE] after {len(self.events)} events")

    async def read_to_end(self) -> None:
        while not self.done:
            await self.next_event()


@asynccontextmanager
async def streams_in_flight(url: str, n: int, max_tokens: int) -> AsyncIterator[list[Stream]]:
    """`n` streaming requests, each past its first event (so in flight at the router)."""
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_SECS) as client:

        async def open_one() -> Stream:
            request = client.build_request("POST", "/v1/completions", json=_payload(max_tokens))
            response = await client.send(request, stream=True)
            assert response.status_code == 200, await response.aread()
            stream = Stream(response, response.aiter_lines())
            await stream.next_event()
            return stream

        streams = await asyncio.gather(*(open_one() for _ in range(n)))
        try:
            yield streams
        finally:
            for s in streams:
                await s.response.aclose()


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def _wait_status(url: str, status: int) -> httpx.Response:
    """Poll GET `url` until it answers `status` (bounded)."""
    deadline = time.monotonic() + DEADLINE_SECS
    while True:
        response = await _get(url)
        if response.status_code == status:
            return response
        assert time.monotonic() < deadline, f"{url} never answered {status}; last {response.status_code} {response.text}"
        await asyncio.sleep(0.05)


def _wait_exit(proc: ManagedProcess, within: float = DEADLINE_SECS) -> int:
    deadline = time.monotonic() + within
    while (code := proc.poll()) is None:
        assert time.monotonic() < deadline, f"router still running {within:.0f}s after SIGTERM:\n{proc.log_tail()}"
        time.sleep(0.05)
    return code


def _wait_for(what: str, predicate: Any) -> None:
    deadline = time.monotonic() + DEADLINE_SECS
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _assert_openai_error(body: dict[str, Any], code: str) -> None:
    assert body["error"]["code"] == code and body["error"]["type"] == "service_unavailable", body
    assert body["error"]["message"], body


def test_sigterm_under_streaming_load_lets_every_stream_finish_then_exits_0(worker_args: list[str]) -> None:
    metrics_port = free_port()
    router = start_router(*worker_args, "--prometheus-port", str(metrics_port))
    try:

        async def scenario() -> None:
            await _wait_status(router.url + "/readiness", 200)
            async with streams_in_flight(router.url, n=4, max_tokens=40) as streams:
                os.kill(router.pid, signal.SIGTERM)
                readiness = await _wait_status(router.url + "/readiness", 503)
                _assert_openai_error(readiness.json(), "shutting_down")
                assert not any(s.done for s in streams), "streams ended before the drain could be observed"
                async with httpx.AsyncClient(base_url=router.url, timeout=10) as late:
                    refused = await late.post("/v1/completions", json=_payload(4))
                assert refused.status_code == 503
                _assert_openai_error(refused.json(), "shutting_down")
                assert (await _get(f"http://127.0.0.1:{metrics_port}/metrics")).status_code == 200
                assert (await _get(router.url + "/liveness")).status_code == 200
                for s in streams:
                    await s.read_to_end()
            for s in streams:
                assert s.done and len(s.events) == 40, (len(s.events), s.events[-1:])
                assert all("choices" in e for e in s.events), s.events[-1]

        asyncio.run(scenario())
        assert _wait_exit(router) == 0, router.log_tail()
        assert "Traceback" not in router.log_text(), router.log_tail()
    finally:
        router.stop()


def test_a_stream_outliving_the_grace_period_ends_with_an_error_event_and_is_aborted_upstream(pd_fleet: SimFleet) -> None:
    router = start_router(*_pd_args(pd_fleet), "--shutdown-grace-period-secs", "1")
    cancelled_before = pd_fleet.stats()["totals"]["cancelled"]
    try:

        async def scenario() -> Stream:
            await _wait_status(router.url + "/readiness", 200)
            async with streams_in_flight(router.url, n=1, max_tokens=2000) as (stream,):
                os.kill(router.pid, signal.SIGTERM)
                await stream.read_to_end()
                return stream

        stream = asyncio.run(scenario())
        assert stream.done and stream.events, stream.events
        *tokens, last = stream.events
        assert tokens and all("choices" in e for e in tokens)
        _assert_openai_error(last, "shutting_down")
        assert _wait_exit(router) == 0, router.log_tail()
        assert "Traceback" not in router.log_text(), router.log_tail()
        _wait_for(
            "the engine saw its request aborted",
            lambda: pd_fleet.stats()["totals"]["cancelled"] > cancelled_before and pd_fleet.stats()["totals"]["in_flight"] == 0,
        )
    finally:
        router.stop()


def test_a_second_signal_exits_at_once(fleet: SimFleet) -> None:
    router = start_router("--worker-urls", *fleet.urls())
    try:

        async def scenario() -> None:
            await _wait_status(router.url + "/readiness", 200)
            async with streams_in_flight(router.url, n=1, max_tokens=2000):
                os.kill(router.pid, signal.SIGTERM)
                await _wait_status(router.url + "/readiness", 503)
                os.kill(router.pid, signal.SIGINT)
                # Far inside the default 180 s grace period: the stream did not hold it up.
                assert _wait_exit(router, within=30) == -signal.SIGINT, router.log_tail()

        asyncio.run(scenario())
    finally:
        router.stop()
