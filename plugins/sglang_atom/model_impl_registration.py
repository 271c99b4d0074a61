"""Makes `--model-impl atom` select the ATOM model runner in SGLang (called from `register()`).

SGLang accepts any `--model-impl` string and resolves the model class in
`sglang.srt.model_loader.utils.get_model_architecture`; an AROUND hook there returns our
class when the impl is `atom` and defers to SGLang otherwise, so nothing changes for
servers that do not opt in. The model module (which imports SGLang's layers) is imported
only when an `atom` model is actually built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from atom_models.families import family_for_architecture

logger = logging.getLogger("atom_mesh.models.sglang")

MODEL_IMPL = "atom"
_TARGET = "sglang.srt.model_loader.utils.get_model_architecture"
_registered = False


def wants_atom(model_config: Any) -> bool:
    return str(getattr(model_config, "model_impl", "")).lower() == MODEL_IMPL


def _get_model_architecture_around(original: Callable[..., Any], model_config: Any, *args: Any, **kwargs: Any) -> Any:
    if not wants_atom(model_config):
        return original(model_config, *args, **kwargs)
    from sglang.srt.configs.model_config import ModelImpl

    from sglang_atom.model_impl import AtomForCausalLM

    architectures = getattr(model_config.hf_config, "architectures", None) or ["<none>"]
    family = family_for_architecture(architectures[0])
    model_config._resolved_model_arch = family.atom_architecture
    model_config._resolved_model_impl = ModelImpl.SGLANG
    return AtomForCausalLM, family.atom_architecture


def register_model_impl() -> None:
    """Install the hook once per process."""
    global _registered
    if _registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(_TARGET, _get_model_architecture_around, HookType.AROUND)
    _registered = True
    logger.info("ATOM model runner available as --model-impl %s", MODEL_IMPL)
