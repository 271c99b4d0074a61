"""AtomKVConnector's settings, read from `kv_connector_extra_config` (no vLLM imports).

Unknown keys are refused with the list of known ones: a typo must not silently fall
back to a default (a wrong side-channel port shows up only as timeouts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_SIDE_CHANNEL_PORT = 5610


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(value)


@dataclass(frozen=True)
class AtomKVSettings:
    transport: str = "mooncake"  # mooncake | mori
    protocol: str = "tcp"  # mooncake: tcp | rdma
    side_channel_host: str | None = None  # advertised and bound; default: this host's IP
    side_channel_port: int = DEFAULT_SIDE_CHANNEL_PORT  # + TP rank
    hold_timeout_s: float = 180.0  # producer frees unclaimed blocks after this (> transfer_timeout_s)
    transfer_timeout_s: float = 120.0  # consumer fails a request whose KV has not arrived by then
    regions_per_batch: int = 0  # layers per write batch (0: one batch per request)
    enable_test_hooks: bool = False  # honour kv_transfer_params["atom_test_tamper"] (tests only)

    @classmethod
    def from_extra_config(cls, extra: dict[str, Any]) -> AtomKVSettings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ValueError(
                f"unknown AtomKVConnector kv_connector_extra_config keys {unknown}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for name, value in extra.items():
            kind = type(getattr(cls, name)) if getattr(cls, name) is not None else str
            try:
                if kind is bool:
                    values[name] = _boolean(value)
                else:
                    values[name] = kind(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"AtomKVConnector setting {name}={value!r} is not a valid {kind.__name__}") from e
        if "side_channel_port" not in extra and os.environ.get("ATOM_KV_SIDE_CHANNEL_PORT"):
            values["side_channel_port"] = int(os.environ["ATOM_KV_SIDE_CHANNEL_PORT"])
        settings = cls(**values)
        if settings.transport not in ("mooncake", "mori"):
            raise ValueError(f"AtomKVConnector transport must be 'mooncake' or 'mori', not {settings.transport!r}")
        if settings.transfer_timeout_s <= 0 or settings.hold_timeout_s <= 0:
            raise ValueError("AtomKVConnector timeouts must be positive")
        return settings
