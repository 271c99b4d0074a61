"""Portable torch implementations of every op the models need.

These run on any device torch supports (CPU here). Reductions are done in float32 even
for half-precision inputs, which is what keeps outputs close to the engines' own
kernels; each op is unit-tested against a float64 reference (tests/models/test_ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    xf = x.float()
    inv_rms = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * inv_rms).to(x.dtype) * weight


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm residual step of a decoder layer."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_dim: int,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k ([tokens, heads * head_dim]) by their positions.

    `cos_sin_cache[pos]` is `cos || sin`, each `rotary_dim / 2` wide; dimensions past
    `rotary_dim` pass through (partial rotary). Neox style rotates the pairs (i, i + d/2),
    GPT-J style the interleaved pairs (2i, 2i + 1).
    """
    cos, sin = cos_sin_cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    return _rotate(q, cos, sin, head_dim, is_neox), _rotate(k, cos, sin, head_dim, is_neox)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, is_neox: bool) -> torch.Tensor:
    shape = x.shape
    x = x.reshape(shape[0], -1, head_dim)
    rot_dim = cos.shape[-1] * 2
    rot, passthrough = x[..., :rot_dim], x[..., rot_dim:]
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    rotated = torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)
    return torch.cat((rotated, passthrough), dim=-1).reshape(shape)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where x = gate || up along the last dimension."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias): weight is [out_features, in_features], as in checkpoints."""
    return F.linear(x, weight, bias)


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax routing: (weights [tokens, top_k] float32, expert ids [tokens, top_k])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    """Routing plus SiLU-gated experts: sum_k w_k * W2[e_k] (silu(G[e_k] x) * U[e_k] x).

    `w13` is [experts, 2 * inter, hidden] (gate rows then up rows), `w2` is
    [experts, hidden, inter]. Tokens are grouped per expert so each expert runs one
    GEMM over exactly the tokens routed to it (no dense all-experts compute).
    """
    weights, ids = moe_route(router_logits, top_k, renormalize)
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = ids.flatten()
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()
    token_of = order // top_k
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        slots = order[start : start + n]
        tokens = token_of[start : start + n]
        start += n
        h = silu_and_mul(linear(x[tokens], w13[expert], None))
        y = linear(h, w2[expert], None)
        out.index_add_(0, tokens, y.float() * weights.flatten()[slots].unsqueeze(-1))
    return out.to(x.dtype)
