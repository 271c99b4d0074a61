"""What a host engine must give the models: its attention layer.

Attention is the one piece the models never implement themselves: it must read and
write the engine's paged KV cache (and so stay visible to the engine's KV connectors
for P/D transfer). Each engine wrapper passes an `AttentionFactory` that builds the
engine's own attention module for a layer; the module is called as
`attn(q, k, v, **ctx)` with q/k/v `[tokens, heads * head_dim]`, where `ctx` is whatever
per-step state the engine threads through the model's forward (nothing for vLLM, whose
attention reads a global forward context; `forward_batch` for SGLang).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn


@dataclass(frozen=True)
class AttentionSpec:
    """One attention layer as the engine needs to know it."""

    layer_index: int
    prefix: str  # the module path, e.g. "model.layers.0.self_attn.attn": engines key KV caches by it
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float


class AttentionFactory(Protocol):
    def __call__(self, spec: AttentionSpec) -> nn.Module: ...
