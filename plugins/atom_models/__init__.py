"""ATOM model runner: our model implementations, shared by the vLLM and SGLang bindings.

One copy of the model code (`atom_models.model`) runs on one op layer (`atom_models.ops`,
AITER kernels on ROCm, torch elsewhere). Each engine contributes only a thin wrapper
that supplies its own attention layer (so its KV cache, and any P/D KV connector bound
to that cache, keeps working) and adapts the engine's model-class interface:
`vllm_atom.models` and `sglang_atom.model_impl`.

Importing this package does not import torch; the submodules do.
"""

from __future__ import annotations

from atom_models.families import ARCHITECTURES, Family, family_for_architecture

__all__ = ["ARCHITECTURES", "Family", "family_for_architecture"]
