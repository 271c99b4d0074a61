"""The router's spans, read from an in-memory exporter, in front of a real simulated P/D pair.

The in-process router gets an SDK `TracerProvider` (the seam `--otlp-traces-endpoint`
uses too); the engine_sim vLLM-protocol prefill/decode workers answer over real loopback
HTTP and record the `traceparent` each leg carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.fleet import Fleet
from router.config import DisaggConfig
from tests.engine_sim.conftest import running_fleet
from tests.support.inprocess_router import RunningRouter, make_config, pd_workers, running_router

CLIENT_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN_ID = 0x00F067AA0BA902B7
CLIENT_HEADERS = {
    "traceparent": f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01",
    "tracestate": "client=t61rcWkgMzE",
}
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "tell me about tracing " * 8}], "max_tokens": 6}
REQUEST_SPAN = "POST /v1/chat/completions"


class EndedSpans(SpanProcessor):
    """Wakes the test whenever a span ends (the router's spans end on the test's loop)."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.changed.set()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def ended() -> EndedSpans:
    return EndedSpans()


@pytest.fixture
def provider(exporter: InMemorySpanExporter, ended: EndedSpans) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(ended)  # after the exporter: woken once the span is in it
    return provider


def pd_router(fleet: Fleet, provider: TracerProvider, **overrides: Any) -> Any:
    """An in-process router tracing into `provider`, pairing every request over `fleet`."""
    p, d = fleet.by_role("prefill"), fleet.by_role("decode")
    config = make_config(
        workers=pd_workers([(w.url, None) for w in p], [w.url for w in d]),
        backend="vllm",
        disagg=DisaggConfig(always_pair=True),
        **overrides,
    )
    return running_router(config, tracer_provider=provider)


async def request_spans(exporter: InMemorySpanExporter, ended: EndedSpans) -> list[ReadableSpan]:
    """The finished spans once the request span is among them (it ends just after the
    last byte went out, so right after the answer it may still be open); 10 s at most."""
    spans: list[ReadableSpan] = []
    try:
        async with asyncio.timeout(10):
            while not has_request_span(spans := list(exporter.get_finished_spans())):
                ended.changed.clear()
                await ended.changed.wait()
    except TimeoutError:
        raise AssertionError(f"the request span never ended; spans: {[s.name for s in spans]}") from None
    return spans


async def every_worker_ready(router: RunningRouter) -> None:
    """Wait (10 s at most) until every configured worker takes requests; readiness needs only one per role."""
    clock = router.service.manager.clock
    for _ in range(1000):
        if all(w.accepts_new_requests(clock()) for w in router.workers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"workers never all ready: {router.workers}")


def has_request_span(spans: list[ReadableSpan]) -> bool:
    return any(s.name == REQUEST_SPAN for s in spans)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def traceparent_of(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"


@pytest.fixture
async def pair() -> AsyncIterator[Fleet]:
    async with running_fleet(WorkerSpec(role="prefill"), WorkerSpec(role="decode")) as fleet:
        yield fleet


async def test_a_pd_request_is_one_trace_under_the_clients_span(
    pair: Fleet, provider: TracerProvider, exporter: InMemorySpanExporter, ended: EndedSpans
) -> None:
    p, d = pair.by_role("prefill")[0], pair.by_role("decode")[0]
    async with pd_router(pair, provider) as router:
        resp = await router.post("/v1/chat/completions", CHAT, headers={**CLIENT_HEADERS, "x-request-id": "trace-1"})
        assert resp.status == 200, await resp.text()
        await resp.read()
        spans = await request_spans(exporter, ended)

    request = one(spans, REQUEST_SPAN)
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.is_remote
    assert (request.parent.trace_id, request.parent.span_id) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)
    assert request.context is not None and request.context.trace_state.get("client") == "t61rcWkgMzE"
    assert request.attributes is not None
    assert {k: request.attributes[k] for k in ("http.route", "gen_ai.request.model", "atom.stream", "atom.request_id")} == {
        "http.route": "/v1/chat/completions",
        "gen_ai.request.model": "sim-model",
        "atom.stream": False,
        "atom.request_id": "trace-1",
    }
    assert request.attributes["http.response.status_code"] == 200
    assert request.status.status_code is StatusCode.UNSET

    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == request.context.span_id}
    assert sorted(children) == ["decode", "place", "prefill", "prepare", "render"]
    assert all(s.context.trace_id == CLIENT_TRACE_ID for s in spans)
    assert len(spans) == 6  # nothing else: no stray roots

    place = children["place"].attributes
    assert place is not None
    assert place["atom.plan.kind"] == "pair"
    assert (place["atom.prefill.url"], place["atom.decode.url"]) == (p.url, d.url)
    assert place["atom.disagg.decision"] == "pair" and place["atom.disagg.reason"] == "always_pair"
    assert place["atom.prefill.reason"] and place["atom.decode.reason"]

    for name, worker in (("prefill", p), ("decode", d)):
        leg = children[name]
        assert leg.kind is SpanKind.CLIENT
        assert leg.attributes is not None
        assert leg.attributes["url.full"] == worker.url + "/v1/chat/completions"
        assert leg.attributes["http.response.status_code"] == 200
        assert leg.attributes["atom.attempt"] == 0
        # The engine got a traceparent naming this leg's span.
        assert worker.snapshot()["last_traceparent"] == traceparent_of(leg)


async def test_a_streamed_request_span_ends_after_done(
    pair: Fleet, provider: TracerProvider, exporter: InMemorySpanExporter, ended: EndedSpans
) -> None:
    async with pd_router(pair, provider) as router:
        resp = await router.post("/v1/chat/completions", {**CHAT, "stream": True})
        assert resp.status == 200
        body = (await resp.read()).decode()
        assert body.rstrip().endswith("data: [DONE]")
        spans = await request_spans(exporter, ended)

    request, render = one(spans, REQUEST_SPAN), one(spans, "render")
    assert request.attributes is not None and request.attributes["atom.stream"] is True
    assert render.attributes is not None
    assert render.attributes["atom.stream.complete"] is True  # set once [DONE] was written
    assert render.attributes["atom.stream.output_events"] == body.count("data: ") - 1
    assert render.end_time is not None and request.end_time is not None
    assert render.parent is not None and render.parent.span_id == request.context.span_id
    assert request.end_time >= render.end_time


async def test_an_unknown_model_is_an_error_span(
    pair: Fleet, provider: TracerProvider, exporter: InMemorySpanExporter, ended: EndedSpans
) -> None:
    async with pd_router(pair, provider) as router:
        resp = await router.post("/v1/chat/completions", {**CHAT, "model": "no-such-model"})
        assert resp.status == 404
        spans = await request_spans(exporter, ended)

    request = one(spans, REQUEST_SPAN)
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description and "no-such-model" in request.status.description
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 404
    assert one(spans, "place").status.status_code is StatusCode.ERROR
    assert not [s for s in spans if s.name in ("prefill", "decode")]  # nothing went upstream
    assert request.parent is None  # no client context: the request span is the root


async def test_a_retry_is_new_leg_spans_with_its_attempt_number(
    provider: TracerProvider, exporter: InMemorySpanExporter, ended: EndedSpans
) -> None:
    async with running_fleet(WorkerSpec(role="prefill"), WorkerSpec(role="prefill"), WorkerSpec(role="decode")) as fleet:
        broken = fleet.by_role("prefill")[0]
        await broken.set_faults({"error_rate": 1.0})
        async with pd_router(fleet, provider) as router:
            await every_worker_ready(router)  # so round robin tries the broken (first) prefill first
            resp = await router.post("/v1/chat/completions", CHAT)
            assert resp.status == 200, await resp.text()
            spans = await request_spans(exporter, ended)

    request = one(spans, REQUEST_SPAN)
    legs = sorted(
        (s for s in spans if s.name in ("prefill", "decode")),
        key=lambda s: (s.attributes["atom.attempt"] if s.attributes else 0, s.name),
    )
    attempts = [(s.name, s.attributes["atom.attempt"] if s.attributes else None) for s in legs]
    assert attempts == [("prefill", 0), ("decode", 1), ("prefill", 1)]
    assert all(s.parent is not None and s.parent.span_id == request.context.span_id for s in legs)
    failed = legs[0]
    assert failed.attributes is not None and str(failed.attributes["url.full"]).startswith(broken.url)
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in request.events] == ["retry"]
    assert request.events[0].attributes is not None and request.events[0].attributes["atom.attempt"] == 1


async def test_a_client_hang_up_ends_the_span_with_its_status(
    provider: TracerProvider, exporter: InMemorySpanExporter, ended: EndedSpans
) -> None:
    slow = EngineConfig(time_scale=1.0, kv_wait_timeout_s=5.0)
    async with running_fleet(WorkerSpec(role="prefill"), WorkerSpec(role="decode"), cfg=slow) as fleet:
        async with pd_router(fleet, provider) as router:
            resp = await router.post("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 2000})
            assert resp.status == 200
            await resp.content.readany()  # the stream started
            resp.close()  # the client hangs up mid-stream
            spans = await request_spans(exporter, ended)

    request = one(spans, REQUEST_SPAN)
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 499
    assert request.status.status_code is StatusCode.ERROR
    assert "client disconnected" in [e.name for e in request.events]
    assert one(spans, "render").status.status_code is StatusCode.ERROR


async def test_tracing_off_adds_no_traceparent(pair: Fleet) -> None:
    """Without a provider or endpoint nothing is traced, and the client's traceparent is
    not forwarded either (the router is not part of the trace, so it does not claim to be)."""
    p, d = pair.by_role("prefill")[0], pair.by_role("decode")[0]
    config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm", disagg=DisaggConfig(always_pair=True))
    async with running_router(config) as router:
        resp = await router.post("/v1/chat/completions", CHAT, headers=CLIENT_HEADERS)
        assert resp.status == 200
        assert router.service.tracer.enabled is False
    assert p.snapshot()["last_traceparent"] is None and d.snapshot()["last_traceparent"] is None
