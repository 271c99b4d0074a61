"""atom-mesh's vLLM plugin (entry point `vllm.general_plugins` -> `vllm_atom:register`).

vLLM calls `register()` in every process (API server, engine core, each worker), so it
is idempotent and imports vLLM only inside the call, never at module load.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("atom_mesh.vllm")
_registered = False


def register() -> None:
    """Register atom-mesh's extensions with vLLM once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    from vllm_atom.kv_connector_registration import register_kv_connector

    register_kv_connector()
    from vllm_atom.model_registration import register_models

    register_models()
    logger.info("atom-mesh vLLM plugin loaded")
