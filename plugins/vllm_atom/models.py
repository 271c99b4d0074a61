"""vLLM binding of the ATOM model runner: `atom_models` decoders as vLLM model classes.

Thin by design: the decoder, its ops and weight loading live in `atom_models`; this
module only adapts vLLM's model-class interface (constructor from `VllmConfig`,
`forward` / `compute_logits` / `embed_input_ids` / `load_weights`) and builds vLLM's own
`Attention` layer for every decoder layer, so the KV cache, the attention backend and
any KV connector (P/D) work exactly as with vLLM's built-in models.

Selection (see `register_models`): `--hf-overrides '{"architectures":
["AtomLlamaForCausalLM"]}'` for one server, or `ATOM_MESH_MODEL_IMPL=atom` to make the
built-in architecture names resolve to these classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from atom_models.engine import AttentionSpec
from atom_models.families import family_for_architecture
from atom_models.model import CausalLM
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.sequence import IntermediateTensors

logger = logging.getLogger("atom_mesh.models.vllm")


class _AtomForCausalLM(CausalLM):
    """Base of the registered classes; subclasses only name their HF architecture."""

    hf_architecture: str

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        if get_tensor_model_parallel_world_size() != 1 or get_pp_group().world_size != 1:
            raise ValueError(
                "the ATOM model runner supports tensor/pipeline parallel size 1 only for now; "
                "drop --tensor-parallel-size/--pipeline-parallel-size or use vLLM's built-in implementation"
            )
        if vllm_config.quant_config is not None:
            raise ValueError(
                "the ATOM model runner does not support quantized checkpoints yet; "
                "use vLLM's built-in implementation for this model"
            )
        cfg = family_for_architecture(self.hf_architecture).to_config(vllm_config.model_config.hf_text_config)
        cache_config = vllm_config.cache_config

        def attention(spec: AttentionSpec) -> nn.Module:
            return Attention(
                spec.num_heads,
                spec.head_dim,
                spec.scale,
                num_kv_heads=spec.num_kv_heads,
                cache_config=cache_config,
                prefix=spec.prefix,
            )

        super().__init__(cfg, attention, prefix)
        logger.info("vLLM runs the ATOM implementation for %s", self.hf_architecture)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.hidden_states(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_hf_weights(weights)


class AtomLlamaForCausalLM(_AtomForCausalLM):
    hf_architecture = "LlamaForCausalLM"


class AtomQwen3ForCausalLM(_AtomForCausalLM):
    hf_architecture = "Qwen3ForCausalLM"


class AtomQwen3MoeForCausalLM(_AtomForCausalLM):
    hf_architecture = "Qwen3MoeForCausalLM"
