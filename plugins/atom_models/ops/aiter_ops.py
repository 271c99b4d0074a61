"""AITER (ROCm) implementations of the ops, same signatures as `torch_ops`.

UNVERIFIED HERE: this machine has no ROCm device, so these calls are written against
AITER's public API (ROCm/aiter: `aiter.rms_norm`, `aiter.rmsnorm2d_fwd_with_add`,
`aiter.silu_and_mul`, `aiter.tuned_gemm.tgemm`, `aiter.topk_softmax`,
`aiter.fused_moe.fused_moe`, `aiter.ops.triton.rope.rope.rope_cached_thd_positions_2c_fwd`) and never
executed. This module is imported only when `selection.resolve` picked AITER for at
least one op, i.e. on a ROCm build of torch with a device and the package installed.
"""

from __future__ import annotations

import aiter
import torch
from aiter import ActivationType, QuantType
from aiter.fused_moe import fused_moe as _aiter_fused_moe
from aiter.ops.triton.rope.rope import rope_cached_thd_positions_2c_fwd
from aiter.tuned_gemm import tgemm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    shape = x.shape
    return aiter.rms_norm(x.reshape(-1, shape[-1]).contiguous(), weight, eps).reshape(shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    out = torch.empty_like(x)
    residual_out = torch.empty_like(x)
    aiter.rmsnorm2d_fwd_with_add(out, x, residual.contiguous(), residual_out, weight, eps)
    return out, residual_out


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_dim: int,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos_sin_cache.chunk(2, dim=-1)
    rot_dim = cos.shape[-1] * 2
    q3 = q.view(q.shape[0], -1, head_dim)
    k3 = k.view(k.shape[0], -1, head_dim)
    q_rot, k_rot = rope_cached_thd_positions_2c_fwd(
        q3[..., :rot_dim],
        k3[..., :rot_dim],
        cos,
        sin,
        positions.flatten(),
        0 if is_neox else 1,  # rotate_style: 0 = neox, 1 = gptj
        reuse_freqs_front_part=True,
        nope_first=False,
    )
    q_out = torch.cat((q_rot, q3[..., rot_dim:]), dim=-1)
    k_out = torch.cat((k_rot, k3[..., rot_dim:]), dim=-1)
    return q_out.flatten(1), k_out.flatten(1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
    aiter.silu_and_mul(out, x.contiguous())
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return tgemm.mm(x, weight, bias)


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    tokens = x.shape[0]
    topk_weights = torch.empty(tokens, top_k, dtype=torch.float32, device=x.device)
    topk_ids = torch.empty(tokens, top_k, dtype=torch.int32, device=x.device)
    token_expert_indices = torch.empty(tokens, top_k, dtype=torch.int32, device=x.device)
    aiter.topk_softmax(topk_weights, topk_ids, token_expert_indices, router_logits.float(), renormalize)
    return _aiter_fused_moe(
        x,
        w13,
        w2,
        topk_weights,
        topk_ids,
        activation=ActivationType.Silu,
        quant_type=QuantType.No,
    )
