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
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from router.generation.types import GenerationChunk, GenerationRequest
from router.prepare import PreparedRequest
from router.transports.grpc_channel import GrpcChannels
from router.transports.grpc_engines import GrpcEngineClient, engine_client
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

    def __init__(self, channels: GrpcChannels, codec: GenerationCodec) -> None:
        self.channels = channels
        self.codec = codec

    def client(self, worker: Worker) -> GrpcEngineClient:
        return engine_client(worker, self.channels.channel(worker))

    async def body(self, worker: Worker, prepared: PreparedRequest) -> bytes:
        """The whole answer as a JSON body. Raises `LegFailure` / `ApiError` (see
        `VllmGrpcClient.generate`)."""
        request = await self.codec.request(prepared, worker)
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
        chunks = self.client(worker).generate(request)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return self.codec.render_stream(prepared, worker, request, _prepend(first, chunks))


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
