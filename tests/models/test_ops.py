"""Each torch op of the ATOM op layer against a float64 reference on random inputs.

References are written independently of the ops (explicit per-token loops, complex
rotation for RoPE, dense per-token expert sums for MoE) so a shared mistake cannot hide.
Ops run in float32; the tolerance is float32 round-off, far below any real bug.
"""

from __future__ import annotations

import math

import pytest
import torch
from atom_models.ops import torch_ops

ATOL = 2e-5
RTOL = 1e-5


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected, atol=ATOL, rtol=RTOL)


def _ref_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        rms = math.sqrt(sum(v * v for v in x[i].tolist()) / x.shape[1] + eps)
        out[i] = x[i] / rms * w
    return out


def test_rms_norm(gen: torch.Generator) -> None:
    x, w = _randn(gen, 7, 96, scale=3.0), _randn(gen, 96)
    _close(torch_ops.rms_norm(x.float(), w.float(), 1e-6), _ref_rms_norm(x, w, 1e-6))


def test_rms_norm_keeps_leading_dims(gen: torch.Generator) -> None:
    """Qwen3 normalizes per head: [tokens, heads, head_dim] must work like flattened rows."""
    x, w = _randn(gen, 5, 3, 64), _randn(gen, 64)
    expected = _ref_rms_norm(x.reshape(-1, 64), w, 1e-5).reshape(5, 3, 64)
    _close(torch_ops.rms_norm(x.float(), w.float(), 1e-5), expected)


def test_fused_add_rms_norm(gen: torch.Generator) -> None:
    x, res, w = _randn(gen, 6, 128), _randn(gen, 6, 128), _randn(gen, 128)
    out, new_res = torch_ops.fused_add_rms_norm(x.float(), res.float(), w.float(), 1e-5)
    _close(new_res, x + res)
    _close(out, _ref_rms_norm(x + res, w, 1e-5))


def _ref_rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, head_dim: int, neox: bool) -> torch.Tensor:
    """Rotate each pair as a complex number z * e^{i pos f}."""
    tokens = x.shape[0]
    heads = x.reshape(tokens, -1, head_dim).clone()
    half = inv_freq.shape[0]
    for t in range(tokens):
        for j in range(half):
            angle = pos[t].item() * inv_freq[j].item()
            rot = complex(math.cos(angle), math.sin(angle))
            a, b = (j, j + half) if neox else (2 * j, 2 * j + 1)
            for h in range(heads.shape[1]):
                z = complex(heads[t, h, a].item(), heads[t, h, b].item()) * rot
                heads[t, h, a], heads[t, h, b] = z.real, z.imag
    return heads.reshape(x.shape)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rotary_embedding(gen: torch.Generator, neox: bool, rotary_dim: int) -> None:
    head_dim, theta = 64, 10000.0
    q, k = _randn(gen, 5, 2 * head_dim), _randn(gen, 5, 1 * head_dim)
    pos = torch.tensor([0, 1, 7, 300, 1023])
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    freqs = torch.outer(torch.arange(1024, dtype=torch.float64), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).float()
    q_out, k_out = torch_ops.rotary_embedding(pos, q.float(), k.float(), cache, head_dim, neox)
    # Partial rotary: only the first rotary_dim dims of each head rotate.
    _close(q_out, _ref_rope(q, pos, inv_freq, head_dim, neox))
    _close(k_out, _ref_rope(k, pos, inv_freq, head_dim, neox))


def test_silu_and_mul(gen: torch.Generator) -> None:
    x = _randn(gen, 4, 2 * 80, scale=4.0)
    gate, up = x[:, :80], x[:, 80:]
    expected = gate / (1 + torch.exp(-gate)) * up
    _close(torch_ops.silu_and_mul(x.float()), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(gen: torch.Generator, bias: bool) -> None:
    x, w = _randn(gen, 9, 48), _randn(gen, 40, 48)
    b = _randn(gen, 40) if bias else None
    expected = torch.einsum("ti,oi->to", x, w) + (b if b is not None else 0)
    _close(torch_ops.linear(x.float(), w.float(), None if b is None else b.float()), expected)


def _ref_moe(x, logits, w13, w2, top_k, renormalize):
    inter = w2.shape[2]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        probs = torch.softmax(logits[t], dim=0)
        chosen = sorted(range(len(probs)), key=lambda e: -probs[e].item())[:top_k]
        total = sum(probs[e].item() for e in chosen) if renormalize else 1.0
        for e in chosen:
            g, u = w13[e, :inter] @ x[t], w13[e, inter:] @ x[t]
            out[t] += probs[e].item() / total * (w2[e] @ (g * torch.sigmoid(g) * u))
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_fused_moe(gen: torch.Generator, renormalize: bool) -> None:
    experts, hidden, inter, top_k = 6, 32, 24, 2
    x = _randn(gen, 11, hidden)
    logits = _randn(gen, 11, experts, scale=2.0)
    w13, w2 = _randn(gen, experts, 2 * inter, hidden, scale=0.3), _randn(gen, experts, hidden, inter, scale=0.3)
    got = torch_ops.fused_moe(x.float(), logits.float(), w13.float(), w2.float(), top_k, renormalize)
    _close(got, _ref_moe(x, logits, w13, w2, top_k, renormalize))


def test_fused_moe_with_unused_experts(gen: torch.Generator) -> None:
    """Experts no token picks must be skipped, not crash or contribute."""
    x = _randn(gen, 3, 16)
    logits = torch.full((3, 5), -30.0, dtype=torch.float64)
    logits[:, 1], logits[:, 3] = 5.0, 4.0  # only experts 1 and 3 are ever chosen
    w13, w2 = _randn(gen, 5, 2 * 8, 16), _randn(gen, 5, 16, 8)
    got = torch_ops.fused_moe(x.float(), logits.float(), w13.float(), w2.float(), 2, True)
    _close(got, _ref_moe(x, logits, w13, w2, 2, True))
