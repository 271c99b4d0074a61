"""Mooncake TCP transport moving real bytes between two processes on loopback."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

pytest.importorskip("mooncake.engine")

from kv_connector.mooncake import MooncakeTransport
from kv_connector.transport import BatchState, MemoryRef, TransferError, TransferOp

SIZE = 8 << 20


def _peer(conn) -> None:
    """The remote process: registers a zeroed buffer and a patterned one, then reports what it holds."""
    t = MooncakeTransport()
    sink = np.zeros(SIZE, dtype=np.uint8)
    source = (np.arange(SIZE, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    conn.send((t.engine_descriptor(), t.register_memory(sink.ctypes.data, SIZE), t.register_memory(source.ctypes.data, SIZE)))
    conn.recv()  # the writer is done
    conn.send(sink.tobytes())
    conn.recv()
    t.close()


@pytest.fixture
def peer():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peer, args=(child,), daemon=True)
    proc.start()
    try:
        yield parent, parent.recv()
    finally:
        parent.send("bye") if proc.is_alive() else None
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def test_write_and_read_batches_move_exact_bytes(peer):
    conn, (endpoint, remote_sink, remote_source) = peer
    t = MooncakeTransport()
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    back = np.zeros(SIZE, dtype=np.uint8)
    local_data = t.register_memory(data.ctypes.data, SIZE)
    local_back = t.register_memory(back.ctypes.data, SIZE)
    remote = t.connect(endpoint)
    half = SIZE // 2
    # One synchronous batch of scattered ops, one asynchronous batch polled to completion.
    scattered = [TransferOp(MemoryRef(local_data, i), MemoryRef(remote_sink, i), 4096) for i in range(0, half, 4096)]
    t.write(remote, scattered)
    handle = t.submit_write(remote, [TransferOp(MemoryRef(local_data, half), MemoryRef(remote_sink, half), half)])
    while (state := t.poll(handle)) is BatchState.PENDING:
        pass
    assert state is BatchState.DONE
    t.read(remote, [TransferOp(MemoryRef(local_back, 0), MemoryRef(remote_source, 0), SIZE)])
    conn.send("written")
    assert conn.recv() == data.tobytes()
    expected = (np.arange(SIZE, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    assert np.array_equal(back, expected)
    t.close()


def test_ops_outside_registered_memory_are_refused():
    t = MooncakeTransport()
    buf = np.zeros(4096, dtype=np.uint8)
    desc = t.register_memory(buf.ctypes.data, buf.nbytes)
    with pytest.raises(TransferError, match="outside registered memory"):
        t.write(t.connect(t.engine_descriptor()), [TransferOp(MemoryRef(desc, 4000), MemoryRef(desc, 0), 200)])
    t.close()


def test_a_polled_multi_op_batch_is_done_only_when_every_op_landed(peer):
    """Mooncake's status call sees only a batch's first task: DONE must still mean all ops."""
    conn, (endpoint, remote_sink, _) = peer
    t = MooncakeTransport()
    data = np.random.default_rng(1).integers(1, 256, SIZE, dtype=np.uint8)  # no zero byte
    local = t.register_memory(data.ctypes.data, SIZE)
    remote = t.connect(endpoint)
    chunk = SIZE // 128
    ops = [TransferOp(MemoryRef(local, i), MemoryRef(remote_sink, i), chunk) for i in range(0, SIZE, chunk)]
    handle = t.submit_write(remote, ops)
    while (state := t.poll(handle)) is BatchState.PENDING:
        pass
    assert state is BatchState.DONE
    assert t.poll(handle) is BatchState.DONE  # polling a finished batch again is safe
    conn.send("written")
    assert conn.recv() == data.tobytes()
    t.close()


def test_a_write_to_an_unreachable_peer_fails_cleanly():
    t = MooncakeTransport()
    buf = np.zeros(4096, dtype=np.uint8)
    desc = t.register_memory(buf.ctypes.data, buf.nbytes)
    with pytest.raises(TransferError, match="could not submit"):
        t.submit_write("127.0.0.1:1", [TransferOp(MemoryRef(desc, 0), MemoryRef(desc, 0), 16)])
    t.close()
