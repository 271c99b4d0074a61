"""Our decoders, loaded from the tiny HF checkpoints, against Hugging Face transformers.

No engine here: attention is a plain causal SDPA over one sequence (the engine-backed
path is covered by test_vllm_parity.py). This checks the model code and weight loading
of every family in seconds, including tied embeddings (qwen3) and MoE (qwen3_moe).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from atom_models.engine import AttentionSpec
from atom_models.families import family_for_architecture
from atom_models.model import CausalLM
from safetensors.torch import load_file
from torch import nn

from testbed.models import build_tiny_model

KINDS = ("llama", "qwen3", "qwen3_moe")


class CausalSDPA(nn.Module):
    """Single-sequence causal attention with GQA: the engine's job, done plainly."""

    def __init__(self, spec: AttentionSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s, t = self.spec, q.shape[0]
        q = q.view(t, s.num_heads, s.head_dim).transpose(0, 1)
        k, v = (x.view(t, s.num_kv_heads, s.head_dim).transpose(0, 1) for x in (k, v))
        groups = s.num_heads // s.num_kv_heads
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s.scale)
        return out.transpose(0, 1).reshape(t, -1)


def _ours(model_dir: Path, hf_config: transformers.PretrainedConfig) -> CausalLM:
    cfg = family_for_architecture(hf_config.architectures[0]).to_config(hf_config)
    model = CausalLM(cfg, CausalSDPA)
    loaded = model.load_hf_weights(load_file(model_dir / "model.safetensors").items())
    assert loaded == set(dict(model.named_parameters())), "some parameters were not loaded"
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind: str) -> None:
    model_dir = build_tiny_model(kind)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = _ours(model_dir, hf.config)
    ids = torch.randint(0, hf.config.vocab_size, (48,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
        got = ours.logits(ours.hidden_states(ids, torch.arange(len(ids))))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def _tensors(kind: str) -> tuple[CausalLM, dict[str, torch.Tensor]]:
    model_dir = build_tiny_model(kind)
    hf_config = transformers.AutoConfig.from_pretrained(model_dir)
    cfg = family_for_architecture(hf_config.architectures[0]).to_config(hf_config)
    return CausalLM(cfg, CausalSDPA), load_file(model_dir / "model.safetensors")


def test_shape_mismatch_names_the_tensor() -> None:
    model, tensors = _tensors("llama")
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"k_proj.weight.*shape \(3, 3\).*shard k expects \(64, 128\)"):
        model.load_hf_weights(tensors.items())


def test_missing_expert_is_reported() -> None:
    model, tensors = _tensors("qwen3_moe")
    del tensors["model.layers.0.mlp.experts.2.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing parts \(2, 'up'\) of 'model.layers.0.mlp.experts.w13'"):
        model.load_hf_weights(tensors.items())


def test_unknown_tensor_is_reported() -> None:
    model, tensors = _tensors("llama")
    tensors["model.layers.0.self_attn.rel_bias"] = torch.zeros(1)
    with pytest.raises(KeyError, match="rel_bias"):
        model.load_hf_weights(tensors.items())
