"""vLLM's `VllmEngine` gRPC service (smg-grpc-proto's vllm_engine.proto) as a token-level leg.

The router sends token ids and sampling parameters (`GenerationRequest`) and gets token
ids back (`GenerationChunk`s); what the servicer does with each field is in
`smg_grpc_servicer/vllm/servicer.py`: stop strings are applied by the engine (it
detokenizes only when there are some), a stream is DELTA output (each chunk the new
tokens) ending in a `GenerateComplete` that repeats the last delta, a non-streamed answer
is one `GenerateComplete` with every token.

P/D is vLLM's serial protocol (the one `router.adapters.vllm` speaks over HTTP, and our
AtomKVConnector, NixlConnector and ExampleConnector serve): the prefill leg is the decode
leg's request with one output token, not streamed, and `kv_transfer_params_json`
`{"do_remote_decode": true}`; the prefill's `GenerateComplete` answers with the params the
decode leg then carries unchanged (`prefill_request`, `decode_request`).

Conversions are pure functions (unit-tested without a server); `VllmGrpcClient` is the
I/O. Cancellation is explicit: leaving a `generate` stream early (client hang-up,
request timeout, a sibling leg failing) cancels the call and sends `Abort`, so the
engine frees the request even if the cancellation raced its admission.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import grpc.aio
import orjson
from grpc_health.v1 import health_pb2_grpc
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2, vllm_engine_pb2_grpc

from router.adapters import grpc_generation
from router.adapters.base import LegFailure
from router.adapters.grpc_generation import generation_chunks, health_reason
from router.generation.types import GenerationChunk, GenerationRequest, SamplingParams
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.grpc")

# -- GenerationRequest -> proto --------------------------------------------------------------


def sampling_to_proto(s: SamplingParams) -> vllm_engine_pb2.SamplingParams:
    """Only what the client set: proto3 zeros are the servicer's "default" for the plain
    fields (top_p 0 -> 1.0, repetition_penalty 0 -> 1.0), optional fields stay unset."""
    msg = vllm_engine_pb2.SamplingParams(
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        include_stop_str_in_output=s.include_stop_str_in_output,
        ignore_eos=s.ignore_eos,
        skip_special_tokens=s.skip_special_tokens,
        spaces_between_special_tokens=s.spaces_between_special_tokens,
        logit_bias=dict(s.logit_bias),
    )
    for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
        value = getattr(s, name)
        if value is not None:
            setattr(msg, name, value)
    for name in ("top_k", "max_tokens", "min_tokens", "seed", "logprobs", "prompt_logprobs"):
        value = getattr(s, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def generate_request(req: GenerationRequest) -> vllm_engine_pb2.GenerateRequest:
    msg = vllm_engine_pb2.GenerateRequest(
        request_id=req.request_id,
        tokenized=vllm_engine_pb2.TokenizedInput(original_text=req.text, input_ids=list(req.input_ids)),
        sampling_params=sampling_to_proto(req.sampling),
        stream=req.stream,
    )
    if req.kv_transfer_params is not None:
        msg.kv_transfer_params_json = orjson.dumps(req.kv_transfer_params).decode()
    return msg


# -- proto -> GenerationChunk ------------------------------------------------------------------


def complete_from_proto(msg: vllm_engine_pb2.GenerateComplete, streamed: bool, want_logprobs: bool) -> GenerationChunk:
    """The final message (`grpc_generation.complete_from_proto`), with the
    `kv_transfer_params` a prefill leg answers with (vLLM's serial P/D)."""
    done = grpc_generation.complete_from_proto(msg, streamed, want_logprobs)
    if msg.HasField("kv_transfer_params_json") and msg.kv_transfer_params_json:
        return dataclasses.replace(done, kv_transfer_params=orjson.loads(msg.kv_transfer_params_json))
    return done


# -- vLLM's serial P/D ----------------------------------------------------------------------

# What the prefill leg asks of the engine's connector: keep the KV for a remote decode.
PREFILL_KV_PARAMS: dict[str, Any] = {"do_remote_decode": True}


def prefill_request(decode: GenerationRequest) -> GenerationRequest:
    """The prefill leg for `decode` (the request whose answer the client gets): the same
    prompt and sampling with one output token, not streamed, no logprobs (nobody reads the
    token), and `PREFILL_KV_PARAMS`. `min_tokens` goes: an engine refuses it above
    `max_tokens` 1 (the HTTP adapter drops it for the same reason)."""
    sampling = dataclasses.replace(decode.sampling, max_tokens=1, min_tokens=None, logprobs=None, prompt_logprobs=None)
    return dataclasses.replace(decode, sampling=sampling, stream=False, kv_transfer_params=dict(PREFILL_KV_PARAMS))


def decode_request(decode: GenerationRequest, params: dict[str, Any] | None) -> GenerationRequest:
    """The decode leg: the client's request unchanged (its `max_tokens` is never lowered)
    plus exactly the prefill's `kv_transfer_params`. Without params (a connector that moves
    KV out of band) decode gets the request as is and finds the KV itself, or prefills."""
    return dataclasses.replace(decode, kv_transfer_params=params)


def prefill_params(worker: Worker, answer: GenerationChunk) -> dict[str, Any] | None:
    """The `kv_transfer_params` of a finished prefill answer. A prefill the engine aborted or
    failed holds no KV for decode: that is the prefill worker's failure (`LegFailure`, so
    the dispatcher retries on another pair), never a decode leg sent off without its KV."""
    if answer.finish_reason in ("abort", "error"):
        raise LegFailure(worker, f"prefill worker {worker.url} ended the prefill leg with finish_reason {answer.finish_reason!r}")
    if answer.kv_transfer_params is None:
        logger.debug("prefill returned no kv_transfer_params", extra={"prefill": worker.url})
    return answer.kv_transfer_params


# -- the client ------------------------------------------------------------------------------


class VllmGrpcClient:
    """Calls on one worker's channel (the channel is the router's, shared by every request)."""

    def __init__(self, worker: Worker, channel: grpc.aio.Channel) -> None:
        self.worker = worker
        self._stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def health(self, timeout_secs: float) -> str:
        """"" when grpc.health.v1 says the server is SERVING, else a short reason (never raises)."""
        return await health_reason(self._health, "", self.worker.url, timeout_secs)

    async def model_info(self, timeout_secs: float) -> vllm_engine_pb2.GetModelInfoResponse:
        return await self._stub.GetModelInfo(vllm_engine_pb2.GetModelInfoRequest(), timeout=timeout_secs)

    async def loads(self, timeout_secs: float) -> vllm_engine_pb2.GetLoadsResponse:
        return await self._stub.GetLoads(vllm_engine_pb2.GetLoadsRequest(), timeout=timeout_secs)

    def kv_events(self, start_sequence_number: int = 0) -> grpc.aio.UnaryStreamCall:
        return self._stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(start_sequence_number=start_sequence_number))

    async def abort(self, request_id: str) -> None:
        """Ask the engine to drop `request_id`; best effort (the engine may be gone)."""
        try:
            await self._stub.Abort(vllm_engine_pb2.AbortRequest(request_ids=[request_id]), timeout=5)
        except grpc.aio.AioRpcError as err:
            logger.info("abort failed", extra={"worker": self.worker.url, "reason": err.code().name})

    def generate(self, req: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's answer as chunks (`grpc_generation.generation_chunks`: errors,
        cancellation and `Abort` there)."""

        async def start() -> grpc.aio.UnaryStreamCall:
            return self._stub.Generate(generate_request(req))

        return generation_chunks(start, self.worker, req, complete_from_proto, self.abort)
