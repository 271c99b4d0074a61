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

import dataclasses
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

import grpc.aio
import orjson
from grpc_health.v1 import health_pb2_grpc
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2, sglang_scheduler_pb2_grpc

from router.adapters.grpc_generation import complete_from_proto, generation_chunks, health_reason, rpc_failure
from router.errors import ApiError, InvalidGenerationRequest
from router.generation.types import GenerationChunk, GenerationRequest, SamplingParams
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
        return await health_reason(self._health, SERVICE, self.worker.url, timeout_secs)

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

    def generate(self, req: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's answer as chunks (`grpc_generation.generation_chunks`: errors,
        cancellation and `Abort` there), after the prompt ids are checked against the
        model's vocabulary (the scheduler dies on an id outside it)."""

        async def start() -> grpc.aio.UnaryStreamCall:
            facts = await self.model_facts()
            check_input_ids(req.input_ids, facts.vocab_size)
            return self._stub.Generate(generate_request(req, facts.sampling_defaults))

        return generation_chunks(start, self.worker, req, complete_from_proto, self.abort)
