"""MORI-IO (`mori.io.IOEngine`, ROCm) as a `Transport`.

Checked against amd-mori 1.2.4's API, never run: `python/mori/io/engine.py`
(IOEngine(key, IOEngineConfig), create_backend, get_engine_desc().pack(),
register_remote_engine, register_memory(ptr, size, device_id, loc), and the
multi-session batch_write/batch_read that take one (local desc, remote desc, offsets,
sizes, transfer id) per pair and return one TransferStatus per pair) plus the names of
its compiled `mori.cpp` bindings (tests/kv_connector/test_vendor_apis.py). It needs ROCm
and RDMA NICs, which this project's CI machine lacks; constructing it there raises
`TransportUnavailable`.

MORI addresses memory by descriptor + offset (not raw addresses), which is why the
`Transport` interface speaks `MemoryRef(desc, offset)`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from kv_connector.defaults import TRANSFER_TIMEOUT_S
from kv_connector.transport import BatchState, TransferError, TransferOp, Transport, TransportUnavailable

logger = logging.getLogger("atom_mesh.kv_connector.mori")


def _load_mori():  # -> module
    try:
        import mori.io as mori_io
        from mori import cpp as mori_cpp
    except ImportError as e:
        raise TransportUnavailable(
            "MORI-IO is unavailable: it needs ROCm and the 'mori' package (github.com/ROCm/mori); "
            "use transport 'mooncake' on this machine"
        ) from e
    return mori_io, mori_cpp


class MoriTransport(Transport):
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, backend: str = "rdma", timeout_s: float = TRANSFER_TIMEOUT_S
    ) -> None:
        self._io, self._cpp = _load_mori()
        key = f"atom-mesh:{host}:{uuid.uuid4().hex[:12]}"
        self._engine = self._io.IOEngine(key, self._io.IOEngineConfig(host, port))
        backend_type = self._io.BackendType.XGMI if backend == "xgmi" else self._io.BackendType.RDMA
        self._engine.create_backend(backend_type)
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._peers: dict[bytes, str] = {}
        self._mem: dict[bytes, object] = {}  # packed desc -> MemoryDesc (local and imported)

    def engine_descriptor(self) -> bytes:
        return bytes(self._engine.get_engine_desc().pack())

    def register_memory(self, ptr: int, length: int, *, device: str = "cpu", device_id: int = -1) -> bytes:
        loc = self._cpp.MemoryLocationType.GPU if device in ("cuda", "hip", "gpu") else self._cpp.MemoryLocationType.CPU
        desc = self._engine.register_memory(ptr, length, device_id, loc)
        packed = bytes(desc.pack())
        with self._lock:
            self._mem[packed] = desc
        return packed

    def connect(self, peer_descriptor: bytes) -> str:
        with self._lock:
            if peer_descriptor in self._peers:
                return self._peers[peer_descriptor]
        desc = self._io.EngineDesc.unpack(peer_descriptor)
        self._engine.register_remote_engine(desc)
        with self._lock:
            self._peers[peer_descriptor] = desc.key
        return desc.key

    def _desc(self, packed: bytes):
        with self._lock:
            desc = self._mem.get(packed)
            if desc is None:
                desc = self._mem[packed] = self._io.MemoryDesc.unpack(packed)
        return desc

    def _submit(self, ops: Sequence[TransferOp], write: bool) -> list[Any]:
        # One multi-session MORI batch: a session per (local region, remote region) pair,
        # each with its own offsets, sizes and transfer id; one TransferStatus per session.
        groups: dict[tuple[bytes, bytes], list[TransferOp]] = {}
        for op in ops:
            groups.setdefault((op.local.desc, op.remote.desc), []).append(op)
        fn = self._engine.batch_write if write else self._engine.batch_read
        return list(
            fn(
                [self._desc(local) for local, _ in groups],
                [[op.local.offset for op in group] for group in groups.values()],
                [self._desc(remote) for _, remote in groups],
                [[op.remote.offset for op in group] for group in groups.values()],
                [[op.length for op in group] for group in groups.values()],
                [self._engine.allocate_transfer_uid() for _ in groups],
            )
        )

    def submit_write(self, peer: str, ops: Sequence[TransferOp]) -> object:
        return self._submit(ops, write=True)

    def poll(self, handle: object) -> BatchState:
        state = BatchState.DONE
        for status in handle:  # type: ignore[attr-defined]
            if status.Failed():
                return BatchState.FAILED
            if not status.Succeeded():
                state = BatchState.PENDING
        return state

    def _wait(self, handle: list[Any]) -> None:
        deadline = time.monotonic() + self._timeout_s
        while (state := self.poll(handle)) is BatchState.PENDING:
            if time.monotonic() > deadline:
                raise TransferError(f"MORI batch did not complete within {self._timeout_s}s")
            time.sleep(0.0005)
        if state is BatchState.FAILED:
            msgs = [s.Message() for s in handle if s.Failed()]
            raise TransferError(f"MORI batch failed: {msgs}")

    def write(self, peer: str, ops: Sequence[TransferOp]) -> None:
        if ops:
            self._wait(self._submit(ops, write=True))

    def read(self, peer: str, ops: Sequence[TransferOp]) -> None:
        if ops:
            self._wait(self._submit(ops, write=False))

    def close(self) -> None:
        # Forget peers and descriptors; the engine object goes with this endpoint.
        with self._lock:
            self._peers.clear()
            self._mem.clear()
