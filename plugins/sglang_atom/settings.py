"""Settings of the `atom` transfer backend (pure: no SGLang import).

SGLang has no per-backend config flag, so the transport is chosen by environment
variables, with defaults that make `--disaggregation-transfer-backend atom` alone work:
- `ATOM_MESH_KV_TRANSPORT`: `mooncake` (default) or `mori` (ROCm, unverified here).
- `ATOM_MESH_KV_PROTOCOL`: Mooncake's protocol. Default `rdma` when
  `--disaggregation-ib-device` names NICs, else `tcp` (works on any machine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kv_connector.transport import DEFAULT_PROTOCOL, DEFAULT_TRANSPORT, MOONCAKE, MOONCAKE_PROTOCOLS, TRANSPORTS

BACKEND_NAME = "atom"


@dataclass(frozen=True)
class BackendSettings:
    transport: str
    protocol: str
    device_name: str  # RDMA device list for Mooncake ("" for TCP)

    @classmethod
    def resolve(cls, ib_device: str | None, env: Mapping[str, str] | None = None) -> BackendSettings:
        """Settings from the environment and `--disaggregation-ib-device`; ValueError says what to fix."""
        env = os.environ if env is None else env
        transport = env.get("ATOM_MESH_KV_TRANSPORT", DEFAULT_TRANSPORT).strip().lower()
        if transport not in TRANSPORTS:
            raise ValueError(f"ATOM_MESH_KV_TRANSPORT={transport!r} is not a transport; use one of {', '.join(TRANSPORTS)}")
        default_protocol = "rdma" if ib_device else DEFAULT_PROTOCOL
        protocol = env.get("ATOM_MESH_KV_PROTOCOL", default_protocol).strip().lower()
        if protocol not in MOONCAKE_PROTOCOLS:
            raise ValueError(
                f"ATOM_MESH_KV_PROTOCOL={protocol!r} is not a protocol; use one of {', '.join(MOONCAKE_PROTOCOLS)}"
            )
        return cls(transport=transport, protocol=protocol, device_name=(ib_device or "") if protocol == "rdma" else "")

    def transport_options(self) -> dict[str, str]:
        """Keyword arguments of `create_transport` besides the name and host (Mooncake's protocol and NICs)."""
        if self.transport == MOONCAKE:
            return {"protocol": self.protocol, "device_name": self.device_name}
        return {}


def bootstrap_port_problem(port: int, *, api_port: int, host: str, bindable: bool) -> str | None:
    """Why a prefill's `--disaggregation-bootstrap-port` cannot work, or None.

    `bindable` is the caller's probe (can `host:port` be bound right now?) so this stays pure.
    """
    if not 0 < port < 65536:
        return f"--disaggregation-bootstrap-port {port} is not a TCP port (1-65535)"
    if port == api_port:
        return (
            f"--disaggregation-bootstrap-port {port} equals --port; the bootstrap server needs a port of its own: "
            "pick another free port and give the same one to the router (--prefill URL BOOTSTRAP_PORT)"
        )
    if not bindable:
        return (
            f"--disaggregation-bootstrap-port {port} is already in use on {host}; pick a free port "
            "(each prefill server needs its own) and give the same one to the router (--prefill URL BOOTSTRAP_PORT)"
        )
    return None
