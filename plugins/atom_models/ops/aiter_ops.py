"""AITER (ROCm) implementations of the ops, same signatures as `torch_ops`.

Checked against amd-aiter 0.1.7.post2.dev18's API, never run (this machine has no ROCm
device): tests/models/test_aiter_api.py finds every `aiter` name this module uses in
that wheel's source and binds each call to the signature there. The calls:
`aiter.rms_norm`, `aiter.rmsnorm2d_fwd_with_add`, `aiter.rope_cached_positions_2c_fwd`,
`aiter.silu_and_mul`, `aiter.tuned_gemm.tgemm.mm`, `aiter.topk_softmax` and
`aiter.fused_moe.fused_moe`. This module is imported only when `selection.resolve`
picked AITER for at least one op, i.e. on a ROCm build of torch with a device and the
package installed.
"""

from __future__ import annotations

from functools import lru_cache

import aiter
import torch
from aiter import ActivationType, QuantType
from aiter.fused_moe import fused_moe as _aiter_fused_moe
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
    # AITER's "sbhd" layout with s = 1 and b = tokens, as vLLM calls it; positions [s, b],
    # int64 and unit-strided (the kernel reads them raw). The rotated width is
    # cos.shape[-1] * 2 (reuse_freqs_front_part); the kernel copies the dimensions past
    # it (partial rotary, nope_first=False).
    tokens = positions.numel()
    cos, sin = _cos_sin(cos_sin_cache)
    q_out, k_out = aiter.rope_cached_positions_2c_fwd(
        q.view(1, tokens, -1, head_dim),
        k.view(1, tokens, -1, head_dim),
        cos,
        sin,
        positions.to(torch.int64).contiguous().view(1, tokens),
        0 if is_neox else 1,  # rotate_style: 0 = neox, 1 = gptj
        reuse_freqs_front_part=True,
        nope_first=False,
    )
    return q_out.reshape(q.shape), k_out.reshape(k.shape)


@lru_cache(maxsize=8)
def _cos_sin(cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin as contiguous [max_pos, 1, 1, rotary_dim / 2], split once per cache.

    The kernel indexes them by position without strides, so the halves of
    `cos_sin_cache` (views with the full row stride) must be copied out.
    """
    cos, sin = cos_sin_cache.chunk(2, dim=-1)
    return cos.contiguous().view(cos.shape[0], 1, 1, -1), sin.contiguous().view(sin.shape[0], 1, 1, -1)


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
