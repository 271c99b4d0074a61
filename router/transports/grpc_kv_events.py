"""KV events of a grpc:// worker: `SubscribeKvEvents` batches -> the kv_aware index.

The vLLM servicer relays its engine's ZMQ publisher (the engine still needs
`--kv-events-config` with `"publisher": "zmq"`; the endpoint can stay on loopback) as
smg-grpc-proto `KvEventBatch`es on the worker's gRPC port. Each batch becomes the events
of `router.kv_event_wire` and is applied by `router.kv_events.apply_events`, so the index
cannot tell the two sources apart.

Sequence numbers: batches count up by one; `load_only` batches (load heartbeats) repeat
the last number and carry no events. A gap means lost events: the worker's entries are
cleared (as on ZMQ). A broken stream is resumed from the next number after a backoff;
the servicer replays what it still holds, or sends a snapshot (chunk 0 clears first).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import grpc.aio
from smg_grpc_proto.generated import common_pb2

from router.kv_event_wire import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from router.policies.kv_block_index import KVBlockIndex
from router.transports.grpc_engines import engine_client
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.kv_events")

# Backoff between resubscriptions of a broken stream: doubling, capped.
_RETRY_FIRST_SECS = 0.5
_RETRY_MAX_SECS = 10.0


def events_from_batch(batch: common_pb2.KvEventBatch) -> list[KVEvent]:
    """The batch's events in the ZMQ wire's types (unknown event kinds are skipped)."""
    out: list[KVEvent] = []
    for event in batch.events:
        which = event.WhichOneof("data")
        if which == "stored":
            stored = event.stored
            blocks = list(stored.blocks)
            if not blocks:
                continue
            out.append(
                BlockStored(
                    block_hashes=[b.block_hash for b in blocks],
                    parent_block_hash=stored.parent_block_hash if stored.HasField("parent_block_hash") else None,
                    token_ids=[t for b in blocks for t in b.token_ids],
                    block_size=blocks[0].block_size,
                    medium=stored.medium if stored.HasField("medium") else None,
                )
            )
        elif which == "removed":
            removed = event.removed
            out.append(
                BlockRemoved(
                    block_hashes=list(removed.block_hashes),
                    medium=removed.medium if removed.HasField("medium") else None,
                )
            )
        elif which == "cleared":
            out.append(AllBlocksCleared())
    return out


async def listen_grpc(index: KVBlockIndex, worker: Worker, channel: grpc.aio.Channel, seen: Counter[str]) -> None:
    """Apply `worker`'s KV events to `index` until cancelled, resubscribing when the stream breaks."""
    from router.kv_events import apply_events

    client = engine_client(worker, channel)
    last_seq: int | None = None
    delay = _RETRY_FIRST_SECS
    while True:
        call = client.kv_events(start_sequence_number=0 if last_seq is None else last_seq + 1)
        try:
            async for batch in call:
                delay = _RETRY_FIRST_SECS
                seq = batch.sequence_number
                if not batch.events:
                    continue  # a load heartbeat (load_only) repeats the last number
                if last_seq is not None and seq > last_seq + 1 and not batch.HasField("snapshot"):
                    logger.warning(
                        "KV events over gRPC skipped from seq %d to %d; forgetting worker %s's blocks until stored again",
                        last_seq,
                        seq,
                        worker.worker_id,
                    )
                    index.cleared(worker.worker_id)
                if last_seq is None or seq > last_seq:
                    last_seq = seq
                seen.update(apply_events(index, worker.worker_id, events_from_batch(batch)))
            reason = "stream ended"
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        finally:
            call.cancel()
        logger.info("KV event stream from %s broke (%s); resubscribing in %.1fs", worker.url, reason, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_SECS)
