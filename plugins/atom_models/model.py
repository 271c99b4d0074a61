"""The one decoder implementation behind every family (Llama, Qwen3, Qwen3-MoE).

Engine-neutral: it knows nothing of vLLM or SGLang. Engines subclass `CausalLM` (so
parameter names stay `model.layers.N...` / `lm_head.weight`, the names engines and
checkpoints use) and pass their attention layer in through an `AttentionFactory`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from atom_models import ops
from atom_models.engine import AttentionFactory
from atom_models.families import DecoderConfig
from atom_models.layers import Embedding, GatedMLP, Linear, RMSNorm, SelfAttention, SparseMoE
from atom_models.weights import load_hf_weights


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int, prefix: str, attention: AttentionFactory) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, index, _join(prefix, "self_attn"), attention)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.moe is not None and index in cfg.moe.sparse_layers:
            self.mlp: nn.Module = SparseMoE(cfg.hidden_size, cfg.moe)
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, **attn_ctx: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Pre-norm with the residual carried separately, so each norm fuses the residual add.
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, **attn_ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg: DecoderConfig, attention: AttentionFactory, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, _join(prefix, f"layers.{i}"), attention) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        **attn_ctx: object,
    ) -> torch.Tensor:
        x = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, **attn_ctx)
        x, _ = self.norm(x, residual)
        return x


class CausalLM(nn.Module):
    """Decoder plus LM head. `forward` returns final hidden states; `logits` projects them."""

    def __init__(self, cfg: DecoderConfig, attention: AttentionFactory, prefix: str = "") -> None:
        super().__init__()
        self.atom_config = cfg
        self.model = DecoderModel(cfg, attention, _join(prefix, "model"))
        tied = cfg.tie_word_embeddings
        self.lm_head = self.model.embed_tokens if tied else Linear(cfg.hidden_size, cfg.vocab_size, False)
        self._linear = ops.get("linear")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def hidden_states(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        **attn_ctx: object,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds, **attn_ctx)

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._linear(hidden_states, self.lm_head.weight, None)

    def load_hf_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a Hugging Face checkpoint's tensors; returns the parameter names filled."""
        return load_hf_weights(self, weights, skip_lm_head=self.atom_config.tie_word_embeddings)
