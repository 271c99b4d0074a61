"""The inference path: one request through prepare -> place -> dispatch -> render.

`InferencePath.serve` is the whole pipeline, in order, in one short function; each step
and each concern around it has one helper below it:

- `read_body`: the request body, under the payload limit, before anything else runs;
- `HangUpWatch`: cancels the work when the client hangs up before its answer is
  complete, so the engine stops generating (and counts the request as 499);
- `relay_stream`: SSE chunks written to the client the moment they arrive, timed by
  output event (`router.sse`) for the stream metrics.

The routes are raw ASGI endpoints (`RouterApp` in router/app.py calls `serve` before
Starlette's middleware): no Request object, no response class, no buffering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from types import TracebackType

from starlette.types import Receive, Scope, Send

from router.config import RouterConfig
from router.decisions import Decisions, Held, Placement
from router.dispatch import Dispatcher, Reply
from router.drain import Drain
from router.errors import ApiError, ShuttingDown
from router.logging_setup import request_id_var
from router.metrics import RouterMetrics
from router.prepare import PreparedRequest, payload_too_large, prepare_request_async
from router.render import SSE_CONTENT_TYPE, Headers, StreamWriter, header_list, send_body, send_error
from router.sse import SseEventCounter
from router.tokenizer import ModelTokenizers
from router.tracing import OFF, Step, Tracer
from router.workers.registry import WorkerRegistry

logger = logging.getLogger("atom_mesh.app")

# Status recorded when the client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class InferencePath:
    """The chat and completions routes of one router. `dispatcher` is set at app start,
    once the upstream session exists (no request arrives before that)."""

    def __init__(
        self,
        config: RouterConfig,
        tokenizer: ModelTokenizers,
        decisions: Decisions,
        metrics: RouterMetrics,
        registry: WorkerRegistry,
        drain: Drain,
        tracer: Tracer = OFF,
    ) -> None:
        self._config = config
        self._drain = drain
        self._tracer = tracer
        self._decisions = decisions
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._registry = registry
        self.dispatcher: Dispatcher | None = None

    async def serve(self, route: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request: prepare -> place -> dispatch -> render.

        Every request gets exactly one answer (an OpenAI error body when a step fails) and
        is counted once in the request metrics, with the status the client saw. While the
        router drains for shutdown, new requests get 503 `shutting_down`, and those still
        running when the grace period ends are cancelled and told so (`router.drain`).
        """
        started = time.perf_counter()
        model, status, id_token, error = "unknown", 500, None, None
        drain = self._drain
        try:
            drain.enter()
        except ShuttingDown as err:
            await send_error(send, err)
            self._metrics.request_done(route, model, err.status, time.perf_counter() - started)
            return
        writer = StreamWriter(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        trace = self._tracer.request(route, headers)
        try:
            with trace.step("prepare"):
                prepared = await self._prepare(route, await read_body(receive, headers, self._config.max_payload_size), headers)
            trace.identify(prepared.descriptor)
            id_token = request_id_var.set(prepared.descriptor.request_id)
            model = self._model_label(prepared.descriptor.model)
            async with self._admitted(), HangUpWatch(receive, writer) as client:
                with trace.step("place") as step:
                    placement = await self._place(prepared)
                    step.placed(placement.plan)
                reply = await self._dispatch(prepared, placement)
                with trace.step("render") as step:
                    status = await self._render(prepared, reply, send, writer, started, step)
            if client.left:
                status = CLIENT_CLOSED
        except ApiError as err:
            status, error = err.status, err.message
            await send_error(send, err)
        except asyncio.CancelledError:
            if not drain.expired:
                raise
            status = await _end_cut_short(send, writer)
        finally:
            drain.leave()
            self._metrics.request_done(route, model, status, time.perf_counter() - started)
            trace.finish(status, error)
            if id_token is not None:
                request_id_var.reset(id_token)

    # -- the steps, in pipeline order -------------------------------------------------------

    async def _prepare(self, route: str, raw: bytes, headers: dict[str, str]) -> PreparedRequest:
        return await prepare_request_async(
            route,
            raw,
            headers,
            request_id_headers=self._config.request_id_headers,
            session_header=self._config.policy_config.session_header,
            tokenizer=self._tokenizer,
        )

    def _admitted(self) -> _Admitted:
        return _Admitted(self._decisions)

    async def _place(self, prepared: PreparedRequest) -> Placement:
        """Where the first attempt runs; a `PlacementError` is the client's 404/503."""
        return await self._decisions.place(prepared.descriptor)

    async def _dispatch(self, prepared: PreparedRequest, placement: Placement) -> Reply:
        """Send the request along `placement` (which owns its load hold from here on);
        the dispatcher re-places each retry itself."""
        assert self.dispatcher is not None
        try:
            return await self.dispatcher.run(prepared, placement)
        except ApiError:
            raise
        except Exception:  # a bug, not bad input or a bad upstream: still one clean answer
            logger.exception("internal error while dispatching")
            raise ApiError(
                500, "internal router error; see the router's log for this request id", code="internal_error"
            ) from None

    async def _render(
        self, prepared: PreparedRequest, reply: Reply, send: Send, writer: StreamWriter, started: float, step: Step
    ) -> int:
        """Write the reply to the client; return the status it got. Closes the reply on
        every path (load counters released, an unfinished upstream stream aborted)."""
        try:
            extra = [*reply.headers, ("x-request-id", prepared.descriptor.request_id)]
            if not reply.streaming:
                await send_body(send, reply.status, reply.body, header_list(reply.content_type, extra))
                return reply.status
            sse_headers = header_list(SSE_CONTENT_TYPE, [("cache-control", "no-cache"), *extra])
            times = await relay_stream(reply, writer, sse_headers)
            step.streamed(times.output_events, times.complete)
            self._observe_stream(prepared.route, started, times)
            return reply.status
        finally:
            reply.close()

    # -- around the steps -------------------------------------------------------------------

    def _observe_stream(self, route: str, started: float, times: StreamTimes) -> None:
        metrics = self._metrics
        if times.first is not None:
            metrics.child(metrics.ttft, route).observe(times.first - started)
        if times.complete and times.output_events > 1 and times.first is not None:
            gap = (times.last - times.first) / (times.output_events - 1)
            metrics.child(metrics.inter_event, route).observe(gap)

    def _model_label(self, model: str | None) -> str:
        """A bounded label: only models some worker serves (clients can send any string)."""
        if model is None:
            return "default"
        return model if any(model in w.models for w in self._registry) else "unknown"


class _Admitted:
    """Holds an admission slot for the block; a refusal (`AdmissionRejected`, an
    `ApiError`) propagates as the client's 429/503."""

    __slots__ = ("_decisions", "_slot")

    def __init__(self, decisions: Decisions) -> None:
        self._decisions = decisions
        self._slot: Held | None = None

    async def __aenter__(self) -> None:
        self._slot = await self._decisions.admit()

    async def __aexit__(self, *exc: object) -> None:
        assert self._slot is not None
        self._slot.release()


async def _end_cut_short(send: Send, writer: StreamWriter) -> int:
    """End a request the shutdown cancelled when its grace period ran out: a 503, or on a
    started stream an SSE error event and `[DONE]`; return the status to record. The
    cancellation is absorbed here (uncancelled), as the request now ends normally."""
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()
    err = ShuttingDown("router shut down before this answer was complete (grace period over); retry the request")
    if writer.started:
        await writer.fail(err)
    else:
        await send_error(send, err)
    return err.status


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole request body; 413 as soon as it (or its declared length) passes `limit`."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise payload_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class HangUpWatch:
    """Cancels the request's task if the client hangs up before it has its whole answer.

    The response runs in the request's own task; one watcher task reads `receive` (the
    body was already read, so the only message left is the disconnect). (Running the
    response in a task of its own and waiting on both costs two more task steps and a
    wait per request, measurable on the hot path.) Leaving the block absorbs the
    cancellation the watch caused and sets `left`; any other cancellation (shutdown)
    propagates.

    A client that closes right after reading `[DONE]` (the OpenAI SDK does) got its whole
    answer: the relay finishes (the upstream's end, the metrics) and the request counts
    as a success.
    """

    __slots__ = ("_receive", "_writer", "_task", "_watcher", "_watching", "left")

    def __init__(self, receive: Receive, writer: StreamWriter) -> None:
        self._receive = receive
        self._writer = writer
        self._watching = False
        self.left = False

    async def __aenter__(self) -> HangUpWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watching = True
        self._watcher = asyncio.get_running_loop().create_task(_client_disconnect(self._receive), name="client-hang-up-watch")
        self._watcher.add_done_callback(self._on_hang_up)
        return self

    def _on_hang_up(self, watcher: asyncio.Task[None]) -> None:
        if watcher.cancelled():
            return  # the block ended first: nothing to do
        watcher.exception()  # a failing receive means the connection is gone too
        if self._watching and not self._writer.delivered:
            self.left = True
            self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._watching = False
        self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.left and self._task.uncancel() == 0:
            logger.info("client disconnected; cancelled upstream")
            return True
        return False


async def _client_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class StreamTimes:
    """When a relayed stream's output events arrived (`time.perf_counter` seconds)."""

    output_events: int = 0
    first: float | None = None  # arrival of the chunk that completed the first output event
    last: float = 0.0  # arrival of the chunk that completed the last one
    complete: bool = False  # the upstream ended the stream normally


async def relay_stream(reply: Reply, writer: StreamWriter, headers: Headers) -> StreamTimes:
    """Write the upstream's SSE chunks to the client as they arrive, unbuffered.

    A stream that breaks (or times out) after it started ends with an SSE error event and
    `[DONE]`: the status line already went out, so this is the only way left to tell the
    client.
    """
    times = StreamTimes()
    counter = SseEventCounter()
    await writer.start(reply.status, headers)
    try:
        async for chunk in reply.chunks():
            if counter.feed(chunk):
                now = time.perf_counter()
                if times.first is None:
                    times.first = now
                times.last = now
            await writer.write(chunk)
    except ApiError as err:
        logger.warning("stream failed", extra={"reason": err.message})
        await writer.fail(err)
        times.output_events = counter.output_events
        return times
    await writer.finish()
    times.output_events = counter.output_events
    times.complete = True
    return times
