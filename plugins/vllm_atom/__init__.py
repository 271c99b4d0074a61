"""atom-mesh's vLLM plugin (entry point `vllm.general_plugins` -> `vllm_atom:register`).

vLLM calls `register()` in every process (API server, engine core, each worker), so it
is idempotent and imports vLLM only inside the call, never at module load.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("atom_mesh.vllm")
_registered = False


class _ToVllmLogger(logging.Handler):
    """Hands `atom_mesh.*` records to the `vllm` logger's handlers at emit time.

    vLLM configures handlers for its own logger only, and in some processes only after
    plugins were loaded, so our INFO lines (plugin loaded, connector events) would vanish
    inside the engine. Resolving vLLM's handlers and level when a record is emitted keeps
    one log format and honours VLLM_LOGGING_LEVEL and VLLM_CONFIGURE_LOGGING=0.
    """

    def emit(self, record: logging.LogRecord) -> None:
        vllm_logger = logging.getLogger("vllm")
        if vllm_logger.handlers and record.levelno >= vllm_logger.getEffectiveLevel():
            vllm_logger.handle(record)


def _log_through_vllm() -> None:
    ours = logging.getLogger("atom_mesh")
    if any(isinstance(h, _ToVllmLogger) for h in ours.handlers):
        return
    ours.addHandler(_ToVllmLogger())
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    ours.propagate = False


def register() -> None:
    """Register atom-mesh's extensions with vLLM once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    _log_through_vllm()
    from vllm_atom.kv_connector_registration import register_kv_connector

    register_kv_connector()
    from vllm_atom.model_registration import register_models

    register_models()
    logger.info("atom-mesh vLLM plugin loaded")
