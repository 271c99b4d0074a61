"""Worker lifecycle against a real vLLM CPU engine: registration discovers the served
model, draining under load loses no in-flight request, and the admin API brings the
worker back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from testbed.processes import ManagedProcess
from tests.support.fault_harness import Tally, launch_router, run_requests

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(600)]


def test_drain_real_vllm_under_load(vllm_colocated: ManagedProcess, tiny_llama: Path):
    model = str(tiny_llama)
    router = launch_router("--worker-urls", vllm_colocated.url, "--worker-startup-check-interval", "0.5", request_timeout=120)
    try:
        router.wait_all_ready()
        (w,) = router.workers()
        assert w["models"] == [model] and w["state"] == "ready"  # discovered from vLLM's /v1/models

        # Steady load: as each stream ends the next starts, so streams are in flight on the
        # engine whenever the drain lands (a tiny model streams a few hundred tokens a
        # second, so a handful of fixed streams could all end before the drain is served).
        # ignore_eos: a random-weight model may stop at once; these streams must last.
        payloads = [
            {"model": model, "prompt": f"story {i}", "max_tokens": 500, "ignore_eos": True, "stream": True, "temperature": 0}
            for i in range(48)
        ]

        async def scenario() -> tuple[int, Tally]:
            load = asyncio.ensure_future(run_requests(router, payloads, concurrency=4))
            # Bounded: until the streams are in flight on the engine. The admin API is read in
            # a thread so the event loop keeps reading the streams meanwhile.
            for _ in range(600):
                if load.done():
                    raise AssertionError(f"the streams ended before two ran concurrently: {load.result().outcomes}")
                (seen,) = await asyncio.to_thread(router.workers)
                if seen["in_flight_requests"] >= 2:
                    break
                await asyncio.sleep(0.02)
            else:
                load.cancel()
                raise AssertionError(f"the streams never ran concurrently on the engine: {seen}")
            r = await asyncio.to_thread(router.admin, "POST", f"/workers/{w['id']}/drain")
            assert r.status_code == 202 and r.json()["in_flight_requests"] >= 1, r.text
            return r.json()["in_flight_requests"], await load

        in_flight_at_drain, tally = asyncio.run(scenario())
        tally.assert_no_defects()
        counts = tally.counts()
        # Every stream in flight when the drain began finished; later requests found no
        # worker and got a clear 503.
        assert counts["ok"] >= in_flight_at_drain and counts["ok"] + counts["error"] == len(payloads), tally.outcomes
        assert all(o.status == 503 for o in tally.outcomes if o.kind == "error"), tally.outcomes
        router.wait_for("drained worker removed", lambda: router.workers() == [])

        resp = httpx.post(f"{router.url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2}, timeout=30)
        assert resp.status_code == 503 and resp.json()["error"]["message"], resp.text  # a clear error, no hang

        r = router.admin("POST", "/workers", json={"url": vllm_colocated.url, "wait": True})
        assert r.status_code == 201 and r.json()["state"] == "ready", r.text
        resp = httpx.post(f"{router.url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2}, timeout=60)
        assert resp.status_code == 200 and resp.json()["choices"], resp.text
        router.wait_idle()
    finally:
        router.stop()
