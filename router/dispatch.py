"""Dispatch: run a prepared request on upstream workers, with retries, breakers and load.

One pooled upstream client (`router.transports.http_upstream`, created at app start,
closed at shutdown) carries every HTTP leg; grpc:// workers take the gRPC leg. An
attempt = place (holding load) -> adapter legs -> status check. While nothing has reached
the client, connection errors and retryable statuses are retried with exponential
backoff and jitter, each time re-placed with the failed workers in `request.excluded`
(for P/D, another pair; a failed decode-only attempt may come back as a pair and a
failed pair as decode-only, see `router.placement.disagg_decider`). Every ending path
(success, upstream error, client disconnect, cancellation, timeout) releases the
load the placement holds, and every outcome goes to the worker's circuit breaker
(both through `router.decisions`, in this process or the coordinator's).

The result is a `Reply`: a complete body, or a live stream the app relays chunk by chunk.
A stream that breaks later cannot be retried (bytes already went out); the app turns it
into an SSE error event.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.adapters.base import Adapter, LegFailure, Upstream
from router.adapters.vllm import VllmAdapter
from router.config import RouterConfig
from router.decisions import Decisions, Held, Placement
from router.errors import ApiError, PlacementError
from router.metrics import RouterMetrics
from router.placement.types import Pair, PlacementPlan, RequestDescriptor, Single, plan_workers
from router.prepare import PreparedRequest
from router.render import JSON_CONTENT_TYPE, SSE_CONTENT_TYPE
from router.tracing import OFF, Tracer
from router.transports import Transport
from router.transports.http_upstream import HttpUpstream, UpstreamError
from router.workers.worker import Role, Worker

if TYPE_CHECKING:
    from router.transports.grpc_leg import GrpcLeg

logger = logging.getLogger("atom_mesh.dispatch")

def create_upstream(config: RouterConfig) -> HttpUpstream:
    """The router's one client for inference legs: keep-alive pools per worker, no
    total timeout (dispatch enforces `request_timeout_secs` itself, streams included),
    no limit on connections in use (admission control bounds concurrency)."""
    u = config.upstream
    return HttpUpstream(
        connect_timeout_secs=u.connect_timeout_secs,
        read_timeout_secs=u.read_timeout_secs,
        max_idle_per_origin=u.max_idle_connections_per_worker,
        idle_timeout_secs=u.idle_timeout_secs,
    )


def plan_transport(plan: PlacementPlan) -> Transport:
    """The transport of the plan's workers. A pair across transports is refused (501): a
    gRPC leg carries the router's token ids while an HTTP engine tokenizes the body
    itself, and decode's KV must be for exactly the prompt decode runs."""
    if isinstance(plan, Single):
        return plan.worker.transport
    if plan.prefill.transport is not plan.decode.transport:
        raise ApiError(
            501,
            f"prefill worker {plan.prefill.url} and decode worker {plan.decode.url} use different transports; "
            "a prefill/decode pair must be both http:// or both grpc:// (register the P/D workers of a model one way)",
            code="not_implemented",
        )
    return plan.prefill.transport


def worker_headers(plan: PlacementPlan) -> list[tuple[str, str]]:
    """Response headers naming the workers used (the demo prints them). A decode-only
    answer names only its decode worker, so clients can tell it from a pair."""
    if isinstance(plan, Pair):
        return [("x-atom-prefill-worker", plan.prefill.url), ("x-atom-decode-worker", plan.decode.url)]
    if plan.worker.role is Role.DECODE:
        return [("x-atom-decode-worker", plan.worker.url)]
    return [("x-atom-worker", plan.worker.url)]


@dataclass
class Reply:
    """What the client gets: status, headers, and a full body or a live upstream stream.

    `close()` must run on every path (the app does it in `finally`): it releases the load
    counters and aborts an unfinished upstream stream so the engine stops generating.
    """

    status: int
    content_type: bytes
    headers: list[tuple[str, str]]
    body: bytes = b""
    upstream: Upstream | None = None
    # A stream rendered by the router itself (a gRPC worker's answer), instead of `upstream`.
    rendered: AsyncGenerator[bytes, None] | None = None
    guard: Held | None = None
    deadline: float = 0.0
    on_stream_failure: Callable[[Worker], None] = field(default=lambda _w: None, repr=False)
    _complete: bool = False

    @property
    def streaming(self) -> bool:
        return self.upstream is not None or self.rendered is not None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Upstream chunks as they arrive. A broken upstream raises `ApiError(502)`; the
        request deadline raises `ApiError(504)`."""
        if self.rendered is not None:
            async for chunk in self._rendered_chunks(self.rendered):
                yield chunk
            return
        assert self.upstream is not None
        upstream = self.upstream
        response = upstream.response
        try:
            async with asyncio.timeout_at(self.deadline):
                while chunk := await response.next_chunk():
                    yield chunk
        except TimeoutError:
            raise ApiError(
                504, "request timed out while streaming; raise --request-timeout-secs for long generations", code="timeout"
            ) from None
        except UpstreamError as exc:
            self.on_stream_failure(upstream.worker)
            raise ApiError(
                502, f"worker {upstream.worker.url} failed mid-stream: {exc!r}", code="upstream_stream_broken"
            ) from None
        self._complete = True

    async def _rendered_chunks(self, rendered: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        try:
            async with asyncio.timeout_at(self.deadline):
                async for chunk in rendered:
                    yield chunk
        except TimeoutError:
            raise ApiError(
                504, "request timed out while streaming; raise --request-timeout-secs for long generations", code="timeout"
            ) from None
        except LegFailure as exc:
            self.on_stream_failure(exc.worker)
            raise ApiError(502, f"{exc.message} mid-stream", code="upstream_stream_broken") from None
        self._complete = True

    def close(self) -> None:
        if self.rendered is not None and not self._complete:
            # Never iterated, or left early: closing the generator aborts the engine's request.
            task = asyncio.get_running_loop().create_task(self.rendered.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        if self.upstream is not None:
            if self._complete:
                self.upstream.response.release()
            else:
                self.upstream.response.close()
        if self.guard is not None:
            self.guard.release()


_closing: set[asyncio.Task[None]] = set()  # rendered streams being closed, kept referenced


class Dispatcher:
    def __init__(
        self,
        adapter: Adapter,
        decisions: Decisions,
        config: RouterConfig,
        metrics: RouterMetrics,
        *,
        rng: random.Random | None = None,
        tracer: Tracer = OFF,
        grpc: GrpcLeg | None = None,
    ) -> None:
        self.adapter = adapter
        self.tracer = tracer
        # The leg for grpc:// workers (None: the router has none configured).
        self.grpc = grpc
        self.decisions = decisions
        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random(config.seed)
        self._retryable = frozenset(config.retry.retryable_statuses)

    def backoff_secs(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): exponential, capped, jittered."""
        r = self.config.retry
        base = min(r.initial_backoff_ms * r.backoff_multiplier ** (retry - 1), r.max_backoff_ms) / 1000
        return max(0.0, base * (1 + r.jitter_factor * self.rng.uniform(-1, 1)))

    async def run(self, request: PreparedRequest, placement: Placement) -> Reply:
        """Send `request` along `placement`, retrying while nothing reached the client.

        The first attempt takes the caller's placement (a pipeline stage of its own; its
        load hold is released here on every path); each retry is placed anew, away from
        the workers that failed.
        Raises `ApiError` for every failure (placement, upstream, timeout), so the caller
        has exactly one error path.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_secs
        current: list[PlacementPlan] = []  # the plan of the attempt in progress
        try:
            async with asyncio.timeout_at(deadline):
                return await self._attempts(request, placement, deadline, current)
        except TimeoutError:
            for worker in plan_workers(current[-1]) if current else ():
                self.decisions.failed(worker)  # a hung worker is a failing one
            raise ApiError(
                504,
                f"no answer within {self.config.request_timeout_secs:g}s; the worker may be overloaded or hung "
                "(raise --request-timeout-secs for long generations)",
                code="timeout",
            ) from None

    async def _attempts(
        self, request: PreparedRequest, first: Placement, deadline: float, current: list[PlacementPlan]
    ) -> Reply:
        descriptor = request.descriptor
        retry_cfg = self.config.retry
        attempts = retry_cfg.max_retries + 1 if retry_cfg.enabled else 1
        headers = {"content-type": "application/json", "x-request-id": descriptor.request_id}
        last_error: ApiError | None = None
        for attempt in range(attempts):
            if attempt:
                try:
                    await asyncio.sleep(self.backoff_secs(attempt))
                    placement = await self.decisions.place(descriptor)
                except PlacementError:
                    assert last_error is not None  # only retries re-place, after a failure
                    raise last_error from None  # nothing else to try: the upstream error is the cause
                self.tracer.retry(attempt, placement.plan)
            else:
                placement = first
            plan, guard = placement.plan, placement.hold
            try:
                self._record_placement(plan)
            except BaseException:
                guard.release()
                raise
            current.append(plan)
            try:
                reply = await self._attempt(plan, request, headers, guard, deadline)
            except _Retryable as exc:
                guard.release()
                last_error = exc.error
                self._failed(exc.worker, descriptor)
                if plan.disagg is not None:
                    descriptor.failed_decision = plan.disagg.decision
                if attempt + 1 < attempts:
                    self.metrics.child(self.metrics.retries, request.route, exc.cause).inc()
                    logger.info(
                        "retrying", extra={"attempt": attempt + 1, "worker": exc.worker.url, "cause": exc.cause}
                    )
                continue
            except BaseException:
                guard.release()
                raise
            return reply
        assert last_error is not None
        raise last_error

    async def _attempt(
        self,
        plan: PlacementPlan,
        request: PreparedRequest,
        headers: dict[str, str],
        guard: Held,
        deadline: float,
    ) -> Reply:
        if plan_transport(plan) is Transport.GRPC:
            return await self._grpc_attempt(plan, request, guard, deadline)
        try:
            upstream = await self.adapter.send(plan, request, headers)
        except LegFailure as exc:
            raise self._leg_failed(exc) from None
        resp = upstream.response
        status = resp.status
        names = worker_headers(plan)
        content_type = resp.headers.get("content-type", "").encode("latin-1") or JSON_CONTENT_TYPE
        try:
            if status == 200 and request.descriptor.stream and content_type.startswith(SSE_CONTENT_TYPE):
                self._succeeded(plan)
                return Reply(
                    status,
                    content_type,
                    names,
                    upstream=upstream,
                    guard=guard,
                    deadline=deadline,
                    on_stream_failure=lambda w: self._failed(w, request.descriptor),
                )
            body = upstream.body if upstream.body is not None else await resp.read()
        except UpstreamError as exc:
            resp.close()
            raise _Retryable(
                upstream.worker,
                ApiError(502, f"worker {upstream.worker.url} dropped the connection: {exc!r}", code="upstream_error"),
                "read",
            ) from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        if status in self._retryable:
            raise _Retryable(upstream.worker, ApiError.from_upstream(status, body, upstream.worker.url), str(status))
        self._succeeded(plan)
        guard.release()
        if status >= 400:
            return Reply(status, JSON_CONTENT_TYPE, names, body=ApiError.from_upstream(status, body, upstream.worker.url).body())
        return Reply(status, content_type, names, body=body)

    async def _grpc_attempt(self, plan: PlacementPlan, request: PreparedRequest, guard: Held, deadline: float) -> Reply:
        """One attempt on gRPC workers: the same retry and breaker rules as HTTP legs (a
        worker that is down, prefill or decode, is retried elsewhere; a refused request is
        the client's 4xx). A `Pair` runs vLLM's serial P/D (`GrpcLeg.answering_request`)."""
        if self.grpc is None:
            raise ApiError(501, "this router has no gRPC transport; install atom-mesh[grpc]", code="not_implemented")
        if isinstance(plan, Pair) and self.adapter.name != VllmAdapter.name:
            raise ApiError(
                501,
                "P/D over grpc:// workers speaks vLLM's serial protocol (kv_transfer_params on both legs): "
                f"start the router with --backend vllm, not --backend {self.adapter.name}",
                code="not_implemented",
            )
        answering = plan.worker if isinstance(plan, Single) else plan.decode
        names = worker_headers(plan)
        try:
            if request.descriptor.stream:
                rendered = await self.grpc.stream(plan, request)
                self._succeeded(plan)
                return Reply(
                    200,
                    SSE_CONTENT_TYPE,
                    names,
                    rendered=rendered,
                    guard=guard,
                    deadline=deadline,
                    on_stream_failure=lambda w: self._failed(w, request.descriptor),
                )
            body = await self.grpc.body(plan, request)
        except LegFailure as exc:
            raise self._leg_failed(exc) from None
        except ApiError as err:  # the answering engine refused the request
            if err.status in self._retryable:
                raise _Retryable(answering, err, str(err.status)) from None
            self.decisions.succeeded(answering)  # the request's fault, not the worker's
            raise
        self._succeeded(plan)
        guard.release()
        return Reply(200, JSON_CONTENT_TYPE, names, body=body)

    def _leg_failed(self, exc: LegFailure) -> Exception:
        """What a failed leg (HTTP or gRPC, prefill or decode) raises: retryable for a
        worker that is down or a retryable status, else the client's error (a 4xx is the
        request's fault, not the worker's: its breaker counts a success)."""
        if exc.status is None or exc.status in self._retryable:
            return _Retryable(exc.worker, _leg_error(exc), "connect" if exc.status is None else str(exc.status))
        self.decisions.succeeded(exc.worker)
        return _leg_error(exc)

    def _record_placement(self, plan: PlacementPlan) -> None:
        metrics = self.metrics
        if isinstance(plan, Pair):
            metrics.child(metrics.placements, "prefill", self.config.policy_for("prefill"), plan.prefill_reason).inc()
            metrics.child(metrics.placements, "decode", self.config.policy_for("decode"), plan.decode_reason).inc()
        else:
            role = plan.worker.role.value
            metrics.child(metrics.placements, role, self.config.policy_for(role), plan.reason).inc()
        decision = plan.disagg
        if decision is not None:
            metrics.child(metrics.disagg_decisions, decision.decision, decision.reason).inc()
            metrics.disagg_uncached_tokens.observe(decision.uncached_tokens)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "disaggregation decision",
                    extra={
                        "decision": decision.decision,
                        "reason": decision.reason,
                        "prompt_tokens": decision.prompt_tokens,
                        "cached_tokens": decision.cached_tokens,
                        "uncached_tokens": decision.uncached_tokens,
                    },
                )

    def _succeeded(self, plan: PlacementPlan) -> None:
        for worker in plan_workers(plan):
            self.decisions.succeeded(worker)

    def _failed(self, worker: Worker, descriptor: RequestDescriptor) -> None:
        self.decisions.failed(worker)
        descriptor.excluded.add(worker.worker_id)
        self.metrics.child(self.metrics.upstream_failures, worker.url, worker.role.value).inc()
        logger.warning("upstream failed", extra={"worker": worker.url, "role": worker.role.value})


class _Retryable(Exception):
    """An attempt failed before anything reached the client; another worker may succeed."""

    def __init__(self, worker: Worker, error: ApiError, cause: str) -> None:
        super().__init__(error.message)
        self.worker = worker
        self.error = error
        self.cause = cause


def _leg_error(exc: LegFailure) -> ApiError:
    if exc.status is None:
        return ApiError(502, exc.message, code="upstream_unreachable")
    if exc.body:
        inner = ApiError.from_upstream(exc.status, exc.body, exc.worker.url)
        return ApiError(
            exc.status, f"{exc.message}: {inner.message}", type=inner.type, param=inner.param, code=inner.code or "upstream_error"
        )
    return ApiError(exc.status, exc.message, code="upstream_error")
