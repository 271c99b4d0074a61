"""Real OTLP/HTTP export: a router process traces a P/D request to a loopback collector."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.router_process import start_router
from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.otlp_receiver import ReceivedSpan, otlp_receiver

SERVER, CLIENT = 2, 3  # opentelemetry.proto SpanKind numbers
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    f = start_fleet(
        tmp_path_factory.mktemp("otlp"), "--prefill", "1", "--decode", "1", "--protocol", "vllm", "--time-scale", "0.1"
    )
    try:
        yield f
    finally:
        f.stop()


def chat(url: str, headers: dict[str, str]) -> dict:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "export me"}], "max_tokens": 4}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def names(spans: list[ReceivedSpan]) -> set[str]:
    return {s.name for s in spans}


def test_spans_reach_an_otlp_http_collector(fleet: SimFleet, tmp_path: Path) -> None:
    (prefill, _), decode = fleet.prefill_endpoints()[0], fleet.urls("decode")[0]
    with otlp_receiver() as receiver:
        router = start_router(
            "--pd-disaggregation",
            "--backend",
            "vllm",
            "--always-pair",
            "--prefill",
            prefill,
            "--decode",
            decode,
            "--otlp-traces-endpoint",
            receiver.url,
            # Export within 100 ms instead of the SDK's 5 s batch delay (the SDK's own setting).
            env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        )
        try:
            router.wait_http_ready("/readiness", timeout=30)  # both workers registered
            answer = chat(router.url, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
            assert answer["choices"][0]["message"]["content"]
            wanted = {"POST /v1/chat/completions", "prepare", "place", "prefill", "decode", "render"}
            spans = receiver.wait_for(lambda got: wanted <= names(got))
        finally:
            router.stop()

    assert all(ct == "application/x-protobuf" for ct in receiver.content_types)
    by_name = {s.name: s for s in spans}
    request = by_name["POST /v1/chat/completions"]
    assert request.kind == SERVER and request.service_name == "atom-router"
    assert (request.trace_id, request.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    for name in ("prepare", "place", "prefill", "decode", "render"):
        assert by_name[name].trace_id == CLIENT_TRACE
        assert by_name[name].parent_span_id == request.span_id, name
    assert by_name["prefill"].kind == CLIENT and by_name["decode"].kind == CLIENT
    assert by_name["place"].attributes["atom.disagg.decision"] == "pair"
    seen = {w["role"]: s["last_traceparent"] for w, s in zip(fleet.workers, fleet.stats()["workers"], strict=True)}
    assert seen["prefill"] == f"00-{CLIENT_TRACE}-{by_name['prefill'].span_id}-01"
    assert seen["decode"] == f"00-{CLIENT_TRACE}-{by_name['decode'].span_id}-01"
