"""AtomKVConnector's settings, read from `kv_connector_extra_config` (no vLLM imports).

Unknown keys are refused with the list of known ones: a typo must not silently fall
back to a default (a wrong side-channel port shows up only as timeouts). Transport
names, protocols and timeout defaults come from the engine-neutral core
(`kv_connector.transport`, `kv_connector.defaults`), which SGLang's backend shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from kv_connector import defaults
from kv_connector.transport import DEFAULT_PROTOCOL, DEFAULT_TRANSPORT, MOONCAKE, protocol_problem, transport_problem

DEFAULT_SIDE_CHANNEL_PORT = 5610


@dataclass(frozen=True)
class AtomKVSettings:
    transport: str = DEFAULT_TRANSPORT  # a key of kv_connector.transport.TRANSPORTS
    protocol: str = DEFAULT_PROTOCOL  # mooncake: one of MOONCAKE_PROTOCOLS
    side_channel_host: str | None = None  # advertised and bound; default: this host's IP
    side_channel_port: int = DEFAULT_SIDE_CHANNEL_PORT  # + TP rank
    hold_timeout_s: float = defaults.HOLD_TTL_S  # producer frees unclaimed blocks after this (> transfer_timeout_s)
    transfer_timeout_s: float = defaults.TRANSFER_TIMEOUT_S  # consumer fails a request whose KV has not arrived by then
    regions_per_batch: int = 0  # layers per write batch (0: one batch per request)

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
                values[name] = kind(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"AtomKVConnector setting {name}={value!r} is not a valid {kind.__name__}") from e
        if "side_channel_port" not in extra and os.environ.get("ATOM_KV_SIDE_CHANNEL_PORT"):
            values["side_channel_port"] = int(os.environ["ATOM_KV_SIDE_CHANNEL_PORT"])
        settings = cls(**values)
        problem = transport_problem(settings.transport)
        if problem is None and settings.transport == MOONCAKE:
            problem = protocol_problem(settings.protocol)
        if problem:
            raise ValueError(f"AtomKVConnector: {problem}")
        if settings.transfer_timeout_s <= 0 or settings.hold_timeout_s <= 0:
            raise ValueError("AtomKVConnector timeouts must be positive")
        return settings
