"""Publish the simulated prefix cache's changes as vLLM KV events over ZMQ (msgpack).

Wire format, as vLLM's `ZmqEventPublisher` sends it (so KV-aware routers can index a
simulated fleet exactly as a real one): a PUB socket sends multipart
`(topic, seq as 8-byte big-endian, payload)`, where payload is a msgpack array
`[timestamp, events]` and each event a map tagged by `"type"`: `BlockStored`
(`block_hashes`, `parent_block_hash`, `token_ids`, `block_size`, `lora_id`, `medium`,
`lora_name`) or `BlockRemoved` (`block_hashes`, `medium`). Block hashes are unsigned 64-bit
integers (vLLM's default, `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`). A ROUTER socket serves
replay: a client sends `(b"", start_seq)` and gets every buffered batch from `start_seq`
on, then `(b"", b"", END_SEQ, b"")`.

Needs `pyzmq` and `msgspec` (the `vllm` extra); imported only when KV events are enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import msgspec
import zmq
import zmq.asyncio

from engine_sim.kv_cache import BlockRemoved, BlockStored

logger = logging.getLogger("atom_mesh.engine_sim")

END_SEQ = (-1).to_bytes(8, "big", signed=True)
_U64 = (1 << 64) - 1


class _StoredWire(msgspec.Struct, tag="BlockStored", tag_field="type"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class _RemovedWire(msgspec.Struct, tag="BlockRemoved", tag_field="type"):
    block_hashes: list[int]
    medium: str | None


class _BatchWire(msgspec.Struct, array_like=True):
    ts: float
    events: list[_StoredWire | _RemovedWire]


def encode_batch(events: list[BlockStored | BlockRemoved], block_size: int, ts: float) -> bytes:
    wire: list[_StoredWire | _RemovedWire] = []
    for e in events:
        if isinstance(e, BlockStored):
            parent = None if e.parent_block_hash is None else e.parent_block_hash & _U64
            wire.append(_StoredWire([h & _U64 for h in e.block_hashes], parent, e.token_ids, block_size, None, "GPU", None))
        else:
            wire.append(_RemovedWire([h & _U64 for h in e.block_hashes], "GPU"))
    return msgspec.msgpack.encode(_BatchWire(ts, wire))


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

    def publish(self, events: list[BlockStored | BlockRemoved]) -> None:
        payload = encode_batch(events, self._block_size, time.time())
        seq, self._seq = self._seq, self._seq + 1
        self._buffer.append((seq, payload))
        # A PUB socket never blocks: with no subscriber (or a slow one) ZMQ drops the message.
        self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                logger.warning("kv events: ignoring a replay request of %d frames (want identity, b'', seq)", len(frames))
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart((client, b"", self._topic, seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        self._replay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replay_task
        self._pub.close(linger=0)
        self._replay.close(linger=0)
