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

Tracing: each `Generate` call is a leg span (`Tracer.leg`, the HTTP legs' span), from the
call to the whole answer (a body) or to its first message (a stream, as an HTTP leg's
span ends with the response headers), with the status the client gets from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Protocol

from router.adapters.vllm_grpc import VllmGrpcClient
from router.errors import ApiError
from router.generation.types import GenerationChunk, GenerationRequest
from router.prepare import PreparedRequest
from router.tracing import OFF, LegTrace, Tracer
from router.transports.grpc_channel import GrpcChannels
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
    """Runs one `Single` plan on a gRPC worker; the dispatcher does retries and load."""

    def __init__(self, channels: GrpcChannels, codec: GenerationCodec, tracer: Tracer = OFF) -> None:
        self.channels = channels
        self.codec = codec
        self.tracer = tracer

    def client(self, worker: Worker) -> VllmGrpcClient:
        return VllmGrpcClient(worker, self.channels.channel(worker))

    async def body(self, worker: Worker, prepared: PreparedRequest) -> bytes:
        """The whole answer as a JSON body. Raises `LegFailure` / `ApiError` (see
        `VllmGrpcClient.generate`)."""
        request = await self.codec.request(prepared, worker)
        with self.tracer.leg(worker, worker.url) as leg, _answered(leg):
            stream = self.client(worker).generate(request)
            try:
                async for chunk in stream:
                    if chunk.finished:
                        return self.codec.render_body(prepared, worker, request, chunk)
            finally:
                await stream.aclose()
        raise AssertionError("VllmGrpcClient.generate ends with a finished chunk or raises")

    async def stream(self, worker: Worker, prepared: PreparedRequest) -> AsyncGenerator[bytes, None]:
        """The answer as SSE bytes, started: the engine's first message has arrived (so its
        refusal raises here). Closing the iterator early aborts the engine's request."""
        request = await self.codec.request(prepared, worker)
        with self.tracer.leg(worker, worker.url) as leg, _answered(leg):
            chunks = self.client(worker).generate(request)
            try:
                first = await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise
        return self.codec.render_stream(prepared, worker, request, _prepend(first, chunks))


@contextlib.contextmanager
def _answered(leg: LegTrace) -> Iterator[None]:
    """Record on the leg's span the status its outcome gives the client: 200, or the
    engine's refusal (a worker that failed is recorded as the span's exception)."""
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
