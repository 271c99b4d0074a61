"""Building blocks of the decoders, each a thin module over one op from `atom_models.ops`.

Modules bind their op implementation at construction (the op layer's choice is made
once per process). Parameters are created empty in the default dtype and device, as
engines build models under their own dtype/device context and then load weights.
Every parameter that is filled from several checkpoint tensors carries its row ranges
(`set_shard_offsets`), which `atom_models.weights` reads back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from atom_models import ops
from atom_models.engine import AttentionFactory, AttentionSpec
from atom_models.families import DecoderConfig, MoEConfig, RopeConfig

ShardOffsets = dict[str, tuple[int, int]]
# The attribute a fused parameter carries its ranges in (torch allows attributes on parameters).
_SHARDS_ATTR = "atom_shards"


def set_shard_offsets(param: nn.Parameter, offsets: ShardOffsets) -> None:
    """Name row ranges of a fused parameter (q/k/v, gate/up): the weight loader copies each
    checkpoint tensor into its range. Kept on the parameter so it travels with it."""
    setattr(param, _SHARDS_ATTR, offsets)


def shard_offsets(param: nn.Parameter) -> ShardOffsets:
    """The ranges `set_shard_offsets` gave `param` (empty for an unfused parameter)."""
    offsets: ShardOffsets = getattr(param, _SHARDS_ATTR, {})
    return offsets


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = _param(size)
        self.eps = eps
        self._norm = ops.get("rms_norm")
        self._add_norm = ops.get("fused_add_rms_norm")

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self._norm(x, self.weight, self.eps)
        return self._add_norm(x, residual, self.weight, self.eps)


class Linear(nn.Module):
    """y = x W^T + b. `shards` names consecutive row blocks (q/k/v, gate/up) fused into W."""

    def __init__(self, in_features: int, out_features: int, bias: bool, shards: dict[str, int] | None = None) -> None:
        super().__init__()
        self.weight = _param(out_features, in_features)
        self.bias = _param(out_features) if bias else None
        if shards:
            if sum(shards.values()) != out_features:
                raise ValueError(f"shards {shards} do not add up to {out_features} output features")
            offsets, start = {}, 0
            for name, size in shards.items():
                offsets[name] = (start, size)
                start += size
            for p in (self.weight, self.bias):
                if p is not None:
                    set_shard_offsets(p, offsets)
        self._linear = ops.get("linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = _param(vocab_size, hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


def rope_inv_freq(rope: RopeConfig, rotary_dim: int) -> torch.Tensor:
    """Inverse frequencies (float64 for an exact cache), with Llama 3 long-context scaling."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    if rope.rope_type == "llama3":
        s = dict(rope.scaling)
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and
        # the band between is interpolated smoothly.
        smooth = (old_len / wavelen - low) / (high - low) if high != low else torch.zeros_like(inv_freq)
        scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        slowed = torch.where(wavelen > old_len / low, inv_freq / factor, scaled)
        inv_freq = torch.where(wavelen < old_len / high, inv_freq, slowed)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Holds the cos||sin table; the rotation itself is the `rotary_embedding` op."""

    def __init__(self, head_dim: int, max_position: int, rope: RopeConfig, is_neox: bool = True) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.is_neox = is_neox
        rotary_dim = int(head_dim * rope.partial_rotary_factor)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), rope_inv_freq(rope, rotary_dim))
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(torch.float32)
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        self._rope = ops.get("rotary_embedding")

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rope(positions, q, k, self.cos_sin_cache, self.head_dim, self.is_neox)


class SelfAttention(nn.Module):
    """QKV projection, optional per-head q/k RMSNorm (Qwen3), RoPE, engine attention, output."""

    def __init__(self, cfg: DecoderConfig, layer_index: int, prefix: str, attention: AttentionFactory) -> None:
        super().__init__()
        d = cfg.head_dim
        self.q_size, self.kv_size, self.head_dim = cfg.num_heads * d, cfg.num_kv_heads * d, d
        self.qkv_proj = Linear(
            cfg.hidden_size,
            self.q_size + 2 * self.kv_size,
            cfg.attention_bias,
            shards={"q": self.q_size, "k": self.kv_size, "v": self.kv_size},
        )
        self.o_proj = Linear(self.q_size, cfg.hidden_size, cfg.o_proj_bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary_emb = RotaryEmbedding(d, cfg.max_position, cfg.rope)
        self.attn = attention(
            AttentionSpec(
                layer_index=layer_index,
                prefix=f"{prefix}.attn",
                num_heads=cfg.num_heads,
                num_kv_heads=cfg.num_kv_heads,
                head_dim=d,
                scale=d**-0.5,
            )
        )

    def forward(self, positions: torch.Tensor, x: torch.Tensor, **attn_ctx: object) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).reshape(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim)).reshape(k.shape)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, **attn_ctx))


class GatedMLP(nn.Module):
    """down(silu(gate x) * up x): the dense SwiGLU MLP."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.gate_up_proj = Linear(
            hidden_size, 2 * intermediate_size, bias, shards={"gate": intermediate_size, "up": intermediate_size}
        )
        self.down_proj = Linear(intermediate_size, hidden_size, bias)
        self._act = ops.get("silu_and_mul")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self._act(self.gate_up_proj(x)))


class Experts(nn.Module):
    """All experts' SwiGLU weights stacked: w13 [E, 2I, H] (gate then up), w2 [E, H, I]."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.w13 = _param(num_experts, 2 * intermediate_size, hidden_size)
        self.w2 = _param(num_experts, hidden_size, intermediate_size)
        set_shard_offsets(self.w13, {"gate": (0, intermediate_size), "up": (intermediate_size, intermediate_size)})


class SparseMoE(nn.Module):
    """Router (`gate`) plus experts, run by the `fused_moe` op."""

    def __init__(self, hidden_size: int, moe: MoEConfig) -> None:
        super().__init__()
        self.gate = Linear(hidden_size, moe.num_experts, bias=False)
        self.experts = Experts(moe.num_experts, hidden_size, moe.intermediate_size)
        self.top_k, self.renormalize = moe.top_k, moe.renormalize
        self._moe = ops.get("fused_moe")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._moe(x, self.gate(x), self.experts.w13, self.experts.w2, self.top_k, self.renormalize)
