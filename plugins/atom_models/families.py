"""Model families: Hugging Face config -> one engine-neutral `DecoderConfig`.

Llama, Qwen3 and Qwen3-MoE are all pre-norm decoders that differ in a few switches
(per-head q/k RMSNorm, sparse MoE MLPs, tied embeddings), so one decoder implementation
(`atom_models.model`) serves them all and each family is only a config translation.
Pure (no torch import): the engine plugins read `ARCHITECTURES` at registration time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UnsupportedConfigError(ValueError):
    """The checkpoint uses a feature our implementation does not have."""


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    intermediate_size: int
    renormalize: bool
    sparse_layers: frozenset[int]


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str = "default"
    # llama3 scaling: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    scaling: tuple[tuple[str, float], ...] = ()
    partial_rotary_factor: float = 1.0


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_position: int
    rope: RopeConfig
    attention_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    moe: MoEConfig | None = None


@dataclass(frozen=True)
class Family:
    """One supported family: its HF architecture, our architecture name, its translator."""

    hf_architecture: str
    atom_architecture: str
    to_config: Callable[[Any], DecoderConfig]


_SUPPORTED_ROPE = ("default", "llama3")


def _rope(hf: Any, default_theta: float) -> RopeConfig:
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in _SUPPORTED_ROPE:
        raise UnsupportedConfigError(
            f"rope_type {rope_type!r} is not implemented by the ATOM model runner "
            f"(supported: {', '.join(_SUPPORTED_ROPE)}); run this model with the engine's built-in implementation"
        )
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None)) or default_theta
    scaling_keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    scaling = tuple((key, float(params[key])) for key in scaling_keys if rope_type == "llama3")
    partial = params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", 1.0)) or 1.0
    return RopeConfig(theta=float(theta), rope_type=rope_type, scaling=scaling, partial_rotary_factor=float(partial))


def _common(hf: Any, default_theta: float) -> dict[str, Any]:
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise UnsupportedConfigError(f"hidden_act {hf.hidden_act!r} is not supported (only silu)")
    if "sliding_attention" in (getattr(hf, "layer_types", None) or ()):
        raise UnsupportedConfigError("sliding-window attention layers are not supported by the ATOM model runner")
    num_heads = hf.num_attention_heads
    return dict(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // num_heads,
        intermediate_size=hf.intermediate_size,
        rms_norm_eps=hf.rms_norm_eps,
        max_position=getattr(hf, "max_position_embeddings", 8192),
        rope=_rope(hf, default_theta),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
    )


def llama_config(hf: Any) -> DecoderConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    return DecoderConfig(
        **_common(hf, default_theta=10000.0),
        attention_bias=bias,
        o_proj_bias=bias,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
    )


def qwen3_config(hf: Any) -> DecoderConfig:
    return DecoderConfig(
        **_common(hf, default_theta=1_000_000.0),
        attention_bias=bool(getattr(hf, "attention_bias", False)),
        qk_norm=True,
    )


def qwen3_moe_config(hf: Any) -> DecoderConfig:
    step = getattr(hf, "decoder_sparse_step", 1) or 1
    mlp_only = set(getattr(hf, "mlp_only_layers", None) or ())
    sparse = frozenset(
        i
        for i in range(hf.num_hidden_layers)
        if i not in mlp_only and hf.num_experts > 0 and (i + 1) % step == 0
    )
    moe = MoEConfig(
        num_experts=hf.num_experts,
        top_k=hf.num_experts_per_tok,
        intermediate_size=hf.moe_intermediate_size,
        renormalize=bool(getattr(hf, "norm_topk_prob", True)),
        sparse_layers=sparse,
    )
    return DecoderConfig(
        **_common(hf, default_theta=1_000_000.0),
        attention_bias=bool(getattr(hf, "attention_bias", False)),
        qk_norm=True,
        moe=moe,
    )


ARCHITECTURES: dict[str, Family] = {
    f.hf_architecture: f
    for f in (
        Family("LlamaForCausalLM", "AtomLlamaForCausalLM", llama_config),
        Family("Qwen3ForCausalLM", "AtomQwen3ForCausalLM", qwen3_config),
        Family("Qwen3MoeForCausalLM", "AtomQwen3MoeForCausalLM", qwen3_moe_config),
    )
}


def family_for_architecture(name: str) -> Family:
    """The family for an HF or Atom architecture name; a clear error for others."""
    for family in ARCHITECTURES.values():
        if name in (family.hf_architecture, family.atom_architecture):
            return family
    known = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedConfigError(f"architecture {name!r} has no ATOM implementation; supported: {known}")
