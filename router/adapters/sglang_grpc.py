"""SGLang's `SglangScheduler` gRPC service (smg-grpc-proto's sglang_scheduler.proto) as a token-level leg.

SGLang 0.5.23 serves it with `python -m sglang.launch_server --smg-grpc-mode --grpc-port P`
(the server side is the `smg-grpc-servicer` package, `smg_grpc_servicer/sglang`): the
scheduler runs without SGLang's tokenizer manager, the router sends token ids and gets
token ids back, exactly as with vLLM's `VllmEngine` (`router.adapters.vllm_grpc`).

What differs from vLLM's protocol, read in the servicer (`servicer.py`, `request_manager.py`):
- Sampling fields are plain proto3 scalars, so an unset temperature arrives as 0.0, which
  SGLang runs greedy. The router therefore always sends temperature, top_p, top_k, min_p
  and repetition_penalty: the client's value, else the model's default that SGLang's own
  HTTP server would apply (`GetModelInfo.default_sampling_params_json`, from the model's
  generation_config.json), else SGLang's neutral value.
- Logprobs are `return_logprob` + `top_logprobs_num`; `logprob_start_len` must be -1 or
  the scheduler computes prompt logprobs from position 0.
- Nothing on this path checks prompt ids (SGLang's tokenizer manager is not in it): an
  id past the model's embedding kills the scheduler process. The router refuses ids
  past `GetModelInfo.vocab_size` (a 400); smg-grpc-servicer 0.14.1 on SGLang 0.5.23
  reports its fallback 128256 there (the scheduler's info has no vocabulary size), so
  for a smaller model the check is only as good as that number.
- There is no seed field and no place for prompt logprobs in the router's chunk: both are
  a 400 rather than silently ignored.
- A stream is DELTA output whose last chunk is followed by a `GenerateComplete` built from
  the same output (it repeats the last delta); a non-streamed answer is one
  `GenerateComplete` with every token. Finish reasons are "stop", "length" or "abort";
  a stop on EOS reports the EOS id as `matched_token_id`.
- Abort takes one request id; readiness is grpc.health.v1 for the service's full name.

Conversions are pure functions (unit-tested against the published proto, no server);
`SglangGrpcClient` is the I/O, with the same calls as `VllmGrpcClient`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

import grpc.aio
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2, sglang_scheduler_pb2_grpc

from router.adapters.base import LegFailure
from router.adapters.vllm_grpc import rpc_failure
from router.errors import ApiError, InvalidGenerationRequest
from router.generation.types import FinishReason, GenerationChunk, GenerationRequest, SamplingParams, TokenLogprob
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.grpc")

# The service's full name, as the servicer registers it with grpc.health.v1.
SERVICE = sglang_scheduler_pb2.DESCRIPTOR.services_by_name["SglangScheduler"].full_name

# SGLang's neutral values (sglang.srt.sampling.sampling_params.SamplingParams), used when
# neither the client nor the model's defaults set a field.
NEUTRAL_SAMPLING: Mapping[str, float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}
# Where a worker's `ModelFacts` are kept once read (`Worker.engine_info`).
MODEL_FACTS_KEY = "model"

_FINISH_REASONS: frozenset[str] = frozenset(("stop", "length", "abort"))


# -- GenerationRequest -> proto --------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the router needs from `GetModelInfo` to send a request."""

    vocab_size: int
    # The model's sampling defaults SGLang's HTTP server applies to unset fields.
    sampling_defaults: dict[str, float]


def parse_sampling_defaults(text: str) -> dict[str, float]:
    """`GetModelInfoResponse.default_sampling_params_json` -> the fields it sets ("" = none)."""
    if not text:
        return {}
    values = orjson.loads(text)
    return {k: v for k, v in values.items() if k in NEUTRAL_SAMPLING and isinstance(v, int | float)}


def model_facts(info: sglang_scheduler_pb2.GetModelInfoResponse) -> ModelFacts:
    return ModelFacts(vocab_size=info.vocab_size, sampling_defaults=parse_sampling_defaults(info.default_sampling_params_json))


def check_input_ids(input_ids: Sequence[int], vocab_size: int) -> None:
    """Refuse ids outside the reported vocabulary: SGLang's gRPC path has no tokenizer
    manager to check them, and its scheduler process dies on one past the embedding
    (IndexError in `F.embedding`). 0 (not reported) checks nothing."""
    bad = next((t for t in input_ids if not 0 <= t < vocab_size), None) if vocab_size > 0 else None
    if bad is not None:
        raise InvalidGenerationRequest(
            f"token id {bad} in the prompt is outside the model's vocabulary [0, {vocab_size})", param="prompt"
        )


def _refuse_unsupported(s: SamplingParams) -> None:
    if s.seed is not None:
        raise InvalidGenerationRequest(
            "seed is not supported for SGLang gRPC workers (SGLang's scheduler protocol has no seed field); omit it",
            param="seed",
        )
    if s.prompt_logprobs is not None:
        raise InvalidGenerationRequest(
            "prompt_logprobs are not supported for SGLang gRPC workers; omit them", param="prompt_logprobs"
        )


def sampling_to_proto(s: SamplingParams, defaults: Mapping[str, float]) -> sglang_scheduler_pb2.SamplingParams:
    """The scheduler's sampling parameters: the five proto3 scalars whose zero is not
    neutral are always set (client, else model default, else SGLang's neutral value)."""
    _refuse_unsupported(s)

    def pick(name: str) -> float:
        value = getattr(s, name)
        if value is not None:
            return float(value)
        return float(defaults.get(name, NEUTRAL_SAMPLING[name]))

    msg = sglang_scheduler_pb2.SamplingParams(
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=int(pick("top_k")),
        min_p=pick("min_p"),
        repetition_penalty=pick("repetition_penalty"),
        frequency_penalty=s.frequency_penalty or 0.0,
        presence_penalty=s.presence_penalty or 0.0,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        skip_special_tokens=s.skip_special_tokens,
        spaces_between_special_tokens=s.spaces_between_special_tokens,
        min_new_tokens=s.min_tokens or 0,
        ignore_eos=s.ignore_eos,
        # SGLang keeps a matched stop string in the output only with no_stop_trim.
        no_stop_trim=s.include_stop_str_in_output,
        n=1,
        logit_bias={str(token): bias for token, bias in s.logit_bias.items()},
    )
    if s.max_tokens is not None:
        msg.max_new_tokens = s.max_tokens
    return msg


def generate_request(req: GenerationRequest, defaults: Mapping[str, float]) -> sglang_scheduler_pb2.GenerateRequest:
    if req.kv_transfer_params is not None:
        raise ApiError(
            501,
            "SGLang gRPC workers take P/D bootstrap fields, not kv_transfer_params: P/D over gRPC is not supported yet",
            code="not_implemented",
        )
    s = req.sampling
    return sglang_scheduler_pb2.GenerateRequest(
        request_id=req.request_id,
        tokenized=sglang_scheduler_pb2.TokenizedInput(original_text=req.text, input_ids=list(req.input_ids)),
        sampling_params=sampling_to_proto(s, defaults),
        return_logprob=s.logprobs is not None,
        logprob_start_len=-1,  # no prompt logprobs (0 would compute them from the first token)
        top_logprobs_num=s.logprobs or 0,
        stream=req.stream,
    )


# -- proto -> GenerationChunk ------------------------------------------------------------------


def logprobs_from_proto(msg: sglang_scheduler_pb2.OutputLogProbs) -> tuple[TokenLogprob, ...]:
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


def chunk_from_proto(msg: sglang_scheduler_pb2.GenerateStreamChunk, want_logprobs: bool) -> GenerationChunk:
    """A stream chunk: the new tokens and the counts."""
    return GenerationChunk(
        token_ids=tuple(msg.token_ids),
        prompt_tokens=msg.prompt_tokens,
        completion_tokens=msg.completion_tokens,
        cached_tokens=msg.cached_tokens,
        logprobs=logprobs_from_proto(msg.output_logprobs) if want_logprobs else None,
    )


def complete_from_proto(
    msg: sglang_scheduler_pb2.GenerateComplete, *, streamed: bool, want_logprobs: bool
) -> GenerationChunk:
    """The final message. In a stream it repeats the last chunk's tokens, so they are
    dropped there; a non-streamed answer's tokens and logprobs are all here."""
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


# -- the client ------------------------------------------------------------------------------


class SglangGrpcClient:
    """Calls on one worker's channel (the channel is the router's, shared by every request)."""

    def __init__(self, worker: Worker, channel: grpc.aio.Channel) -> None:
        self.worker = worker
        self._stub = sglang_scheduler_pb2_grpc.SglangSchedulerStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def health(self, timeout_secs: float) -> str:
        """"" when grpc.health.v1 says the scheduler service is SERVING (the servicer also
        reports a stalled scheduler as NOT_SERVING there), else a short reason (never raises)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout_secs)
        except grpc.aio.AioRpcError as err:
            return f"gRPC health of {self.worker.url}: {err.code().name}: {err.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"gRPC health of {self.worker.url}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return ""

    async def model_info(self, timeout_secs: float) -> sglang_scheduler_pb2.GetModelInfoResponse:
        return await self._stub.GetModelInfo(sglang_scheduler_pb2.GetModelInfoRequest(), timeout=timeout_secs)

    async def loads(self, timeout_secs: float) -> sglang_scheduler_pb2.GetLoadsResponse:
        return await self._stub.GetLoads(sglang_scheduler_pb2.GetLoadsRequest(include=["core"]), timeout=timeout_secs)

    def kv_events(self, start_sequence_number: int = 0) -> grpc.aio.UnaryStreamCall:
        return self._stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(start_sequence_number=start_sequence_number))

    async def abort(self, request_id: str) -> None:
        """Ask the scheduler to drop `request_id`; best effort (the engine may be gone)."""
        try:
            await self._stub.Abort(
                sglang_scheduler_pb2.AbortRequest(request_id=request_id, reason="the router's client went away"), timeout=5
            )
        except grpc.aio.AioRpcError as err:
            logger.info("abort failed", extra={"worker": self.worker.url, "reason": err.code().name})

    async def model_facts(self) -> ModelFacts:
        """What requests are checked and filled in with, read with `GetModelInfo` once per
        worker (kept in `worker.engine_info`, so `GET /workers` shows it)."""
        cached = self.worker.engine_info.get(MODEL_FACTS_KEY)
        if cached is None:
            try:
                info = await self.model_info(timeout_secs=10)
            except grpc.aio.AioRpcError as err:
                raise rpc_failure(self.worker, err) from None
            cached = dataclasses.asdict(model_facts(info))
            self.worker.engine_info[MODEL_FACTS_KEY] = cached
        return ModelFacts(**cached)

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's answer as chunks; the last has `finish_reason`.

        Raises `LegFailure` (worker down, retryable) or `ApiError` (the engine refused the
        request) from the first message on; closing the iterator before the end cancels
        the call and aborts the request on the engine.
        """
        facts = await self.model_facts()
        check_input_ids(req.input_ids, facts.vocab_size)
        message = generate_request(req, facts.sampling_defaults)
        call = self._stub.Generate(message)
        want_logprobs = req.sampling.logprobs is not None
        finished = False
        generated = 0  # counted here, as for vLLM: a stream's chunks each carry their delta
        try:
            async for msg in call:
                which = msg.WhichOneof("response")
                if which == "chunk":
                    chunk = chunk_from_proto(msg.chunk, want_logprobs)
                    generated += len(chunk.token_ids)
                    yield dataclasses.replace(chunk, completion_tokens=generated)
                elif which == "complete":
                    finished = True
                    done = complete_from_proto(msg.complete, streamed=req.stream, want_logprobs=want_logprobs)
                    yield dataclasses.replace(done, completion_tokens=generated) if req.stream else done
                    return
        except grpc.aio.AioRpcError as err:
            finished = True  # the engine ended the call itself
            raise rpc_failure(self.worker, err) from None
        finally:
            if not finished:
                call.cancel()
                await asyncio.shield(self.abort(req.request_id))
        raise LegFailure(self.worker, f"worker {self.worker.url} ended the stream without a final message")

