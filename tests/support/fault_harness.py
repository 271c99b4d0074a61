"""Fault-suite harness: a real router process with admin helpers, and a client that
classifies every request's ending. (The simulated fleet behind it is `testbed.sim_fleet`.)

Every request in the fault suite must end as one of:
- `ok`: a complete answer (JSON with choices, or an SSE stream ending in `[DONE]`);
- `error`: a clear error (an OpenAI error body with a 4xx/5xx status, or a stream whose
  last event before `[DONE]` is an OpenAI error object).
Anything else is a defect the tests fail on: `broken` (a 200 with a malformed body, a
stream cut without `[DONE]`) or `hung` (no ending within the client's timeout, which is
the router's request timeout plus a margin).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from testbed.processes import ManagedProcess
from testbed.router_process import start_router

MODEL = "sim-model"


@dataclass
class Router:
    """A running router process plus admin helpers that read GET /workers."""

    proc: ManagedProcess
    request_timeout: float
    admin_key: str | None = None

    @property
    def url(self) -> str:
        return self.proc.url

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    def workers(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/workers", headers=self._headers(), timeout=10)
        r.raise_for_status()
        return r.json()["workers"]

    def worker(self, url: str) -> dict[str, Any] | None:
        return next((w for w in self.workers() if w["url"] == url), None)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self._headers(), timeout=30, **kw)

    def wait_for(self, what: str, predicate: Callable[[], bool], attempts: int = 300, pause: float = 0.1) -> None:
        """Poll `predicate` a bounded number of times; fail with `what` if it never holds."""
        for _ in range(attempts):
            if predicate():
                return
            time.sleep(pause)
        raise AssertionError(f"never happened: {what}; workers: {self.workers()}")

    def wait_all_ready(self) -> None:
        self.wait_for("all workers ready", lambda: all(w["state"] == "ready" for w in self.workers()))

    def wait_idle(self) -> None:
        """In-flight counters of every listed worker are back to zero."""
        self.wait_for(
            "in-flight counters back to zero",
            lambda: all(w["in_flight_requests"] == 0 and w["in_flight_tokens"] == 0 for w in self.workers()),
        )

    def stop(self) -> None:
        self.proc.stop()


def launch_router(*args: str, request_timeout: float = 4.0, admin_key: str | None = None) -> Router:
    proc = start_router(*args, "--request-timeout-secs", str(request_timeout))
    return Router(proc, request_timeout, admin_key)


# -- the client ------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # ok | error | broken | hung
    status: int | None = None
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def assert_no_defects(self) -> None:
        bad = [o for o in self.outcomes if o.kind in ("broken", "hung")]
        assert not bad, f"defective endings {self.counts()}: {bad[:5]}"


def _is_openai_error(obj: Any) -> bool:
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and bool(err["message"])


def body(stream: bool = False, max_tokens: int = 8, prompt: str = "the quick brown fox") -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}


async def call(
    client: httpx.AsyncClient,
    payload: dict[str, Any],
    *,
    route: str = "/v1/completions",
    client_timeout: float,
    disconnect_after_chunks: int | None = None,
) -> Outcome:
    """Send one request and classify how it ended (see the module docstring)."""
    try:
        return await asyncio.wait_for(_call(client, payload, route, disconnect_after_chunks), client_timeout)
    except TimeoutError:
        return Outcome("hung", detail=f"no ending within {client_timeout}s")


async def _call(client: httpx.AsyncClient, payload: dict[str, Any], route: str, disconnect_after: int | None) -> Outcome:
    try:
        async with client.stream("POST", route, json=payload) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    return Outcome("broken", resp.status_code, f"non-JSON error body {raw[:200]!r}")
                if resp.status_code >= 400 and _is_openai_error(parsed):
                    return Outcome("error", resp.status_code, parsed["error"]["message"])
                return Outcome("broken", resp.status_code, f"unexpected body {raw[:200]!r}")
            if not payload.get("stream"):
                raw = await resp.aread()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    return Outcome("broken", 200, f"200 with non-JSON body {raw[:200]!r}")
                if isinstance(parsed, dict) and parsed.get("choices"):
                    return Outcome("ok", 200)
                return Outcome("broken", 200, f"200 without choices: {raw[:200]!r}")
            return await _read_stream(resp, disconnect_after)
    except httpx.HTTPError as exc:
        return Outcome("broken", None, f"transport error: {exc!r}")


async def _read_stream(resp: httpx.Response, disconnect_after: int | None) -> Outcome:
    events: list[Any] = []
    done = False
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            events.append(json.loads(data))
        except ValueError:
            return Outcome("broken", 200, f"non-JSON SSE event {data[:200]!r}")
        if disconnect_after is not None and len(events) >= disconnect_after:
            return Outcome("ok", 200, "client disconnected on purpose")
    if not done:
        return Outcome("broken", 200, f"stream ended without [DONE] after {len(events)} events")
    if events and _is_openai_error(events[-1]):
        return Outcome("error", 200, events[-1]["error"]["message"])
    if not events or not all(isinstance(e, dict) and "choices" in e for e in events):
        return Outcome("broken", 200, f"stream events are not completion chunks: {events[:2]}")
    return Outcome("ok", 200)


async def run_requests(
    router: Router,
    payloads: list[dict[str, Any]],
    *,
    concurrency: int = 4,
    route: str = "/v1/completions",
    disconnect_after_chunks: int | None = None,
) -> Tally:
    """Send `payloads` with bounded concurrency; every ending is classified and counted."""
    tally = Tally()
    sem = asyncio.Semaphore(concurrency)
    client_timeout = router.request_timeout + 15  # retries + backoff fit well inside
    async with httpx.AsyncClient(base_url=router.url, timeout=None) as client:

        async def one(p: dict[str, Any]) -> None:
            async with sem:
                outcome = await call(
                    client, p, route=route, client_timeout=client_timeout, disconnect_after_chunks=disconnect_after_chunks
                )
                tally.outcomes.append(outcome)

        await asyncio.gather(*(one(p) for p in payloads))
    return tally
