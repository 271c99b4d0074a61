"""Subscribe to the engines' KV events and keep the router's `KVBlockIndex` current.

vLLM publishes KV cache changes when started with
`--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557"}'`
(the simulator with `--kv-events`) on a ZMQ PUB socket, in the wire format of
`router.kv_event_wire`. One SUB socket per worker feeds the index.

A grpc:// worker streams the same events over its gRPC channel (`SubscribeKvEvents`,
`router.transports.grpc_kv_events`): no ZMQ port to open or configure.

Where a worker's events come from: the `kv_events_endpoint` it was registered with, else
tcp://<worker host>:<--kv-events-port>, else what the engine says itself: vLLM serves its
publisher settings at `GET /kv_event_sources` (`{"0": {"endpoint": "tcp://*:5557", ...}}`
per data-parallel rank; a wildcard host means the worker's own host).

A gap in the sequence numbers means events were lost (PUB drops when a subscriber lags):
the worker's entries can no longer be trusted, so they are cleared and rebuilt from the
events that follow. A stale entry would send requests to a worker that lacks the prefix;
a missing one only costs a cache hit. Blocks stored before the subscription began are
not known until the engine stores them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import zmq
import zmq.asyncio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.kv_event_wire import BlockRemoved, BlockStored, KVEvent, decode_batch, decode_seq
from router.policies.kv_block_index import KVBlockIndex
from router.transports import Transport
from router.workers.worker import Worker

if TYPE_CHECKING:
    from router.transports.grpc_channel import GrpcChannels

logger = logging.getLogger("atom_mesh.kv_events")


def apply_batch(index: KVBlockIndex, worker_id: str, payload: bytes) -> Counter[str]:
    """Decode one published batch and apply its events; returns the events seen by type.

    Raises ValueError for a payload that is not a KV event batch (nothing is applied).
    """
    events, unknown = decode_batch(payload)
    return apply_events(index, worker_id, events, unknown)


def apply_events(index: KVBlockIndex, worker_id: str, events: Iterable[KVEvent], unknown: int = 0) -> Counter[str]:
    """Apply decoded events (from ZMQ or gRPC) to the index; returns the events seen by type."""
    seen: Counter[str] = Counter()
    for event in events:
        if isinstance(event, BlockStored):
            index.stored(
                worker_id, event.block_hashes, event.parent_block_hash, event.token_ids, event.block_size, event.medium
            )
        elif isinstance(event, BlockRemoved):
            index.removed(worker_id, event.block_hashes, event.medium)
        else:
            index.cleared(worker_id)
        seen[type(event).__name__] += 1
    if unknown:
        seen["unknown"] += unknown
    return seen


class KVEventFeed:
    """One subscription per worker that has a KV events endpoint.

    Wiring: `subscribe` is a worker registration hook, `unsubscribe` a registry removal
    listener, and the feed is a Prometheus collector (indexed blocks, events by type).
    """

    def __init__(self, index: KVBlockIndex, default_port: int | None = None, grpc_channels: GrpcChannels | None = None) -> None:
        self.index = index
        # grpc:// workers stream their events over their channel (`SubscribeKvEvents`).
        self._grpc_channels = grpc_channels
        self._default_port = default_port
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._events: dict[str, Counter[str]] = {}
        self._discovering: set[str] = set()  # workers whose endpoint is being looked up

    @property
    def subscriptions(self) -> set[str]:
        """Ids of the workers whose events are being read."""
        return set(self._tasks)

    async def endpoint_for(self, worker: Worker, session: aiohttp.ClientSession | None) -> str | None:
        """Where `worker` publishes its KV events (see the module docstring), or None."""
        if worker.kv_events_endpoint:
            return worker.kv_events_endpoint
        host = urlsplit(worker.url).hostname or worker.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if self._default_port is not None:
            return f"tcp://{host}:{self._default_port}"
        if session is None:
            return None
        try:
            async with session.get(f"{worker.url}/kv_event_sources", timeout=aiohttp.ClientTimeout(total=5)) as r:
                sources = await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            sources = None
        first = sources.get("0") if isinstance(sources, dict) else None
        endpoint = first.get("endpoint") if isinstance(first, dict) else None
        if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
            return None
        return endpoint.replace("tcp://*:", f"tcp://{host}:", 1)

    async def subscribe(self, worker: Worker, session: aiohttp.ClientSession | None = None) -> None:
        """Registration hook: start listening to `worker`'s KV events, if it publishes any."""
        if worker.worker_id in self._tasks or worker.worker_id in self._discovering:
            return
        if worker.transport is Transport.GRPC:
            self._subscribe_grpc(worker)
            return
        self._discovering.add(worker.worker_id)
        try:
            endpoint = await self.endpoint_for(worker, session)
        finally:
            # Gone from the set if `unsubscribe` ran meanwhile: the worker left, so no listener.
            still_wanted = worker.worker_id in self._discovering
            self._discovering.discard(worker.worker_id)
        if not still_wanted:
            return
        if endpoint is None:
            logger.info("worker publishes no KV events; kv_aware places it by load", extra={"worker": worker.worker_id})
            return
        self._events[worker.worker_id] = Counter()
        self._tasks[worker.worker_id] = asyncio.create_task(
            self._listen(worker.worker_id, endpoint), name=f"kv-events-{worker.worker_id}"
        )
        logger.info("subscribed to KV events", extra={"worker": worker.worker_id, "endpoint": endpoint})

    def _subscribe_grpc(self, worker: Worker) -> None:
        if self._grpc_channels is None:
            return
        from router.transports.grpc_kv_events import listen_grpc

        self._events[worker.worker_id] = Counter()
        channel = self._grpc_channels.channel(worker)
        self._tasks[worker.worker_id] = asyncio.create_task(
            listen_grpc(self.index, worker, channel, self._events[worker.worker_id]), name=f"kv-events-{worker.worker_id}"
        )
        logger.info("subscribed to KV events over gRPC", extra={"worker": worker.worker_id})

    def unsubscribe(self, worker: Worker) -> None:
        self._discovering.discard(worker.worker_id)
        task = self._tasks.pop(worker.worker_id, None)
        if task is not None:
            task.cancel()
        self._events.pop(worker.worker_id, None)
        self.index.cleared(worker.worker_id)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Closes the sockets of listeners cancelled by `unsubscribe` that have not run their
        # cleanup yet too; a plain term() would wait for them forever.
        self._ctx.destroy(linger=0)

    async def _listen(self, worker_id: str, endpoint: str) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        last_seq: int | None = None
        try:
            while True:
                frames = await sock.recv_multipart()
                if len(frames) != 3:
                    logger.warning("KV events: ignoring a message of %d frames from %s", len(frames), endpoint)
                    continue
                _topic, seq_bytes, payload = frames
                seq = decode_seq(seq_bytes)
                if last_seq is not None and seq != last_seq + 1:
                    logger.warning(
                        "KV events from %s skipped from seq %d to %d; forgetting worker %s's blocks until they are stored again",
                        endpoint,
                        last_seq,
                        seq,
                        worker_id,
                    )
                    self.index.cleared(worker_id)
                last_seq = seq
                try:
                    self._events[worker_id].update(apply_batch(self.index, worker_id, payload))
                except ValueError as exc:
                    logger.warning("KV events: dropping a malformed batch from %s: %s", endpoint, exc)
        finally:
            sock.close()

    # -- Prometheus collector ---------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        blocks = GaugeMetricFamily(
            "atom_mesh_kv_indexed_blocks", "KV blocks a worker holds, as its KV events report them.", labels=["worker_id"]
        )
        events = CounterMetricFamily(
            "atom_mesh_kv_events", "KV events received, by worker and type.", labels=["worker_id", "type"]
        )
        for worker_id, seen in list(self._events.items()):
            blocks.add_metric([worker_id], self.index.block_count(worker_id))
            for kind, count in seen.items():
                events.add_metric([worker_id, kind], count)
        yield from (blocks, events)
