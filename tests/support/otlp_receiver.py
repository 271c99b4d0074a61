"""A tiny OTLP/HTTP trace collector: accepts protobuf `POST /v1/traces` and keeps the spans.

It runs an aiohttp server on a loopback port in a thread of its own (its own event
loop), so a test can drive a router subprocess with blocking calls while spans arrive.
Decoding uses opentelemetry-proto (the otel extra), exactly as a real collector reads
what the router's exporter sends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from testbed.ports import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: int  # opentelemetry.proto SpanKind number (2: SERVER, 3: CLIENT)
    attributes: dict[str, Any]
    service_name: str
    status_code: int = 0  # 0 unset, 1 ok, 2 error


@dataclass
class OtlpReceiver:
    url: str  # http://127.0.0.1:<port>, what --otlp-traces-endpoint takes
    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, spans: list[ReceivedSpan], content_type: str) -> None:
        with self._changed:
            self.spans.extend(spans)
            self.content_types.append(content_type)
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans received so far, once `done(spans)` holds; `TimeoutError` after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [s.name for s in self.spans]
                    raise TimeoutError(f"OTLP receiver: condition not met within {timeout}s; spans so far: {names}")
                self._changed.wait(left)
            return list(self.spans)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def decode_export(body: bytes) -> list[ReceivedSpan]:
    """The spans of one protobuf `ExportTraceServiceRequest`."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        service_name=str(resource.get("service.name", "")),
                        status_code=span.status.code,
                    )
                )
    return spans


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Run a receiver for the block; stopped (and its thread joined) on the way out."""
    port = free_port()
    receiver = OtlpReceiver(url=f"http://127.0.0.1:{port}")
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def traces(request: web.Request) -> web.Response:
        try:
            spans = decode_export(await request.read())
        except Exception as exc:  # a body a real collector would refuse too
            return web.Response(status=400, text=f"not an OTLP protobuf ExportTraceServiceRequest: {exc}")
        receiver.add(spans, request.content_type)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        finally:
            started.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="otlp-receiver", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if failure:
        raise RuntimeError("OTLP receiver failed to start") from failure[0]
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
