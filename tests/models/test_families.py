"""HF config -> DecoderConfig translation, RoPE tables and checkpoint name mapping."""

from __future__ import annotations

import pytest
import torch
import transformers
from atom_models.families import (
    ARCHITECTURES,
    RopeConfig,
    UnsupportedConfigError,
    family_for_architecture,
    llama_config,
    qwen3_config,
    qwen3_moe_config,
)
from atom_models.layers import rope_inv_freq
from atom_models.weights import map_hf_name


def test_llama_config_translation() -> None:
    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512)
    cfg = llama_config(hf)
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.qk_norm, cfg.moe) == (64, 2, False, None)
    assert cfg.rope.theta == hf.rope_parameters["rope_theta"]


def test_qwen3_has_qk_norm_and_qwen3_moe_sparse_layers() -> None:
    assert qwen3_config(transformers.Qwen3Config(num_hidden_layers=2)).qk_norm
    hf = transformers.Qwen3MoeConfig(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3], num_experts=8)
    moe = qwen3_moe_config(hf).moe
    assert moe is not None and moe.sparse_layers == frozenset({1, 5})
    assert (moe.num_experts, moe.top_k) == (8, hf.num_experts_per_tok)


def test_unsupported_rope_and_architecture_are_clear_errors() -> None:
    hf = transformers.LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedConfigError, match="yarn"):
        llama_config(hf)
    with pytest.raises(UnsupportedConfigError, match="supported: LlamaForCausalLM"):
        family_for_architecture("GPT2LMHeadModel")


def test_atom_and_hf_names_resolve_to_the_same_family() -> None:
    for family in ARCHITECTURES.values():
        assert family_for_architecture(family.atom_architecture) is family
        assert family.atom_architecture == "Atom" + family.hf_architecture


def test_llama3_rope_scaling_matches_transformers() -> None:
    """An independent reference: transformers' own llama3 frequency init."""
    params = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf = transformers.LlamaConfig(hidden_size=512, num_attention_heads=4, rope_parameters=params)
    cfg = llama_config(hf)
    expected, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    torch.testing.assert_close(rope_inv_freq(cfg.rope, 128).float(), expected.float(), rtol=1e-6, atol=0)


def test_default_rope_frequencies() -> None:
    inv = rope_inv_freq(RopeConfig(theta=10000.0), 8)
    torch.testing.assert_close(inv, torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.k_proj.weight", ("model.layers.0.self_attn.qkv_proj.weight", "k")),
        ("model.layers.0.self_attn.q_proj.bias", ("model.layers.0.self_attn.qkv_proj.bias", "q")),
        ("model.layers.1.mlp.up_proj.weight", ("model.layers.1.mlp.gate_up_proj.weight", "up")),
        ("model.layers.2.mlp.experts.5.gate_proj.weight", ("model.layers.2.mlp.experts.w13", (5, "gate"))),
        ("model.layers.2.mlp.experts.5.down_proj.weight", ("model.layers.2.mlp.experts.w2", (5, ""))),
        ("model.layers.2.mlp.experts.gate_up_proj", ("model.layers.2.mlp.experts.w13", None)),
        ("model.layers.2.mlp.gate.weight", ("model.layers.2.mlp.gate.weight", None)),
        ("model.norm.weight", ("model.norm.weight", None)),
    ],
)
def test_map_hf_name(name: str, expected: tuple) -> None:
    assert map_hf_name(name) == expected
