"""The transport-neutral boundary between router-side processing and a token-level engine.

Processing (`router.generation`: tokenize, render the chat template, map sampling
parameters; detokenize and render OpenAI answers) produces a `GenerationRequest` and
consumes `GenerationChunk`s. A transport (gRPC to vLLM's `VllmEngine`, SGLang's scheduler
service) turns those into its wire messages and back, and knows nothing of OpenAI.
Field meanings follow `smg_grpc_proto`'s `vllm_engine.proto` (SamplingParams,
GenerateStreamChunk / GenerateComplete), which both engines' protocols can carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """What the engine samples with. None means the engine's default (vLLM: the model's
    generation_config.json); the router sets only what the client asked for."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    # The engine stops on these (vLLM detokenizes to find them); the router still holds
    # back streamed text that may become one, since tokens arrive before the match.
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    seed: int | None = None
    # Top alternatives per output token (0: only the sampled token's logprob); None: no logprobs.
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation on one engine (one P/D leg, or a whole co-located request)."""

    request_id: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams
    stream: bool
    # The prompt text, for the engine's logs only (the ids are what it runs).
    text: str = ""
    # Connector parameters for a P/D leg (vLLM's kv_transfer_params, as JSON-able data).
    kv_transfer_params: dict[str, Any] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One output position: the sampled token's logprob and the top alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """What the engine sent since the last chunk. In a stream, every chunk carries the new
    tokens and the running counts; the last has `finish_reason` set. A non-streamed answer
    is one chunk with every token and `finish_reason`."""

    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    # One per token in `token_ids` when logprobs were asked for, else None.
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    # The stop token id or stop string that ended the answer (finish_reason "stop").
    matched_stop: int | str | None = None
    # What a prefill leg hands the decode leg (vLLM's kv_transfer_params).
    kv_transfer_params: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
