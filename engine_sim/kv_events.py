"""Publish the simulated prefix cache's changes as vLLM KV events over ZMQ (msgpack).

The wire format is vLLM's `ZmqEventPublisher`'s, as `router.kv_event_wire` defines it for
the router too, so KV-aware routers index a simulated fleet exactly as a real one: a PUB
socket for the batches and a ROUTER socket that replays the buffered ones. Block hashes
go out as unsigned 64-bit ints (vLLM's default), stored blocks on the "GPU" medium.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import zmq
import zmq.asyncio

from engine_sim import kv_cache
from router import kv_event_wire as wire

logger = logging.getLogger("atom_mesh.engine_sim")

_MEDIUM = "GPU"


def encode_batch(events: list[kv_cache.BlockStored | kv_cache.BlockRemoved], block_size: int, ts: float) -> bytes:
    """One payload for the simulated cache's changes of one step."""
    out: list[wire.KVEvent] = []
    for e in events:
        hashes: list[wire.BlockHash] = [wire.external_block_hash(h) for h in e.block_hashes]
        if isinstance(e, kv_cache.BlockStored):
            parent = None if e.parent_block_hash is None else wire.external_block_hash(e.parent_block_hash)
            out.append(
                wire.BlockStored(
                    block_hashes=hashes, parent_block_hash=parent, token_ids=e.token_ids, block_size=block_size, medium=_MEDIUM
                )
            )
        else:
            out.append(wire.BlockRemoved(block_hashes=hashes, medium=_MEDIUM))
    return wire.encode_batch(out, ts)


class KVEventPublisher:
    """One worker's PUB + replay ROUTER sockets, bound on free (or given) TCP ports."""

    def __init__(self, host: str, block_size: int, *, topic: str = "", buffer_steps: int = 10_000) -> None:
        self._ctx = zmq.asyncio.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay = self._ctx.socket(zmq.ROUTER)
        self.endpoint = self._bind(self._pub, host)
        self.replay_endpoint = self._bind(self._replay, host)
        self._topic = topic.encode()
        self._block_size = block_size
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay(), name="kv-events-replay")

    @staticmethod
    def _bind(sock: zmq.asyncio.Socket, host: str) -> str:
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"

    def publish(self, events: list[kv_cache.BlockStored | kv_cache.BlockRemoved]) -> None:
        payload = encode_batch(events, self._block_size, time.time())
        seq, self._seq = self._seq, self._seq + 1
        self._buffer.append((seq, payload))
        # A PUB socket never blocks: with no subscriber (or a slow one) ZMQ drops the message.
        self._pub.send_multipart((self._topic, wire.encode_seq(seq), payload), flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                logger.warning("kv events: ignoring a replay request of %d frames (want identity, b'', seq)", len(frames))
                continue
            client, _, start = frames
            start_seq = wire.decode_seq(start)
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart((client, b"", self._topic, wire.encode_seq(seq), payload))
            await self._replay.send_multipart((client, b"", b"", wire.END_SEQ, b""))

    async def close(self) -> None:
        self._replay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replay_task
        self._pub.close(linger=0)
        self._replay.close(linger=0)
