"""The transport interface: how KV bytes move between two engine processes.

A transport moves raw bytes between memory registered on two peers; it knows nothing
of KV caches, blocks or engines (that is `layout` and `producer`/`consumer`). Every
implementation follows the same four steps, so an engine binding (vLLM, SGLang) can
swap one for another with a config string:

1. `register_memory(ptr, length, device=...)` on both peers; it returns a descriptor
   (bytes) the *other* peer needs to address that memory.
2. Exchange `engine_descriptor()` and the memory descriptors out of band (our side
   channel: `kv_connector.side_channel`).
3. `connect(peer_engine_descriptor)` -> a peer name, once per peer.
4. `write(peer, ops)` / `read(peer, ops)`: batches of `TransferOp(local, remote,
   length)` where `local`/`remote` are `(memory descriptor, byte offset)` pairs. A batch
   completes as a whole: it returns when every op landed or raises `TransferError`.
   `submit_write` + `poll` is the same batch without blocking, for pipelining.

Descriptors are opaque bytes so a peer never has to import the other side's library.
"""

from __future__ import annotations

import abc
import enum
import importlib
from collections.abc import Sequence
from dataclasses import dataclass


class TransferError(RuntimeError):
    """A batch did not complete (peer gone, timeout, bad address). Nothing it wrote can be trusted."""


class TransportUnavailable(RuntimeError):
    """The transport's library or hardware is missing on this machine."""


@dataclass(frozen=True)
class MemoryRef:
    """A byte offset inside memory registered on one peer (`desc` from `register_memory`)."""

    desc: bytes
    offset: int


@dataclass(frozen=True)
class TransferOp:
    """Copy `length` bytes between `local` and `remote` (direction set by write/read)."""

    local: MemoryRef
    remote: MemoryRef
    length: int


class BatchState(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Transport(abc.ABC):
    """One process's endpoint. Thread-safe for concurrent batches to different peers."""

    @abc.abstractmethod
    def engine_descriptor(self) -> bytes:
        """What a peer passes to `connect` to reach this endpoint."""

    @abc.abstractmethod
    def register_memory(self, ptr: int, length: int, *, device: str = "cpu", device_id: int = -1) -> bytes:
        """Make `[ptr, ptr+length)` reachable by peers; returns its descriptor."""

    @abc.abstractmethod
    def connect(self, peer_descriptor: bytes) -> str:
        """Handshake with a peer (idempotent); returns the peer name used by write/read."""

    @abc.abstractmethod
    def submit_write(self, peer: str, ops: Sequence[TransferOp]) -> object:
        """Start a batch of writes local -> remote; returns a handle for `poll`."""

    @abc.abstractmethod
    def poll(self, handle: object) -> BatchState:
        """The state of a submitted batch, without blocking."""

    @abc.abstractmethod
    def write(self, peer: str, ops: Sequence[TransferOp]) -> None:
        """Write a batch local -> remote and wait for it; raises TransferError."""

    @abc.abstractmethod
    def read(self, peer: str, ops: Sequence[TransferOp]) -> None:
        """Read a batch remote -> local and wait for it; raises TransferError."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the endpoint (registered memory stays owned by the caller)."""


# The transports by config name (the one registry the engine bindings' settings read),
# each as the module and class that implement it: imported only when chosen.
MOONCAKE = "mooncake"
MORI = "mori"
TRANSPORTS: dict[str, tuple[str, str]] = {
    MOONCAKE: ("kv_connector.mooncake", "MooncakeTransport"),
    MORI: ("kv_connector.mori", "MoriTransport"),
}
DEFAULT_TRANSPORT = MOONCAKE
# Mooncake's wire protocols: "tcp" runs anywhere; "rdma" needs RDMA NICs.
MOONCAKE_PROTOCOLS = ("tcp", "rdma")
DEFAULT_PROTOCOL = "tcp"


def transport_problem(name: str) -> str | None:
    """Why `name` is not a transport, or None."""
    if name in TRANSPORTS:
        return None
    return f"unknown KV transport {name!r}; use one of {', '.join(map(repr, TRANSPORTS))}"


def protocol_problem(protocol: str) -> str | None:
    """Why `protocol` is not one of Mooncake's protocols, or None."""
    if protocol in MOONCAKE_PROTOCOLS:
        return None
    return f"unknown Mooncake protocol {protocol!r}; use one of {', '.join(map(repr, MOONCAKE_PROTOCOLS))}"


def create_transport(name: str, *, host: str = "127.0.0.1", protocol: str = DEFAULT_PROTOCOL, **options: object) -> Transport:
    """Build a transport by config name (a key of `TRANSPORTS`); raises TransportUnavailable.

    `protocol` is Mooncake's (other transports have none); `options` are the transport's
    own (Mooncake: device_name; MORI: port, backend, timeout_s)."""
    problem = transport_problem(name)
    if problem:
        raise ValueError(problem)
    if name == MOONCAKE:
        options["protocol"] = protocol
    module_name, class_name = TRANSPORTS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    transport: Transport = cls(host=host, **options)
    return transport
