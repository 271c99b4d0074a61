"""The dispatch leg for `grpc://` workers: prepared request -> token-level engine -> OpenAI reply.

Where an HTTP leg forwards the client's body, a gRPC leg runs three steps: a
`GenerationCodec` turns the prepared OpenAI request into a `GenerationRequest` (token
ids, sampling), the engine client (`router.adapters.vllm_grpc`) runs it, and the codec
renders the `GenerationChunk`s as the OpenAI JSON body or SSE stream. The codec is the
seam to `router.generation` (the router-side processing); the leg owns only transport
concerns: the channel, errors before the first byte (retryable or the client's 4xx), and
aborting the engine's request when the answer is abandoned.

A stream is started before the reply is returned: the engine's first message (or its
refusal) arrives first, so a prompt that is too long is a 400, not an SSE error event.

A prefill/decode `Pair` runs vLLM's serial P/D (`router.adapters.vllm_grpc`): the prefill
leg to its end, then the decode leg, whose answer the client gets; both legs are
`Generate` calls, each aborted on its engine when it is left early.

Tracing: each `Generate` call is a leg span (`Tracer.leg`, the HTTP legs' span: `worker`,
or `prefill` then `decode`), from the call to the whole answer (a body, a prefill leg) or
to its first message (a stream, as an HTTP leg's span ends with the response headers),
with the status the engine's outcome gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, Protocol

from router.adapters.base import LegFailure
from router.adapters.vllm_grpc import decode_request, prefill_params, prefill_request
from router.errors import ApiError
from router.generation.types import GenerationChunk, GenerationRequest
from router.placement.types import PlacementPlan, Single
from router.prepare import PreparedRequest
from router.tracing import OFF, LegTrace, Tracer
from router.transports.grpc_channel import GrpcChannels
from router.transports.grpc_engines import GrpcEngineClient, engine_client, engine_of
from router.workers.worker import Worker


class GenerationCodec(Protocol):
    """OpenAI request -> `GenerationRequest`, and `GenerationChunk`s -> OpenAI answer."""

    async def request(self, prepared: PreparedRequest, worker: Worker) -> GenerationRequest:
        """The engine request for `prepared`; raises `ApiError` (400) for what it cannot run.
        Async so that tokenizing a long prompt can run off the event loop."""
        ...

    def render_body(
        self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest, chunk: GenerationChunk
    ) -> bytes:
        """A non-streamed answer (one finished chunk with every token) as the JSON body."""
        ...

    def render_stream(
        self,
        prepared: PreparedRequest,
        worker: Worker,
        request: GenerationRequest,
        chunks: AsyncIterator[GenerationChunk],
    ) -> AsyncGenerator[bytes, None]:
        """A stream's chunks as SSE events, ending with `data: [DONE]`."""
        ...


class GrpcLeg:
    """Runs a plan on gRPC workers (a `Single`, or a `Pair` with vLLM's serial P/D); the
    dispatcher does retries, breakers and load."""

    def __init__(self, channels: GrpcChannels, codec: GenerationCodec, tracer: Tracer = OFF) -> None:
        self.channels = channels
        self.codec = codec
        self.tracer = tracer

    def client(self, worker: Worker) -> GrpcEngineClient:
        return engine_client(worker, self.channels.channel(worker))

    async def body(self, plan: PlacementPlan, prepared: PreparedRequest) -> bytes:
        """The whole answer as a JSON body. Raises `LegFailure` / `ApiError` (see
        `VllmGrpcClient.generate` and `answering_request`)."""
        worker, request = await self.answering_request(plan, prepared)
        with self.tracer.leg(worker, worker.url) as leg, _answered(leg):
            stream = self.client(worker).generate(request)
            try:
                async for chunk in stream:
                    if chunk.finished:
                        return self.codec.render_body(prepared, worker, request, chunk)
            finally:
                await stream.aclose()
        raise AssertionError("VllmGrpcClient.generate ends with a finished chunk or raises")

    async def stream(self, plan: PlacementPlan, prepared: PreparedRequest) -> AsyncGenerator[bytes, None]:
        """The answer as SSE bytes, started: the engine's first message has arrived (so its
        refusal raises here). Closing the iterator early aborts the engine's request."""
        worker, request = await self.answering_request(plan, prepared)
        with self.tracer.leg(worker, worker.url) as leg, _answered(leg):
            chunks = self.client(worker).generate(request)
            try:
                first = await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise
        return self.codec.render_stream(prepared, worker, request, _prepend(first, chunks))

    async def answering_request(self, plan: PlacementPlan, prepared: PreparedRequest) -> tuple[Worker, GenerationRequest]:
        """The worker whose answer the client gets, and the request to send it: a `Single`'s
        worker with the client's request; for a `Pair`, the decode worker with the prefill
        leg's `kv_transfer_params`, after that leg ran here. The prompt is tokenized once,
        so both legs carry the same token ids (the KV decode receives is for its prompt)."""
        if isinstance(plan, Single):
            return plan.worker, await self.codec.request(prepared, plan.worker)
        if {engine_of(plan.prefill).name, engine_of(plan.decode).name} != {"vllm"}:
            raise ApiError(
                501, "P/D over gRPC runs vLLM's protocol only; use http:// workers for SGLang P/D", code="not_implemented"
            )
        request = await self.codec.request(prepared, plan.decode)
        params = await self.prefill(plan.prefill, prefill_request(request))
        return plan.decode, decode_request(request, params)

    async def prefill(self, worker: Worker, request: GenerationRequest) -> dict[str, Any] | None:
        """Run a prefill leg to its end; returns its `kv_transfer_params`. Every failure is
        the prefill worker's `LegFailure`: an engine's refusal keeps its status and error
        body (as an HTTP prefill leg's answer does), so a 400 stays the client's 400.
        Cancelled (the client hung up, the deadline passed), the call is aborted on the
        engine by `VllmGrpcClient.generate`."""
        chunks = self.client(worker).generate(request)
        try:
            with self.tracer.leg(worker, worker.url) as leg, _answered(leg):
                async for chunk in chunks:
                    if chunk.finished:
                        return prefill_params(worker, chunk)
        except ApiError as err:
            raise LegFailure(
                worker, f"prefill worker {worker.url} answered {err.status}", status=err.status, body=err.body()
            ) from None
        finally:
            await chunks.aclose()
        raise AssertionError("VllmGrpcClient.generate ends with a finished chunk or raises")


@contextlib.contextmanager
def _answered(leg: LegTrace) -> Iterator[None]:
    """Record on the leg's span the status its outcome gives: 200, or the engine's refusal
    (a worker that failed is recorded as the span's exception)."""
    try:
        yield
    except ApiError as err:
        leg.answered(err.status)
        raise
    leg.answered(200)


async def _prepend(
    first: GenerationChunk, rest: AsyncGenerator[GenerationChunk, None]
) -> AsyncGenerator[GenerationChunk, None]:
    try:
        yield first
        if not first.finished:
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()
