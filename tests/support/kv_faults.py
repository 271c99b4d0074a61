"""Fault injection for KV push tests: a transport wrapper steered by flag files.

Shipped code carries no test hooks. A test that must corrupt or stall a push wraps the
producer's transport instead: in-process tests wrap it directly
(`FaultInjectingTransport(transport, faults)`); vLLM engine processes get the wrapper
from the `kv_fault_shim/sitecustomize.py` start-up shim, which `KVFaults.engine_env()`
puts on the engine's PYTHONPATH. Either way the test steers it through files in one
control directory, which both processes see:

- `rotate-next`: the next write batch takes every op's source from the next op of the
  same length. With one op per layer (contiguous pages, one batch per push: the
  connector's default), layer i+1's pages land in layer i: a decode that really reads
  the pushed KV must produce other tokens. Permuting pages inside one layer would not
  prove that (attention over the prompt is order-free). The wrapper deletes the file
  once it has permuted a batch, so the test can check that the tamper ran.
- `stall`: writes wait while the file exists (at most `STALL_LIMIT_S`); a stalled write
  first creates `stalled`, so the test knows a push is in flight before it acts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kv_connector.transport import BatchState, TransferOp, Transport
from testbed import REPO_ROOT

ENV_VAR = "ATOM_MESH_TEST_KV_FAULTS"  # the control directory, in engine processes
SHIM_DIR = Path(__file__).parent / "kv_fault_shim"
STALL_LIMIT_S = 600.0  # a stalled write never outlives a test run


@dataclass(frozen=True)
class KVFaults:
    """The control directory, seen from the test (touch/wait) and from the wrapper (check)."""

    directory: Path

    @property
    def _rotate(self) -> Path:
        return self.directory / "rotate-next"

    @property
    def _stall(self) -> Path:
        return self.directory / "stall"

    @property
    def _stalled(self) -> Path:
        return self.directory / "stalled"

    def engine_env(self) -> dict[str, str]:
        """Environment of an engine whose KV transports get the fault wrapper."""
        path = [str(SHIM_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in path if p), ENV_VAR: str(self.directory)}

    # -- the test's side -------------------------------------------------------

    def rotate_next_push(self) -> None:
        self._rotate.touch()

    def rotation_pending(self) -> bool:
        """True until a write batch was permuted."""
        return self._rotate.exists()

    def stall_pushes(self) -> None:
        self._stalled.unlink(missing_ok=True)
        self._stall.touch()

    def release_pushes(self) -> None:
        self._stall.unlink(missing_ok=True)

    def wait_stalled(self, timeout_s: float) -> None:
        """Return once a write is stalled; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self._stalled.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no KV push reached the transport within {timeout_s:.0f}s")
            time.sleep(0.05)

    # -- the wrapper's side ----------------------------------------------------

    def apply(self, ops: Sequence[TransferOp]) -> list[TransferOp]:
        """Stall while asked to, then rotate the batch's sources if asked to."""
        if self._stall.exists():
            self._stalled.touch()
            deadline = time.monotonic() + STALL_LIMIT_S
            while self._stall.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        ops = list(ops)
        if self._rotate.exists():
            rotated = rotate_sources(ops)
            if rotated != ops:
                self._rotate.unlink(missing_ok=True)
                return rotated
        return ops


def rotate_sources(ops: Sequence[TransferOp]) -> list[TransferOp]:
    """Each op's source becomes the next same-length op's source (destinations stay)."""
    by_length: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        by_length.setdefault(op.length, []).append(i)
    out = list(ops)
    for indices in by_length.values():
        for k, i in enumerate(indices):
            source = ops[indices[(k + 1) % len(indices)]].local
            out[i] = TransferOp(local=source, remote=ops[i].remote, length=ops[i].length)
    return out


class FaultInjectingTransport(Transport):
    """Delegates to a real transport; writes go through `KVFaults.apply` first."""

    def __init__(self, inner: Transport, faults: KVFaults) -> None:
        self._inner = inner
        self._faults = faults

    def engine_descriptor(self) -> bytes:
        return self._inner.engine_descriptor()

    def register_memory(self, ptr: int, length: int, *, device: str = "cpu", device_id: int = -1) -> bytes:
        return self._inner.register_memory(ptr, length, device=device, device_id=device_id)

    def connect(self, peer_descriptor: bytes) -> str:
        return self._inner.connect(peer_descriptor)

    def submit_write(self, peer: str, ops: Sequence[TransferOp]) -> object:
        return self._inner.submit_write(peer, self._faults.apply(ops))

    def poll(self, handle: object) -> BatchState:
        return self._inner.poll(handle)

    def write(self, peer: str, ops: Sequence[TransferOp]) -> None:
        self._inner.write(peer, self._faults.apply(ops))

    def read(self, peer: str, ops: Sequence[TransferOp]) -> None:
        self._inner.read(peer, ops)

    def close(self) -> None:
        self._inner.close()
