"""An OpenAI chat/completions body -> the `SamplingParams` a token-level engine runs.

Semantics follow vLLM's OpenAI server (`ChatCompletionRequest.to_sampling_params`,
`CompletionRequest.to_sampling_params`, `SamplingParams._verify_args`), so a request
gives the same answer through the router's gRPC path as through vLLM's HTTP server:
unset fields are filled from the model's generation_config.json (`SamplingDefaults`,
router.generation.defaults: vLLM's gRPC servicer does not apply them) or stay None,
a completion without `max_tokens` gets vLLM's 16, chat's `max_completion_tokens` wins
over `max_tokens`, chat logprobs are `logprobs: true` plus `top_logprobs`, completions
logprobs an integer. Range errors use vLLM's wording.

Features this path does not run (n > 1, beam search, echo, structured outputs) are
refused with a 400 that says so, never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from router.errors import InvalidGenerationRequest
from router.generation.defaults import NO_DEFAULTS, SamplingDefaults
from router.generation.types import SamplingParams

# OpenAI's own bound on alternatives per token; vLLM's default --max-logprobs is 20 too.
MAX_LOGPROBS = 20
# vLLM's CompletionRequest.max_tokens when the body has none (chat has no such default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def _bad(message: str, param: str) -> InvalidGenerationRequest:
    return InvalidGenerationRequest(message, param=param)


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be a number, got {value!r}.", name)
    if not math.isfinite(value):
        raise _bad(f"{name} must be a finite number, got {value}.", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"`{name}` must be an integer.", name)
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"`{name}` must be a boolean.", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop must be a string or a list of strings.", "stop")
    if any(s == "" for s in stops):
        raise _bad("stop cannot contain an empty string.", "stop")
    return tuple(stops)


def _stop_token_ids(body: Mapping[str, Any]) -> tuple[int, ...]:
    value = body.get("stop_token_ids")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _bad(f"stop_token_ids must contain only integers, got {value}.", "stop_token_ids")
    return tuple(value)


def _logit_bias(body: Mapping[str, Any]) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad("logit_bias must be an object of token id -> bias.", "logit_bias")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad(f"logit_bias keys must be token ids, got {key!r}.", "logit_bias") from None
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise _bad(f"logit_bias values must be numbers in [-100, 100], got {bias!r}.", "logit_bias")
        out[token] = float(bias)
    return out


def _refuse_unsupported(body: Mapping[str, Any], *, chat: bool) -> None:
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise _bad(f"n={n} is not supported by the router's token-level path yet; send n=1 (or omit it).", "n")
    best_of = _integer(body, "best_of")
    if best_of is not None and best_of != 1:
        raise _bad(f"best_of={best_of} is not supported by the router's token-level path; omit it.", "best_of")
    if body.get("use_beam_search"):
        raise _bad("beam search is not supported by the router's token-level path.", "use_beam_search")
    if not chat and body.get("echo"):
        raise _bad("echo is not supported by the router's token-level path.", "echo")
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text"):
        raise _bad("structured outputs (response_format) are not supported by the router's token-level path.", "response_format")
    for name in ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar"):
        if body.get(name) is not None:
            raise _bad(f"{name} is not supported by the router's token-level path.", name)


def _verify_ranges(p: SamplingParams) -> None:
    """vLLM's `SamplingParams._verify_args` checks, in its words."""
    if p.presence_penalty is not None and not -2.0 <= p.presence_penalty <= 2.0:
        raise _bad(f"presence_penalty must be in [-2, 2], got {p.presence_penalty}.", "presence_penalty")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise _bad(f"frequency_penalty must be in [-2, 2], got {p.frequency_penalty}.", "frequency_penalty")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0.0:
        raise _bad(f"repetition_penalty must be greater than zero, got {p.repetition_penalty}.", "repetition_penalty")
    if p.temperature is not None and not 0.0 <= p.temperature <= 2.0:
        raise _bad(f"temperature must be in [0, 2], got {p.temperature}.", "temperature")
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
        raise _bad(f"top_p must be in (0, 1], got {p.top_p}.", "top_p")
    if p.top_k is not None and p.top_k < -1:
        raise _bad(f"top_k must be 0 (disable), or at least 1, got {p.top_k}.", "top_k")
    if p.min_p is not None and not 0.0 <= p.min_p <= 1.0:
        raise _bad(f"min_p must be in [0, 1], got {p.min_p}.", "min_p")
    if p.max_tokens is not None and p.max_tokens < 1:
        raise _bad(f"max_tokens must be at least 1, got {p.max_tokens}.", "max_tokens")
    if p.min_tokens is not None:
        if p.min_tokens < 0:
            raise _bad(f"min_tokens must be greater than or equal to 0, got {p.min_tokens}.", "min_tokens")
        if p.max_tokens is not None and p.min_tokens > p.max_tokens:
            raise _bad(
                f"min_tokens must be less than or equal to max_tokens={p.max_tokens}, got {p.min_tokens}.",
                "min_tokens",
            )


def _logprobs_count(value: int | None, name: str) -> int | None:
    """-1 means every token (vLLM); otherwise 0..MAX_LOGPROBS."""
    if value is None or value == -1:
        return value
    if not 0 <= value <= MAX_LOGPROBS:
        raise _bad(f"`{name}` must be between 0 and {MAX_LOGPROBS} (or -1), got {value}.", name)
    return value


def _chat_logprobs(body: Mapping[str, Any]) -> int | None:
    wanted = _flag(body, "logprobs", False)
    top = _integer(body, "top_logprobs")
    if top is not None and top < -1:
        raise _bad("`top_logprobs` must be a positive value or -1.", "top_logprobs")
    if top and not wanted:
        raise _bad("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    return _logprobs_count(top or 0, "top_logprobs") if wanted else None


def _prompt_logprobs(body: Mapping[str, Any], stream: bool) -> int | None:
    value = _integer(body, "prompt_logprobs")
    if value is None:
        return None
    if stream:
        raise _bad("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    if value < -1:
        raise _bad("`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs")
    return _logprobs_count(value, "prompt_logprobs")


def sampling_params(
    body: Mapping[str, Any], *, chat: bool, defaults: SamplingDefaults = NO_DEFAULTS
) -> SamplingParams:
    """The engine's sampling parameters for a chat (`chat=True`) or completions body,
    unset fields filled from the model's `defaults` (as vLLM's server fills them).

    Raises `InvalidGenerationRequest` (400) for a bad value or an unsupported feature."""
    _refuse_unsupported(body, chat=chat)
    stream = _flag(body, "stream", False)
    if body.get("stream_options") is not None and not stream:
        raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    if chat:
        max_tokens = _integer(body, "max_completion_tokens") or _integer(body, "max_tokens")
        logprobs = _chat_logprobs(body)
    else:
        # An absent max_tokens is 16 (vLLM's); an explicit null falls to the defaults.
        max_tokens = _integer(body, "max_tokens") if "max_tokens" in body else COMPLETIONS_DEFAULT_MAX_TOKENS
        raw = _integer(body, "logprobs")
        if raw is not None and raw < -1:
            raise _bad(f"logprobs must be non-negative or -1, got {raw}.", "logprobs")
        logprobs = _logprobs_count(raw, "logprobs")
    params = SamplingParams(
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=_integer(body, "top_k"),
        min_p=_number(body, "min_p"),
        frequency_penalty=_number(body, "frequency_penalty"),
        presence_penalty=_number(body, "presence_penalty"),
        repetition_penalty=_number(body, "repetition_penalty"),
        max_tokens=max_tokens,
        min_tokens=_integer(body, "min_tokens"),
        stop=_stop(body),
        stop_token_ids=_stop_token_ids(body),
        include_stop_str_in_output=_flag(body, "include_stop_str_in_output", False),
        ignore_eos=_flag(body, "ignore_eos", False),
        skip_special_tokens=_flag(body, "skip_special_tokens", True),
        spaces_between_special_tokens=_flag(body, "spaces_between_special_tokens", True),
        seed=_integer(body, "seed"),
        logprobs=logprobs,
        prompt_logprobs=_prompt_logprobs(body, stream),
        logit_bias=_logit_bias(body),
    )
    params = defaults.apply(params)
    _verify_ranges(params)
    return params
