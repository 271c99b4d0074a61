"""Raw KV transfer bandwidth of the kv_connector core vs a plain loopback copy.

Two processes on loopback. The receiver registers a KV-shaped buffer (layers x blocks x
page); the sender pushes the pages of one big "request" with the same plan the
connector uses (`plan_copies`), over the Mooncake transport, in three shapes:
  - contiguous blocks, one batch        (pages coalesce into one op per layer)
  - scattered blocks, one batch         (one op per page, the worst case)
  - scattered blocks, one batch per layer, all in flight (the connector's pipelined mode)
The baseline moves the same bytes through a plain TCP socket on loopback between the
same two processes (sendall / recv_into), i.e. what any copy over loopback costs.

Run: .venv/bin/python benchmarks/kv_transfer.py [--mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import socket
import statistics
import time

import numpy as np

from kv_connector.layout import KVLayout, Region, plan_copies
from kv_connector.mooncake import MooncakeTransport
from kv_connector.transport import BatchState

PAGE = 64 * 1024  # one CPU page of the tiny test model: 128 tokens x 1 KV head x 2*64 x fp32


def _shape(total_mib: int) -> tuple[int, int]:
    layers = 32
    blocks = max(1, total_mib * 1024 * 1024 // (layers * PAGE))
    return layers, blocks


def _layout(mem: bytes, layers: int, blocks: int) -> KVLayout:
    return KVLayout(tuple(Region(0, i * blocks * PAGE, PAGE, PAGE, blocks) for i in range(layers)), (mem,))


def _receiver(conn, total_mib: int) -> None:
    layers, blocks = _shape(total_mib)
    t = MooncakeTransport()
    kv = np.zeros(layers * blocks * PAGE, dtype=np.uint8)
    desc = t.register_memory(kv.ctypes.data, kv.nbytes)
    server = socket.create_server(("127.0.0.1", 0))
    conn.send((t.engine_descriptor(), desc, server.getsockname()[1]))
    sock, _ = server.accept()
    view = memoryview(kv)
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            break
        if cmd == "socket":
            got = 0
            while got < kv.nbytes:
                got += sock.recv_into(view[got:], kv.nbytes - got)
            conn.send("ok")
        elif cmd == "checksum":
            conn.send(int(kv[::4099].astype(np.uint64).sum()))
    sock.close()
    server.close()
    t.close()


def _push(t: MooncakeTransport, peer: str, plan, per_layer: bool) -> None:
    if not per_layer:
        t.write(peer, [op for ops in plan for op in ops])
        return
    handles = [t.submit_write(peer, ops) for ops in plan]
    for h in handles:
        while (state := t.poll(h)) is BatchState.PENDING:
            pass
        if state is BatchState.FAILED:
            raise RuntimeError("batch failed")


def run(total_mib: int = 256, repeat: int = 3) -> list[dict]:
    """Measure every shape; returns rows {name, gbps, seconds, bytes}."""
    layers, blocks = _shape(total_mib)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child, total_mib), daemon=True)
    proc.start()
    try:
        endpoint, remote_desc, sock_port = parent.recv()
        t = MooncakeTransport()
        src = np.random.default_rng(0).integers(0, 256, layers * blocks * PAGE, dtype=np.uint8)
        local = _layout(t.register_memory(src.ctypes.data, src.nbytes), layers, blocks)
        remote = _layout(remote_desc, layers, blocks)
        peer = t.connect(endpoint)
        sock = socket.create_connection(("127.0.0.1", sock_port))
        ids = list(range(blocks))
        shuffled = ids[:]
        random.Random(0).shuffle(shuffled)
        shapes = {
            "mooncake, contiguous blocks, 1 batch": (plan_copies(local, ids, remote, ids), False),
            "mooncake, scattered blocks, 1 batch": (plan_copies(local, ids, remote, shuffled), False),
            "mooncake, scattered, batch per layer (pipelined)": (plan_copies(local, ids, remote, shuffled), True),
        }
        nbytes = src.nbytes
        rows = []
        for name, (plan, per_layer) in shapes.items():
            _push(t, peer, plan, per_layer)  # warm-up (handshake, page faults)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                _push(t, peer, plan, per_layer)
                times.append(time.perf_counter() - start)
            rows.append({"name": name, "seconds": statistics.median(times), "bytes": nbytes})
        parent.send("checksum")
        expected_dst = np.zeros_like(src)
        for s, d in zip(ids, shuffled, strict=True):  # the last pushed shape wrote block s into d
            for layer in range(layers):
                base = layer * blocks * PAGE
                expected_dst[base + d * PAGE : base + (d + 1) * PAGE] = src[base + s * PAGE : base + (s + 1) * PAGE]
        if parent.recv() != int(expected_dst[::4099].astype(np.uint64).sum()):
            raise RuntimeError("the receiver's buffer does not hold the pushed pages")
        times = []
        for _ in range(repeat + 1):
            parent.send("socket")
            start = time.perf_counter()
            sock.sendall(memoryview(src))
            parent.recv()
            times.append(time.perf_counter() - start)
        rows.append({"name": "plain TCP loopback copy (baseline)", "seconds": statistics.median(times[1:]), "bytes": nbytes})
        sock.close()
        parent.send("stop")
        t.close()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    for row in rows:
        row["gbps"] = row["bytes"] / row["seconds"] / 1e9
    return rows


def format_table(rows: list[dict]) -> str:
    base = rows[-1]["gbps"]
    lines = [f"{'shape':52} {'MiB':>6} {'ms':>8} {'GB/s':>7} {'vs loopback':>11}"]
    for r in rows:
        lines.append(
            f"{r['name']:52} {r['bytes'] / 2**20:6.0f} {r['seconds'] * 1e3:8.1f} {r['gbps']:7.2f} {r['gbps'] / base:10.0%}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(format_table(run(args.mib, args.repeat)))


if __name__ == "__main__":
    main()
