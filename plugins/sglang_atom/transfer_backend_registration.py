"""Registers the `atom` transfer backend with SGLang through SGLang's own extension points.

Runs in every SGLang process (launcher, scheduler, detokenizer) via `sglang_atom.register`.
What it does, each step idempotent:
1. checks the SGLang version and the internals used (`compat`); on a mismatch it logs
   what to do and touches nothing, so SGLang rejects `atom` as an unknown choice;
2. adds `atom` to `--disaggregation-transfer-backend` (`add_disagg_transfer_backend_choices`)
   and to the `TransferBackend` enum (SGLang converts the flag with `TransferBackend(x)`);
3. AROUND hook on `get_kv_class`: returns our Manager/Sender/Receiver/BootstrapServer for
   `atom` and defers to SGLang for every other backend;
4. a resolution hook on `handle_pd_disaggregation` (launcher, at start-up): fails fast with
   a message that says what to fix when the transport cannot start or the prefill's
   bootstrap port cannot be bound, and on CPU picks a decode retraction backup that does
   not need CUDA (SGLang's default host pool calls `torch.cuda.cudart()`);
5. AROUND hook on the prefill scheduler's early send of a cached prefix, which records a
   `torch.cuda.Event`: skipped for our sender on CPU (the final send covers those pages).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from sglang_atom.settings import BACKEND_NAME, BackendSettings, bootstrap_port_problem

logger = logging.getLogger("atom_mesh.sglang")

_ENUM_MEMBER = "ATOM"
_GET_KV_CLASS = "sglang.srt.disaggregation.utils.get_kv_class"
_EARLY_PREFIX_SEND = "sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk"
_RESOLUTION_STEP = "handle_pd_disaggregation"

_registered = False


def register_transfer_backend() -> bool:
    """Make `--disaggregation-transfer-backend atom` work in this process; False if refused."""
    global _registered
    if _registered:
        return True
    import sglang

    from sglang_atom.compat import missing_internals, version_problem

    problem = version_problem(sglang.__version__)
    if problem is None:
        missing = missing_internals()
        if missing:
            problem = f"SGLang {sglang.__version__} lacks internals the backend needs ({', '.join(missing)})"
    if problem is not None:
        logger.warning(
            "atom-mesh: the '%s' transfer backend is NOT registered and SGLang is left untouched: %s. "
            "Use a supported SGLang or another --disaggregation-transfer-backend.",
            BACKEND_NAME,
            problem,
        )
        return False

    from sglang.srt.arg_groups.choices import DISAGG_TRANSFER_BACKEND_CHOICES
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook
    from sglang.srt.disaggregation.utils import TransferBackend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import add_disagg_transfer_backend_choices

    if BACKEND_NAME not in DISAGG_TRANSFER_BACKEND_CHOICES:
        add_disagg_transfer_backend_choices([BACKEND_NAME])
    extend_enum(TransferBackend, _ENUM_MEMBER, BACKEND_NAME)
    HookRegistry.register(_GET_KV_CLASS, _get_kv_class_around, HookType.AROUND)
    HookRegistry.register(_EARLY_PREFIX_SEND, _early_prefix_send_around, HookType.AROUND)
    register_resolution_hook(_RESOLUTION_STEP)(_resolve_pd_settings)
    _registered = True
    logger.info("atom-mesh: '%s' transfer backend registered with SGLang %s", BACKEND_NAME, sglang.__version__)
    return True


def extend_enum(enum_cls: Any, name: str, value: str) -> Any:
    """Add member `name = value` to an existing Enum in place (idempotent); returns it.

    SGLang's `TransferBackend` is a closed Enum, and code across SGLang compares against
    its members and converts strings with `TransferBackend(value)`; extending the class
    in place keeps every existing reference to it valid (a replacement class would not).
    """
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = object.__new__(enum_cls)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)
    return member


def _get_kv_class_around(original, *args, **kwargs):
    transfer_backend = kwargs.get("transfer_backend", args[0] if args else None)
    class_type = kwargs.get("class_type", args[1] if len(args) > 1 else None)
    if getattr(transfer_backend, "value", transfer_backend) != BACKEND_NAME or class_type.value == "kvargs":
        return original(*args, **kwargs)
    from sglang_atom.transfer_backend import kv_class

    return kv_class(class_type.value)


def _early_prefix_send_around(original, scheduler, req, *args, **kwargs):
    if getattr(getattr(req, "disagg_kv_sender", None), "atom_has_device_events", True) is False:
        return None
    return original(scheduler, req, *args, **kwargs)


def _resolve_pd_settings(server_args: Any, previous) -> None:
    """SGLang's own P/D validation, then the checks and CPU defaults of the atom backend."""
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    previous(server_args)
    cfg = resolving_view(server_args)
    if cfg.disaggregation_transfer_backend != BACKEND_NAME or cfg.disaggregation_mode not in ("prefill", "decode"):
        return
    prefix = f"--disaggregation-transfer-backend {BACKEND_NAME}"
    try:
        settings = BackendSettings.resolve(cfg.disaggregation_ib_device)
    except ValueError as e:
        raise ValueError(f"{prefix}: {e}") from None
    _check_transport(settings, prefix)
    if cfg.disaggregation_mode == "prefill":
        port = cfg.disaggregation_bootstrap_port
        problem = bootstrap_port_problem(port, api_port=cfg.port, host=cfg.host, bindable=_bindable(cfg.host, port))
        if problem:
            raise ValueError(f"{prefix}: {problem}")
    elif _on_cpu(cfg.device) and cfg.disaggregation_decode_retraction_backup is None:
        declare_resolution(server_args, "sglang_atom", disaggregation_decode_retraction_backup="cpu_tensor")


def _check_transport(settings: BackendSettings, prefix: str) -> None:
    """Start and close one endpoint now, so a missing library fails start-up, not the first request."""
    from kv_connector.transport import TransportUnavailable, create_transport

    try:
        create_transport(settings.transport, host="127.0.0.1", **settings.transport_options()).close()
    except TransportUnavailable as e:
        raise ValueError(f"{prefix}: the {settings.transport} transport cannot start here: {e}") from None


def _bindable(host: str, port: int) -> bool:
    if not 0 < port < 65536:
        return False
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError:
        return False
    return True


def _on_cpu(device: str | None) -> bool:
    if device:
        return device.lower() == "cpu"
    import torch

    return torch.accelerator.current_accelerator() is None
