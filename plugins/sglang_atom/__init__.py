"""atom-mesh's SGLang plugin (entry point `sglang.srt.plugins` -> `sglang_atom:register`).

SGLang runs plugins in every process (launcher, scheduler, detokenizer), so `register()`
is idempotent and imports SGLang only inside the call.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("atom_mesh.sglang")
_registered = False


def register() -> None:
    """Register atom-mesh's extensions with SGLang once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    from sglang_atom.transfer_backend_registration import register_transfer_backend

    register_transfer_backend()
    from sglang_atom.model_impl_registration import register_model_impl

    register_model_impl()
