"""What the two smg-grpc-proto engine protocols share: vLLM's `VllmEngine`
(`router.adapters.vllm_grpc`) and SGLang's `SglangScheduler` (`router.adapters.sglang_grpc`).

Their request messages differ, but their answers do not: both stream `GenerateStreamChunk`s
(DELTA output) and end with a `GenerateComplete`, with the same field names (token ids,
prompt/completion/cached counts, `output_logprobs` with `top_logprobs`, `finish_reason`,
`matched_stop`); both serve grpc.health.v1, `Abort`, and the same gRPC status codes. So one
conversion, one Generate loop, one health check and one status mapping serve both, and
each adapter keeps only what its protocol does differently.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.adapters.base import LegFailure
from router.errors import ApiError
from router.generation.types import FinishReason, GenerationChunk, GenerationRequest, TokenLogprob
from router.workers.worker import Worker

_FINISH_REASONS: frozenset[str] = frozenset(("stop", "length", "abort", "error"))


# -- answer messages -> GenerationChunk ------------------------------------------------------
# `msg` is either protocol's message: the fields read here have the same names in both.


def logprobs_from_proto(msg: Any) -> tuple[TokenLogprob, ...]:
    tops = list(msg.top_logprobs)
    out = []
    for i, (token_id, logprob) in enumerate(zip(msg.token_ids, msg.token_logprobs, strict=True)):
        top = tops[i] if i < len(tops) else None
        out.append(
            TokenLogprob(
                token_id=token_id,
                logprob=logprob,
                top=tuple(zip(top.token_ids, top.values, strict=True)) if top is not None else (),
            )
        )
    return tuple(out)


def chunk_from_proto(msg: Any, want_logprobs: bool) -> GenerationChunk:
    """A stream chunk: the new tokens and the counts."""
    return GenerationChunk(
        token_ids=tuple(msg.token_ids),
        prompt_tokens=msg.prompt_tokens,
        completion_tokens=msg.completion_tokens,
        cached_tokens=msg.cached_tokens,
        logprobs=logprobs_from_proto(msg.output_logprobs) if want_logprobs else None,
    )


def complete_from_proto(msg: Any, streamed: bool, want_logprobs: bool) -> GenerationChunk:
    """The final message. In a stream it repeats the last delta the chunks already carried,
    so its tokens are dropped there; a non-streamed answer's tokens are all here. An
    unknown finish reason is an error, never passed on as if it were one of OpenAI's."""
    finish: FinishReason = msg.finish_reason if msg.finish_reason in _FINISH_REASONS else "error"
    which = msg.WhichOneof("matched_stop")
    matched: int | str | None = getattr(msg, which) if which else None
    return GenerationChunk(
        token_ids=() if streamed else tuple(msg.output_ids),
        prompt_tokens=msg.prompt_tokens,
        completion_tokens=msg.completion_tokens,
        cached_tokens=msg.cached_tokens,
        logprobs=(() if streamed else logprobs_from_proto(msg.output_logprobs)) if want_logprobs else None,
        finish_reason=finish,
        matched_stop=matched,
    )


# -- the Generate stream ---------------------------------------------------------------------


async def generation_chunks(
    start: Callable[[], Awaitable[grpc.aio.UnaryStreamCall]],
    worker: Worker,
    req: GenerationRequest,
    complete: Callable[[Any, bool, bool], GenerationChunk],
    abort: Callable[[str], Awaitable[None]],
) -> AsyncGenerator[GenerationChunk, None]:
    """A `Generate` call's answer as chunks; the last has `finish_reason`. `start` checks
    the request and starts the protocol's call (on the first iteration, so an iterator
    never read starts nothing); `complete` converts its `GenerateComplete` (message,
    streamed, want_logprobs).

    Raises `LegFailure` (worker down, retryable) or `ApiError` (the engine refused the
    request) from the first message on; closing the iterator before the end cancels the
    call and sends `abort` for the request, so the engine frees it even if the
    cancellation raced its admission.
    """
    call = await start()
    want_logprobs = req.sampling.logprobs is not None
    finished = False
    generated = 0  # a stream's messages count their own delta: the running count is ours
    try:
        async for msg in call:
            which = msg.WhichOneof("response")
            if which == "chunk":
                chunk = chunk_from_proto(msg.chunk, want_logprobs)
                generated += len(chunk.token_ids)
                yield dataclasses.replace(chunk, completion_tokens=generated)
            elif which == "complete":
                finished = True
                done = complete(msg.complete, req.stream, want_logprobs)
                yield dataclasses.replace(done, completion_tokens=generated) if req.stream else done
                return
    except grpc.aio.AioRpcError as err:
        finished = True  # the engine ended the call itself
        raise rpc_failure(worker, err) from None
    finally:
        if not finished:
            call.cancel()
            await asyncio.shield(abort(req.request_id))
    raise LegFailure(worker, f"worker {worker.url} ended the stream without a final message")


async def health_reason(health: health_pb2_grpc.HealthStub, service: str, url: str, timeout_secs: float) -> str:
    """"" when grpc.health.v1 says `service` ("" for the server as a whole) is SERVING,
    else a short reason (never raises)."""
    try:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_secs)
    except grpc.aio.AioRpcError as err:
        return f"gRPC health of {url}: {err.code().name}: {err.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"gRPC health of {url}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return ""


# -- gRPC status -> the router's errors ------------------------------------------------------

# Codes that say the worker (not the request) failed: another worker may succeed.
_WORKER_DOWN = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL))
# Codes that are the request's fault, with the HTTP status the client gets.
_CLIENT_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# vLLM's HTTP error `type` per status (vllm/entrypoints/openai: the HTTPStatus's exception name).
_VLLM_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "TooManyRequestsError"}


def rpc_failure(worker: Worker, err: grpc.aio.AioRpcError) -> LegFailure | ApiError:
    """What a failed call means: `LegFailure(status=None)` for a worker that is down (the
    dispatcher retries elsewhere and trips its breaker), an `ApiError` with the engine's
    message for a request the engine refused (a prompt longer than the model's length ...)."""
    code = err.code()
    details = err.details() or code.name
    if code in _WORKER_DOWN:
        return LegFailure(worker, f"{worker.role.value} worker {worker.url} failed: gRPC {code.name}: {details}")
    status = _CLIENT_STATUS.get(code, 502)
    if status >= 500:
        return ApiError(status, f"worker {worker.url}: gRPC {code.name}: {details}", code="upstream_error")
    # The body vLLM's HTTP server gives for the same refusal (relayed as is for HTTP workers).
    return ApiError(status, details, type=_VLLM_ERROR_TYPES.get(status), code=str(status))
