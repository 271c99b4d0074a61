"""Loading ordinary Hugging Face checkpoints into our fused parameter layout.

Checkpoints store q/k/v, gate/up and every expert separately; our modules fuse them
(one GEMM for QKV, one for gate+up, stacked expert tensors). `map_hf_name` is the pure
name translation; `load_hf_weights` copies each tensor into its slice with a shape check,
so a checkpoint that does not fit the config fails with a message naming the tensor
instead of producing garbage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from atom_models.layers import shard_offsets

# (pattern, replacement, shard): shard is a fixed key, or "expert:<key>" where the expert
# index comes from the name's first group that is a number.
_RULES: tuple[tuple[re.Pattern[str], str, str | None], ...] = tuple(
    (re.compile(pattern), repl, shard)
    for pattern, repl, shard in (
        (r"^(.*\.self_attn)\.q_proj\.(weight|bias)$", r"\1.qkv_proj.\2", "q"),
        (r"^(.*\.self_attn)\.k_proj\.(weight|bias)$", r"\1.qkv_proj.\2", "k"),
        (r"^(.*\.self_attn)\.v_proj\.(weight|bias)$", r"\1.qkv_proj.\2", "v"),
        (r"^(.*\.mlp)\.gate_proj\.(weight|bias)$", r"\1.gate_up_proj.\2", "gate"),
        (r"^(.*\.mlp)\.up_proj\.(weight|bias)$", r"\1.gate_up_proj.\2", "up"),
        # Per-expert tensors (the usual checkpoint layout).
        (r"^(.*\.mlp\.experts)\.(\d+)\.gate_proj\.weight$", r"\1.w13", "expert:gate"),
        (r"^(.*\.mlp\.experts)\.(\d+)\.up_proj\.weight$", r"\1.w13", "expert:up"),
        (r"^(.*\.mlp\.experts)\.(\d+)\.down_proj\.weight$", r"\1.w2", "expert:"),
        # Stacked experts (transformers >= 5 in-memory layout): already [E, 2I, H] / [E, H, I].
        (r"^(.*\.mlp\.experts)\.gate_up_proj$", r"\1.w13", None),
        (r"^(.*\.mlp\.experts)\.down_proj$", r"\1.w2", None),
    )
)

Shard = str | tuple[int, str] | None


def map_hf_name(name: str) -> tuple[str, Shard]:
    """HF tensor name -> (our parameter name, shard): shard is None (whole tensor), a row
    block key ("q", "gate", ...), or (expert index, "gate" | "up" | "") for one expert."""
    for pattern, repl, shard in _RULES:
        match = pattern.match(name)
        if match is None:
            continue
        target = pattern.sub(repl, name)
        if shard is not None and shard.startswith("expert:"):
            return target, (int(match.group(2)), shard.removeprefix("expert:"))
        return target, shard
    return name, None


def _ignored(name: str, skip_lm_head: bool) -> bool:
    return name.endswith("rotary_emb.inv_freq") or (skip_lm_head and name == "lm_head.weight")


def _destination(param: nn.Parameter, shard: Shard) -> torch.Tensor:
    data = param.data
    if isinstance(shard, tuple):
        expert, key = shard
        data = data[expert]
        shard = key or None
    if shard is not None:
        start, size = shard_offsets(param)[shard]
        data = data[start : start + size]
    return data


def load_hf_weights(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], *, skip_lm_head: bool = False
) -> set[str]:
    """Copy every checkpoint tensor into `model`; returns the parameter names loaded.

    Engines compare the returned set with all parameters to find missing tensors; a
    fused parameter that got only some of its shards is an error here.
    """
    params = dict(model.named_parameters())
    seen: dict[str, set[Shard]] = {}
    for name, tensor in weights:
        if _ignored(name, skip_lm_head):
            continue
        target, shard = map_hf_name(name)
        param = params.get(target)
        if param is None:
            raise KeyError(
                f"checkpoint tensor {name!r} (-> {target!r}) has no parameter in {type(model).__name__}; "
                "is the architecture in config.json right for this checkpoint?"
            )
        dest = _destination(param, shard)
        if dest.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)} but {target!r}"
                f"{'' if shard is None else f' shard {shard}'} expects {tuple(dest.shape)}; "
                "the checkpoint does not match its config.json"
            )
        dest.copy_(tensor)
        seen.setdefault(target, set()).add(shard)
    for target, shards in seen.items():
        missing = _expected_shards(params[target], shards) - shards
        if missing:
            parts = ", ".join(sorted(map(str, missing)))
            raise ValueError(f"checkpoint is missing parts {parts} of {target!r}; is the checkpoint complete?")
    return set(seen)


def _expected_shards(param: nn.Parameter, seen: set[Shard]) -> set[Shard]:
    """Every shard a complete load of `param` delivers, judged by the form that arrived."""
    if None in seen:
        return {None}
    keys = list(shard_offsets(param)) or [""]
    if any(isinstance(s, tuple) for s in seen):
        return {(e, k) for e in range(param.shape[0]) for k in keys}
    return set(keys)
