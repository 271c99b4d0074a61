"""The model's generation_config.json sampling defaults, applied as vLLM's HTTP server
applies them (`get_diff_sampling_param`, then `to_sampling_params`/`get_max_tokens`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.errors import InvalidGenerationRequest
from router.generation.defaults import (
    NO_DEFAULTS,
    GenerationConfigError,
    SamplingDefaults,
    read_generation_config,
    sampling_defaults,
)
from router.generation.sampling import sampling_params
from router.tokenizer import HFTokenizer

MODEL_DEFAULTS = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.9,
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.3,
    "frequency_penalty": 0.2,
    "max_new_tokens": 40,
    "typical_p": 0.5,  # not one vLLM reads
}


def _config_dir(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    return tmp_path


def test_reads_the_keys_vllm_reads(tmp_path: Path) -> None:
    d = read_generation_config(_config_dir(tmp_path, MODEL_DEFAULTS) / "generation_config.json")
    assert d.values == {
        "repetition_penalty": 1.1,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.9,
        "min_p": 0.05,
    }
    assert isinstance(d.values["top_k"], int)
    assert d.max_tokens == 40


def test_unset_fields_take_the_defaults_set_ones_win(tmp_path: Path) -> None:
    defaults = sampling_defaults("auto", _config_dir(tmp_path, MODEL_DEFAULTS))
    chat = sampling_params({"messages": [], "temperature": 0, "top_k": -1}, chat=True, defaults=defaults)
    assert (chat.temperature, chat.top_k) == (0.0, -1)
    assert (chat.top_p, chat.min_p, chat.repetition_penalty) == (0.9, 0.05, 1.1)
    assert (chat.presence_penalty, chat.frequency_penalty) == (0.3, 0.2)
    assert chat.max_tokens == 40  # chat without max_tokens: the model's max_new_tokens
    assert sampling_params({"messages": [], "max_tokens": 7}, chat=True, defaults=defaults).max_tokens == 7
    # completions have their own default of 16 unless the client sends null
    assert sampling_params({"prompt": "x"}, chat=False, defaults=defaults).max_tokens == 16
    assert sampling_params({"prompt": "x", "max_tokens": None}, chat=False, defaults=defaults).max_tokens == 40


def test_a_model_without_sampling_defaults_changes_nothing(tmp_path: Path) -> None:
    defaults = sampling_defaults("auto", _config_dir(tmp_path, {"bos_token_id": 0, "eos_token_id": 1}))
    assert defaults == NO_DEFAULTS
    assert sampling_defaults("auto", tmp_path / "missing") == NO_DEFAULTS
    assert sampling_defaults("auto", None) == NO_DEFAULTS


def test_vllm_and_a_directory(tmp_path: Path) -> None:
    model = _config_dir(tmp_path, MODEL_DEFAULTS)
    assert sampling_defaults("vllm", model) == NO_DEFAULTS
    other = tmp_path / "other"
    other.mkdir()
    _config_dir(other, {"temperature": 0.0})
    assert sampling_defaults(str(other), model) == SamplingDefaults({"temperature": 0.0})
    with pytest.raises(GenerationConfigError, match="no generation_config.json"):
        sampling_defaults(str(tmp_path / "nowhere"), model)


def test_a_bad_value_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GenerationConfigError, match="temperature must be a number"):
        sampling_defaults("auto", _config_dir(tmp_path, {"temperature": "hot"}))
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(GenerationConfigError, match="cannot read"):
        sampling_defaults("auto", tmp_path)


def test_a_default_out_of_range_is_checked_like_a_request_value() -> None:
    defaults = SamplingDefaults({"temperature": 3.0})
    with pytest.raises(InvalidGenerationRequest, match="temperature must be in"):
        sampling_params({"messages": []}, chat=True, defaults=defaults)


def test_the_tokenizer_carries_its_models_defaults(tiny_llama: Path, tmp_path: Path) -> None:
    assert HFTokenizer(tiny_llama).sampling_defaults == NO_DEFAULTS  # the tiny model sets none
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    _config_dir(model, {"temperature": 0.25})
    assert HFTokenizer(model).sampling_defaults.values == {"temperature": 0.25}
    assert HFTokenizer(model, generation_config="vllm").sampling_defaults == NO_DEFAULTS
    with pytest.raises(RuntimeError, match="no generation_config.json"):
        HFTokenizer(model, generation_config=str(tmp_path / "none"))
