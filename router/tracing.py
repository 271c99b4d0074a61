"""OpenTelemetry spans for the inference path, and the only module that imports opentelemetry.

The inference path (router.inference) and the adapters' one upstream POST
(`Adapter.post`) call a `Tracer` at fixed points. With tracing off that is the base
`Tracer` itself: every call returns a shared do-nothing object, so the hot path pays a
handful of empty method calls per request and opentelemetry is never imported (the
router is tuned for throughput; see docs/tracing.md for the measured cost).

With tracing on (`--otlp-traces-endpoint` / `--enable-trace`, or a `TracerProvider`
handed to `create_tracer`, which is what tests do) each request gets:

    POST /v1/chat/completions   (SERVER; parent: the client's W3C traceparent, if any)
      prepare
      place                     (plan kind, workers, policy reasons, disagg decision)
      prefill | decode | worker (CLIENT, one per upstream leg and attempt)
      render                    (a stream: until [DONE] went out)

Each upstream request carries a `traceparent` (and the client's `tracestate`) naming its
leg span. Legs find their request through a context variable, so the concurrent legs of
`run_both` (tasks copy the context) need no plumbing.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from router.config import TracingConfig
from router.placement.types import Pair, PlacementPlan, RequestDescriptor
from router.workers.worker import Role, Worker

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "atom-router"
INSTALL_HINT = "pip install atom-mesh[otel]"
OTLP_HTTP_TRACES_PATH = "/v1/traces"

# Span names of the upstream legs, by the role of the worker they go to.
LEG_NAMES = {Role.PREFILL: "prefill", Role.DECODE: "decode", Role.REGULAR: "worker"}


class TracingUnavailable(Exception):
    """Tracing was asked for but the otel extra is not installed."""


# -- tracing off: the base classes do nothing --------------------------------------------


class Step:
    """One pipeline step's span (`prepare`, `place`, `render`); off: nothing."""

    __slots__ = ()

    def __enter__(self) -> Step:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def placed(self, plan: PlacementPlan) -> None:
        """Record where the request goes (the `place` step)."""

    def streamed(self, output_events: int, complete: bool) -> None:
        """Record a relayed stream's end (the `render` step): `complete` once `[DONE]` went out."""


class RequestTrace:
    """The server span of one request; off: nothing."""

    __slots__ = ()

    def step(self, name: str) -> Step:
        return _OFF_STEP

    def identify(self, descriptor: RequestDescriptor) -> None:
        """Record what `prepare` learnt: request id, model, stream."""

    def finish(self, status: int, error: str | None = None) -> None:
        """End the span with the status the client saw (499: it hung up)."""


class LegTrace:
    """The client span of one upstream HTTP exchange; off: nothing."""

    __slots__ = ()

    def __enter__(self) -> LegTrace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """`headers` plus this leg's `traceparent` (off: `headers` itself)."""
        return headers

    def answered(self, status: int) -> None:
        """Record the upstream's response status."""


_OFF_STEP = Step()
_OFF_REQUEST = RequestTrace()
_OFF_LEG = LegTrace()


class Tracer:
    """The inference path's tracer. This base class is tracing off."""

    enabled = False

    def request(self, route: str, headers: Mapping[str, str]) -> RequestTrace:
        """Start the span of one request (`headers`: the client's, lower-case names)."""
        return _OFF_REQUEST

    def retry(self, attempt: int, plan: PlacementPlan) -> None:
        """The current request's next legs are attempt number `attempt` (0: the first),
        placed along `plan`."""

    def leg(self, worker: Worker, url: str) -> LegTrace:
        """Start the span of one upstream POST to `url`, a child of the current request."""
        return _OFF_LEG

    def shutdown(self) -> None:
        """Flush and stop the exporter this tracer owns (none when off)."""


OFF = Tracer()


# -- building one ------------------------------------------------------------------------


def create_tracer(config: TracingConfig, provider: TracerProvider | None = None) -> Tracer:
    """The tracer for `config`: off unless tracing is configured or `provider` is given.

    `provider` is an already configured SDK `TracerProvider` (its exporters are the
    caller's, and so is its shutdown); otherwise one is built that exports OTLP to the
    configured endpoint, and `Tracer.shutdown` flushes it.
    """
    if provider is not None:
        return _OtelTracer(provider, owned=False)
    if not config.enabled:
        return OFF
    return _OtelTracer(_otlp_provider(config.endpoint), owned=True)


def check_available(config: TracingConfig) -> None:
    """Raise `TracingUnavailable` (saying what to install) when tracing is configured
    but the otel extra (SDK and the exporter the endpoint needs) cannot be imported."""
    if not config.enabled:
        return
    try:
        _exporter_class(config.endpoint)
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing needs OpenTelemetry ({exc.name or exc} is missing); {INSTALL_HINT}"
        ) from None


def is_http_endpoint(endpoint: str) -> bool:
    """`http(s)://...` is OTLP/HTTP (protobuf); anything else is `host:port` OTLP/gRPC."""
    return endpoint.startswith(("http://", "https://"))


def otlp_http_url(endpoint: str) -> str:
    """The traces URL of an OTLP/HTTP endpoint: `/v1/traces` unless it names a path."""
    scheme, _, rest = endpoint.partition("://")
    return endpoint if "/" in rest.strip("/") else f"{scheme}://{rest.rstrip('/')}{OTLP_HTTP_TRACES_PATH}"


def _exporter_class(endpoint: str) -> Any:
    if is_http_endpoint(endpoint):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter


def _otlp_provider(endpoint: str) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter_cls = _exporter_class(endpoint)
    if is_http_endpoint(endpoint):
        exporter = exporter_cls(endpoint=otlp_http_url(endpoint))
    else:
        exporter = exporter_cls(endpoint=endpoint, insecure=True)
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# -- tracing on ---------------------------------------------------------------------------


def plan_attributes(plan: PlacementPlan) -> dict[str, str | int]:
    """The `place` span's attributes: which plan, which workers, and why."""
    attrs: dict[str, str | int] = {}
    if isinstance(plan, Pair):
        attrs["atom.plan.kind"] = "pair"
        attrs["atom.prefill.worker_id"] = plan.prefill.worker_id
        attrs["atom.prefill.url"] = plan.prefill.url
        attrs["atom.prefill.reason"] = plan.prefill_reason
        attrs["atom.decode.worker_id"] = plan.decode.worker_id
        attrs["atom.decode.url"] = plan.decode.url
        attrs["atom.decode.reason"] = plan.decode_reason
    else:
        attrs["atom.plan.kind"] = "single"
        attrs["atom.worker.id"] = plan.worker.worker_id
        attrs["atom.worker.url"] = plan.worker.url
        attrs["atom.worker.role"] = plan.worker.role.value
        attrs["atom.placement.reason"] = plan.reason
    if plan.disagg is not None:
        attrs["atom.disagg.decision"] = plan.disagg.decision
        attrs["atom.disagg.reason"] = plan.disagg.reason
        attrs["atom.disagg.prompt_tokens"] = plan.disagg.prompt_tokens
        attrs["atom.disagg.cached_tokens"] = plan.disagg.cached_tokens
    return attrs


def _record_exit(span: Any, exc: BaseException | None) -> None:
    """An exception leaving a step or leg: its span's error status."""
    if exc is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if isinstance(exc, asyncio.CancelledError):
        span.add_event("cancelled")
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
        return
    span.set_status(Status(StatusCode.ERROR, str(getattr(exc, "message", exc))))
    span.set_attribute("error.type", type(exc).__name__)


class _OtelStep(Step):
    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _record_exit(self._span, exc)
        self._span.end()

    def placed(self, plan: PlacementPlan) -> None:
        self._span.set_attributes(plan_attributes(plan))

    def streamed(self, output_events: int, complete: bool) -> None:
        self._span.set_attributes({"atom.stream.output_events": output_events, "atom.stream.complete": complete})
        if not complete:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, "the upstream stream broke; the client got an SSE error event"))


class _OtelRequest(RequestTrace):
    __slots__ = ("_tracer", "_span", "context", "attempt", "_token")

    def __init__(self, tracer: Any, span: Any, context: Any) -> None:
        self._tracer = tracer
        self._span = span
        self.context = context  # the request span's context: the parent of its children
        self.attempt = 0
        self._token = _current.set(self)

    def step(self, name: str) -> Step:
        return _OtelStep(self._tracer.start_span(name, context=self.context))

    def identify(self, descriptor: RequestDescriptor) -> None:
        self._span.set_attributes(
            {
                "atom.request_id": descriptor.request_id,
                "gen_ai.request.model": descriptor.model or "",
                "atom.stream": descriptor.stream,
            }
        )

    def finish(self, status: int, error: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        from router.inference import CLIENT_CLOSED  # here: router.inference imports this module

        span = self._span
        span.set_attribute("http.response.status_code", status)
        if status == CLIENT_CLOSED:
            span.add_event("client disconnected")
            span.set_status(Status(StatusCode.ERROR, "client disconnected before the answer was complete"))
        elif status >= 400:
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()
        _current.reset(self._token)


class _OtelLeg(LegTrace):
    __slots__ = ("_span", "_propagator")

    def __init__(self, span: Any, propagator: Any) -> None:
        self._span = span
        self._propagator = propagator

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _record_exit(self._span, exc)
        self._span.end()

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        from opentelemetry import trace

        carrier = dict(headers)
        self._propagator.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


# The request whose task (or a leg task it started) is running: the parent of its legs.
_current: contextvars.ContextVar[_OtelRequest] = contextvars.ContextVar("atom_trace_request")


class _OtelTracer(Tracer):
    enabled = True

    def __init__(self, provider: TracerProvider, *, owned: bool) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer(SERVICE_NAME)
        self._propagator = TraceContextTextMapPropagator()

    def request(self, route: str, headers: Mapping[str, str]) -> RequestTrace:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
        )
        return _OtelRequest(self._tracer, span, trace.set_span_in_context(span))

    def retry(self, attempt: int, plan: PlacementPlan) -> None:
        request = _current.get(None)
        if request is None:
            return
        from opentelemetry import trace

        request.attempt = attempt
        trace.get_current_span(request.context).add_event(
            "retry", {"atom.attempt": attempt, **plan_attributes(plan)}
        )

    def leg(self, worker: Worker, url: str) -> LegTrace:
        from opentelemetry.trace import SpanKind

        request = _current.get(None)
        span = self._tracer.start_span(
            LEG_NAMES[worker.role],
            context=request.context if request is not None else None,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": url,
                "atom.worker.id": worker.worker_id,
                "atom.worker.role": worker.role.value,
                "atom.attempt": request.attempt if request is not None else 0,
            },
        )
        return _OtelLeg(span, self._propagator)

    def shutdown(self) -> None:
        if self._owned:
            self._provider.shutdown()
