"""OpenAI bodies -> SamplingParams, with vLLM's semantics and its error wording."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from router.errors import ApiError, InvalidGenerationRequest
from router.generation.sampling import sampling_params
from router.generation.types import SamplingParams


def test_unset_fields_stay_engine_defaults() -> None:
    assert sampling_params({"messages": []}, chat=True) == SamplingParams()
    # vLLM's CompletionRequest: max_tokens 16 when absent, the defaults' when null
    assert sampling_params({"prompt": "x"}, chat=False) == SamplingParams(max_tokens=16)
    assert sampling_params({"prompt": "x", "max_tokens": None}, chat=False) == SamplingParams()


def test_every_mapped_field() -> None:
    body = {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "repetition_penalty": 1.1,
        "max_tokens": 64,
        "min_tokens": 2,
        "stop": ["\n\n", "END"],
        "stop_token_ids": [7, 9],
        "include_stop_str_in_output": True,
        "ignore_eos": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "seed": 1234,
        "logprobs": 3,
        "prompt_logprobs": 1,
        "logit_bias": {"5": -100, "8": 2.5},
    }
    p = sampling_params(body, chat=False)
    assert p == SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        repetition_penalty=1.1,
        max_tokens=64,
        min_tokens=2,
        stop=("\n\n", "END"),
        stop_token_ids=(7, 9),
        include_stop_str_in_output=True,
        ignore_eos=True,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        seed=1234,
        logprobs=3,
        prompt_logprobs=1,
        logit_bias={5: -100.0, 8: 2.5},
    )


def test_a_single_stop_string_is_a_list_of_one() -> None:
    assert sampling_params({"stop": "###"}, chat=True).stop == ("###",)


def test_chat_max_completion_tokens_wins_over_max_tokens() -> None:
    assert sampling_params({"max_tokens": 10, "max_completion_tokens": 5}, chat=True).max_tokens == 5
    assert sampling_params({"max_tokens": 10}, chat=True).max_tokens == 10
    # completions have no max_completion_tokens
    assert sampling_params({"max_tokens": 10, "max_completion_tokens": 5}, chat=False).max_tokens == 10


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": 5}, 5),
        ({"logprobs": False}, None),
        ({"logprobs": False, "top_logprobs": 0}, None),
        ({}, None),
    ],
)
def test_chat_logprobs_are_a_flag_plus_top_logprobs(body: dict[str, Any], expected: int | None) -> None:
    assert sampling_params(body, chat=True).logprobs == expected


@pytest.mark.parametrize(
    ("body", "chat", "param", "message"),
    [
        ({"n": 2}, True, "n", "n=2 is not supported"),
        ({"best_of": 3}, False, "best_of", "best_of=3"),
        ({"use_beam_search": True}, True, "use_beam_search", "beam search"),
        ({"echo": True}, False, "echo", "echo"),
        ({"response_format": {"type": "json_object"}}, True, "response_format", "structured outputs"),
        ({"top_logprobs": 2}, True, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"logprobs": True, "top_logprobs": 21}, True, "top_logprobs", "between 0 and 20"),
        ({"logprobs": -2}, False, "logprobs", "logprobs must be non-negative or -1, got -2."),
        ({"logprobs": True}, False, "logprobs", "`logprobs` must be an integer."),
        ({"temperature": 2.5}, True, "temperature", "temperature must be in [0, 2], got 2.5."),
        ({"temperature": "hot"}, True, "temperature", "temperature must be a number"),
        ({"top_p": 0}, True, "top_p", "top_p must be in (0, 1], got 0.0."),
        ({"top_k": -2}, True, "top_k", "top_k must be 0 (disable), or at least 1, got -2."),
        ({"top_k": 1.5}, True, "top_k", "`top_k` must be an integer."),
        ({"min_p": 1.5}, True, "min_p", "min_p must be in [0, 1]"),
        ({"presence_penalty": 3}, True, "presence_penalty", "presence_penalty must be in [-2, 2], got 3.0."),
        ({"frequency_penalty": -3}, True, "frequency_penalty", "frequency_penalty must be in [-2, 2]"),
        ({"repetition_penalty": 0}, True, "repetition_penalty", "repetition_penalty must be greater than zero"),
        ({"max_tokens": 0}, False, "max_tokens", "max_tokens must be at least 1, got 0."),
        ({"max_tokens": 4, "min_tokens": 5}, False, "min_tokens", "min_tokens must be less than or equal to max_tokens=4"),
        ({"stop": ["a", ""]}, True, "stop", "stop cannot contain an empty string."),
        ({"stop": [1]}, True, "stop", "stop must be a string or a list of strings."),
        ({"stop_token_ids": ["x"]}, True, "stop_token_ids", "stop_token_ids must contain only integers"),
        ({"ignore_eos": "yes"}, True, "ignore_eos", "`ignore_eos` must be a boolean."),
        ({"seed": True}, True, "seed", "`seed` must be an integer."),
        ({"prompt_logprobs": 1, "stream": True}, False, "prompt_logprobs", "not available when `stream=True`"),
        ({"stream_options": {"include_usage": True}}, True, "stream_options", "only be defined when `stream=True`"),
        ({"logit_bias": {"a": 1}}, True, "logit_bias", "logit_bias keys must be token ids"),
        ({"logit_bias": {"1": 101}}, True, "logit_bias", "in [-100, 100]"),
    ],
)
def test_bad_values_are_400s_that_name_the_field(body: dict[str, Any], chat: bool, param: str, message: str) -> None:
    with pytest.raises(InvalidGenerationRequest) as info:
        sampling_params(body, chat=chat)
    err = info.value
    assert isinstance(err, ApiError)
    assert err.status == 400
    assert err.param == param
    assert message in err.message
    assert err.payload()["error"]["type"] == "invalid_request_error"


def test_n_of_one_is_accepted() -> None:
    assert sampling_params({"n": 1}, chat=True) == SamplingParams()


_FIELDS = (
    "temperature top_p top_k min_p frequency_penalty presence_penalty repetition_penalty max_tokens min_tokens "
    "stop stop_token_ids include_stop_str_in_output ignore_eos skip_special_tokens spaces_between_special_tokens "
    "seed logprobs prompt_logprobs logit_bias"
).split()


def _comparable(params: Any) -> dict[str, Any]:
    out = {}
    for name in _FIELDS:
        value = getattr(params, name)
        if isinstance(value, (list, tuple)):
            value = tuple(value)
        out[name] = dict(value) if isinstance(value, Mapping) else value
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "chat"),
    [
        (
            {
                "temperature": 0.3,
                "top_p": 0.8,
                "top_k": 5,
                "min_p": 0.1,
                "max_completion_tokens": 9,
                "max_tokens": 20,
                "stop": "x",
                "stop_token_ids": [3],
                "seed": 4,
                "logprobs": True,
                "top_logprobs": 3,
                "ignore_eos": True,
                "frequency_penalty": 0.2,
                "presence_penalty": 0.1,
                "repetition_penalty": 1.2,
                "min_tokens": 1,
                "include_stop_str_in_output": True,
                "skip_special_tokens": False,
                "logit_bias": {"7": 5},
            },
            True,
        ),
        ({"logprobs": True}, True),
        (
            {
                "temperature": 0,
                "max_tokens": 16,
                "logprobs": 2,
                "stop": ["a", "bc"],
                "prompt_logprobs": 1,
                "spaces_between_special_tokens": False,
            },
            False,
        ),
    ],
)
def test_set_fields_equal_vllms_own_mapping(body: dict[str, Any], chat: bool) -> None:
    """Every field the client set maps as vLLM's server maps it (vLLM fills the unset ones
    with its defaults; the router leaves those to the engine)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    full = {"model": "m", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    request = (ChatCompletionRequest if chat else CompletionRequest).model_validate({**full, **body})
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 100
    theirs = _comparable(request.to_sampling_params(max_tokens, {}))
    ours = _comparable(sampling_params(body, chat=chat))
    set_here = {
        k: v
        for k, v in ours.items()
        if v is not None and v not in ((), {}) and (k in body or k == "max_tokens" or k == "logprobs")
    }
    assert set_here, "the case sets fields"
    assert set_here == {k: theirs[k] for k in set_here}
