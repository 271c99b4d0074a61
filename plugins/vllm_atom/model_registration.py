"""Registers the ATOM model classes with vLLM's `ModelRegistry` (called from `register()`).

Kept apart from `vllm_atom.models` so registration stays light: classes are registered
as lazy "module:Class" strings and imported only when vLLM builds a model.

`ATOM_MESH_MODEL_IMPL` picks what the built-in architecture names mean:
- `vllm`: vLLM's own classes (the default off ROCm); ours only under their Atom* names,
  selected per server with `--hf-overrides '{"architectures": ["AtomLlamaForCausalLM"]}'`.
- `atom`: the built-in names (LlamaForCausalLM, ...) resolve to our classes too.
- `auto` or unset: `atom` on a ROCm build of torch with a device and AITER installed
  (where our AITER-backed ops are the point), `vllm` everywhere else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from atom_models.families import ARCHITECTURES

logger = logging.getLogger("atom_mesh.models.vllm")

ENV_VAR = "ATOM_MESH_MODEL_IMPL"
_CHOICES = ("auto", "atom", "vllm")


def choose_impl(value: str | None, aiter_usable: bool) -> str:
    """`atom` or `vllm` from the env value (pure)."""
    choice = (value or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(_CHOICES)}")
    if choice == "auto":
        return "atom" if aiter_usable else "vllm"
    return choice


def registrations(impl: str) -> dict[str, str]:
    """Architecture name -> lazy class path for `ModelRegistry.register_model` (pure)."""
    table = {}
    for family in ARCHITECTURES.values():
        target = f"vllm_atom.models:{family.atom_architecture}"
        table[family.atom_architecture] = target
        if impl == "atom":
            table[family.hf_architecture] = target
    return table


def register_models(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Register with vLLM; returns what was registered."""
    from atom_models.ops.selection import aiter_status
    from vllm import ModelRegistry

    env = os.environ if env is None else env
    impl = choose_impl(env.get(ENV_VAR), aiter_status()[0])
    table = registrations(impl)
    for arch, target in table.items():
        ModelRegistry.register_model(arch, target)
    logger.info("ATOM model runner registered (%s=%s): %s", ENV_VAR, impl, ", ".join(sorted(table)))
    return table
