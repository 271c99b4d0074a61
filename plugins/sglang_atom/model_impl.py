"""SGLang binding of the ATOM model runner: `atom_models` decoders as an SGLang model class.

Thin by design, the SGLang twin of `vllm_atom.models`: the decoder, ops and weight
loading are `atom_models`; this module builds SGLang's `RadixAttention` for every layer
(so SGLang's KV pool, its attention backend and its P/D transfer backends see our KV
exactly as a built-in model's) and returns hidden states through SGLang's
`LogitsProcessor` (which owns logprob bookkeeping). Selected with `--model-impl atom`
(see `sglang_atom.model_impl_registration`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from atom_models.engine import AttentionSpec
from atom_models.families import family_for_architecture
from atom_models.model import CausalLM
from sglang.srt.layers.logits_processor import LogitsProcessor, LogitsProcessorOutput
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.runtime_context import get_parallel
from torch import nn

logger = logging.getLogger("atom_mesh.models.sglang")


def _radix_attention(spec: AttentionSpec) -> nn.Module:
    return RadixAttention(
        spec.num_heads,
        spec.head_dim,
        spec.scale,
        num_kv_heads=spec.num_kv_heads,
        layer_id=spec.layer_index,
        prefix=spec.prefix,
    )


class AtomForCausalLM(CausalLM):
    """Every supported family, picked from `config.architectures` at construction."""

    def __init__(self, config: Any, quant_config: Any = None, prefix: str = "") -> None:
        if get_parallel().tp_size != 1 or get_parallel().pp_size != 1:
            raise ValueError(
                "--model-impl atom supports --tp-size 1 and --pp-size 1 only for now; "
                "use --model-impl sglang for parallel serving"
            )
        if quant_config is not None:
            raise ValueError("--model-impl atom does not support quantized checkpoints yet; use --model-impl sglang")
        family = family_for_architecture(config.architectures[0])
        super().__init__(family.to_config(config), _radix_attention, prefix)
        self.logits_processor = LogitsProcessor(config)
        logger.info("SGLang runs the ATOM implementation for %s", family.hf_architecture)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        get_embedding: bool = False,
        pp_proxy_tensors: object = None,
    ) -> LogitsProcessorOutput:
        if get_embedding:
            raise ValueError("--model-impl atom serves generation only; use --model-impl sglang for embeddings")
        hidden = self.hidden_states(input_ids, positions, input_embeds, forward_batch=forward_batch)
        return self.logits_processor(input_ids, hidden, self.lm_head, forward_batch)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_hf_weights(weights)
