"""Mooncake TransferEngine as a `Transport` (P2P handshake: no metadata server).

Mooncake addresses remote memory by raw virtual address inside a peer "session"
(`host:rpc_port`), so a memory descriptor is just `(base, length)` packed, and the
engine descriptor is the session name. Protocol "tcp" works everywhere (used here);
"rdma" is the production setting and needs RDMA NICs (unverified on this machine).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from kv_connector.transport import (
    DEFAULT_PROTOCOL,
    BatchState,
    TransferError,
    TransferOp,
    Transport,
    TransportUnavailable,
    protocol_problem,
)

logger = logging.getLogger("atom_mesh.kv_connector.mooncake")
_MEM = struct.Struct("<QQ")
# transfer_submit_write returns a batch id (a pointer), or on failure 0 (0.3.13.post1 for an
# unreachable peer) or -1 seen as an unsigned 64-bit integer (its source's other error paths).
_SUBMIT_FAILED = (0, (1 << 64) - 1)


@dataclass
class _InFlight:
    """A submitted write batch: the Mooncake batch ids not yet seen settled."""

    pending: list[int] = field(default_factory=list)
    failed: bool = False


def _unpack_mem(desc: bytes) -> tuple[int, int]:
    base, length = _MEM.unpack(desc)
    return base, length


def _addresses(ops: Sequence[TransferOp]) -> tuple[list[int], list[int], list[int]]:
    """Resolve ops to absolute (local, remote, length) lists, bounds-checked."""
    local, remote, lengths = [], [], []
    for op in ops:
        for ref in (op.local, op.remote):
            base, size = _unpack_mem(ref.desc)
            if ref.offset < 0 or ref.offset + op.length > size:
                raise TransferError(f"op [{ref.offset}, +{op.length}) is outside registered memory of {size} bytes")
        local.append(_unpack_mem(op.local.desc)[0] + op.local.offset)
        remote.append(_unpack_mem(op.remote.desc)[0] + op.remote.offset)
        lengths.append(op.length)
    return local, remote, lengths


class MooncakeTransport(Transport):
    def __init__(self, host: str = "127.0.0.1", protocol: str = DEFAULT_PROTOCOL, device_name: str = "") -> None:
        problem = protocol_problem(protocol)
        if problem:
            raise ValueError(problem)
        try:
            from mooncake.engine import TransferEngine
        except ImportError as e:  # pragma: no cover - depends on the install
            raise TransportUnavailable(
                "mooncake transfer engine is not installed: pip install 'atom-mesh[mooncake]' "
                "(and Debian's libibverbs1 librdmacm1 libnuma1)"
            ) from e
        self._engine = TransferEngine()
        rc = self._engine.initialize(host, "P2PHANDSHAKE", protocol, device_name)
        if rc != 0:
            raise TransportUnavailable(f"mooncake initialize({host!r}, protocol={protocol!r}) failed with {rc}")
        self._session = f"{host}:{self._engine.get_rpc_port()}"
        self._registered: list[int] = []
        self._lock = threading.Lock()
        logger.debug("mooncake endpoint %s (%s)", self._session, protocol)

    def engine_descriptor(self) -> bytes:
        return self._session.encode()

    def register_memory(self, ptr: int, length: int, *, device: str = "cpu", device_id: int = -1) -> bytes:
        rc = self._engine.register_memory(ptr, length)
        if rc != 0:
            raise TransferError(f"mooncake register_memory({ptr:#x}, {length}) failed with {rc}")
        with self._lock:
            self._registered.append(ptr)
        return _MEM.pack(ptr, length)

    def connect(self, peer_descriptor: bytes) -> str:
        # The P2P handshake happens inside the engine on the first batch to a session.
        return peer_descriptor.decode()

    def submit_write(self, peer: str, ops: Sequence[TransferOp]) -> object:
        """One Mooncake one-task batch per op (`transfer_submit_write`), polled op by op.

        Mooncake's only non-blocking status call, `transfer_check_status`, reads task 0 of a
        batch and frees the batch once that task completes: a multi-op
        `batch_transfer_async_write` batch would report DONE while later ops are still in
        flight (seen on TCP: 3 of 64 MiB had landed). One-task batches make it exact.
        """
        local, remote, lengths = _addresses(ops)
        in_flight = _InFlight()
        for src, dst, length in zip(local, remote, lengths, strict=True):
            batch = self._engine.transfer_submit_write(peer, src, dst, length)
            if batch in _SUBMIT_FAILED:
                raise TransferError(
                    f"mooncake could not submit a {length}-byte write to {peer} "
                    f"({len(in_flight.pending)} of {len(ops)} ops of the batch were already submitted)"
                )
            in_flight.pending.append(batch)
        return in_flight

    def poll(self, handle: object) -> BatchState:
        # A completed or failed batch id is freed by Mooncake inside transfer_check_status,
        # so each id is checked until it settles and never again.
        assert isinstance(handle, _InFlight), handle
        still_pending = []
        for batch in handle.pending:
            state = self._engine.transfer_check_status(batch)
            if state == 0:
                still_pending.append(batch)
            elif state != 1:  # -1 failed, -2 timed out
                handle.failed = True
        handle.pending = still_pending
        if handle.failed:
            return BatchState.FAILED
        return BatchState.PENDING if still_pending else BatchState.DONE

    def write(self, peer: str, ops: Sequence[TransferOp]) -> None:
        if not ops:
            return
        local, remote, lengths = _addresses(ops)
        rc = self._engine.batch_transfer_sync_write(peer, local, remote, lengths)
        if rc != 0:
            raise TransferError(f"mooncake batch write of {len(ops)} ops to {peer} failed with {rc}")

    def read(self, peer: str, ops: Sequence[TransferOp]) -> None:
        if not ops:
            return
        local, remote, lengths = _addresses(ops)
        rc = self._engine.batch_transfer_sync_read(peer, local, remote, lengths)
        if rc != 0:
            raise TransferError(f"mooncake batch read of {len(ops)} ops from {peer} failed with {rc}")

    def close(self) -> None:
        with self._lock:
            registered, self._registered = self._registered, []
        for ptr in registered:
            self._engine.unregister_memory(ptr)
