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

    name: str = "abstract"

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

    def close(self) -> None:
        """Release the endpoint (registered memory stays owned by the caller)."""


def create_transport(name: str, *, host: str = "127.0.0.1", protocol: str = "tcp", **options: object) -> Transport:
    """Build a transport by config name ("mooncake" | "mori"); raises TransportUnavailable."""
    if name == "mooncake":
        from kv_connector.mooncake import MooncakeTransport

        return MooncakeTransport(host=host, protocol=protocol, **options)  # type: ignore[arg-type]
    if name == "mori":
        from kv_connector.mori import MoriTransport

        return MoriTransport(host=host, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown KV transport {name!r}; use 'mooncake' or 'mori'")
