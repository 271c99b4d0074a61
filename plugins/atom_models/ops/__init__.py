"""The op layer: one entry per kernel the models need, each bound once to AITER or torch.

Models call `ops.get("rms_norm")` while they are being built and keep the function, so
the choice (see `selection`) is made once per process and costs nothing per call.
Attention is deliberately not here: it goes through the host engine's own attention
layer and KV cache (`atom_models.engine.AttentionFactory`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from atom_models.ops import selection

OPS = ("rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "linear", "fused_moe")

_MODULES = {"torch": "atom_models.ops.torch_ops", "aiter": "atom_models.ops.aiter_ops"}


def backends() -> dict[str, str]:
    """The op -> backend map this process uses (resolved and logged on first use)."""
    return dict(selection.resolve(OPS))


def get(op: str) -> Callable[..., Any]:
    """The implementation of `op` this process uses."""
    if op not in OPS:
        raise KeyError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return getattr(import_module(_MODULES[selection.resolve(OPS)[op]]), op)
