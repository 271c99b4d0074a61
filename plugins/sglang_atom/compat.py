"""Which SGLang the transfer backend may patch, and a probe of the internals it relies on.

The backend extends SGLang internals that are not a stable API (the `TransferBackend`
enum, `get_kv_class`, the Mooncake backend classes, one scheduler method). A version
outside the tested range, or any of those internals missing, means we must not touch
SGLang at all: a half-applied patch fails later and obscurely; a clear log line now
tells the operator what to do.
"""

from __future__ import annotations

import importlib
import re

# Tested: 0.5.23. Internals of this area change between minor releases.
MIN_VERSION = (0, 5, 23)
MAX_VERSION_EXCLUSIVE = (0, 6, 0)

# (module, dotted attribute) pairs the backend uses; checked before anything is patched.
REQUIRED_INTERNALS: tuple[tuple[str, str], ...] = (
    ("sglang.srt.disaggregation.utils", "TransferBackend.MOONCAKE"),
    ("sglang.srt.disaggregation.utils", "KVClassType.MANAGER"),
    ("sglang.srt.disaggregation.utils", "KVClassType.BOOTSTRAP_SERVER"),
    ("sglang.srt.disaggregation.utils", "get_kv_class"),
    ("sglang.srt.server_args", "add_disagg_transfer_backend_choices"),
    ("sglang.srt.arg_groups.choices", "DISAGG_TRANSFER_BACKEND_CHOICES"),
    ("sglang.srt.plugins.hook_registry", "HookRegistry.register"),
    ("sglang.srt.plugins.hook_registry", "HookType.AROUND"),
    ("sglang.srt.arg_groups.resolution_hooks", "register_resolution_hook"),
    ("sglang.srt.arg_groups.overrides", "declare_resolution"),
    ("sglang.srt.arg_groups.overrides", "resolving_view"),
    ("sglang.srt.disaggregation.prefill", "SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk"),
    ("sglang.srt.disaggregation.mooncake.conn", "MooncakeKVManager.init_engine"),
    ("sglang.srt.disaggregation.mooncake.conn", "MooncakeKVSender"),
    ("sglang.srt.disaggregation.mooncake.conn", "MooncakeKVReceiver"),
    ("sglang.srt.disaggregation.mooncake.conn", "MooncakeKVBootstrapServer"),
)


def parse_version(version: str) -> tuple[int, int, int] | None:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_problem(version: str) -> str | None:
    """Why `version` is outside the supported range, or None."""
    parsed = parse_version(version)
    lo = ".".join(map(str, MIN_VERSION))
    hi = ".".join(map(str, MAX_VERSION_EXCLUSIVE))
    if parsed is None or not MIN_VERSION <= parsed < MAX_VERSION_EXCLUSIVE:
        return f"SGLang {version} is outside the supported range >={lo},<{hi}; install sglang=={lo}"
    return None


def missing_internals(required: tuple[tuple[str, str], ...] = REQUIRED_INTERNALS) -> list[str]:
    """The `module:attribute` names that do not resolve in the installed SGLang."""
    missing = []
    for module_name, dotted in required:
        try:
            obj = importlib.import_module(module_name)
            for part in dotted.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}:{dotted}")
    return missing
