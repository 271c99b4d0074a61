"""The producer (prefill) side of push-mode KV transfer, engine-neutral.

The engine binding calls `hold()` when a prefill finishes (its blocks stay allocated)
and frees a request's blocks when its key shows up in `take_finished()`. Everything
else happens on the side channel: a consumer's `PushRequest` claims the hold, a pool
thread writes the pages into the consumer's memory through the transport, and a
`PushResult` goes back. Holds that nobody claims expire after `hold_ttl_s`; a push
never starts a write past the consumer's deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kv_connector.defaults import HOLD_TTL_S
from kv_connector.holds import HeldTransfer, HoldTable
from kv_connector.identity import version_problem
from kv_connector.layout import KVLayout, LayoutMismatch, plan_copies
from kv_connector.messages import Hold, Message, PushRequest, PushResult
from kv_connector.side_channel import ReplyTo, SideChannel
from kv_connector.transport import BatchState, TransferError, TransferOp, Transport

logger = logging.getLogger("atom_mesh.kv_connector.producer")
_ENDED_MEMORY = 4096  # recently ended transfer ids, to refuse late requests at once


@dataclass(frozen=True)
class ProducerConfig:
    engine_id: str
    fingerprint: str
    hold_ttl_s: float = HOLD_TTL_S
    # Regions (layers) per write batch; 0 = the whole transfer in one batch. Batches are
    # submitted back to back, so several are in flight at once (pipelined).
    regions_per_batch: int = 0
    max_parallel_pushes: int = 4
    write_attempts: int = 3  # a failed batch (e.g. a TCP stall on an overloaded host) is retried


@dataclass
class _Parked:
    to: ReplyTo
    request: PushRequest
    deadline: float


class KVProducer:
    def __init__(
        self,
        transport: Transport,
        layout: KVLayout,
        config: ProducerConfig,
        *,
        bind: tuple[str, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._layout = layout
        self._cfg = config
        self._clock = clock
        self._lock = threading.Lock()
        self._holds = HoldTable()
        self._parked: dict[str, _Parked] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # transfer id -> why it ended
        self._finished: set[Hashable] = set()
        self._pool = ThreadPoolExecutor(config.max_parallel_pushes, thread_name_prefix="atom-kv-push")
        self._channel = SideChannel(self._on_message, bind=bind, tick=self._tick, name="atom-kv-producer")

    @property
    def address(self) -> str:
        assert self._channel.address is not None
        return self._channel.address

    def hold(self, transfer_id: str, owner: Hashable, block_ids: list[int]) -> None:
        """Keep `block_ids` for a consumer to claim; `owner` comes back via take_finished().

        Engines call this directly or send a `Hold` message to the side channel (which
        does not wait for the engine's next step)."""
        with self._lock:
            if transfer_id in self._holds or transfer_id in self._ended:
                logger.warning("ignoring a repeated hold for transfer %s", transfer_id)
                return
            self._holds.add(transfer_id, owner, block_ids, now=self._clock(), ttl_s=self._cfg.hold_ttl_s)
            parked = self._parked.pop(transfer_id, None)
            hold = self._holds.claim(transfer_id) if parked else None
        if parked and hold:
            self._start(parked.to, parked.request, hold, parked.deadline)

    def take_finished(self) -> set[Hashable]:
        """Owners whose blocks may be freed now (pushed, failed or expired)."""
        with self._lock:
            done, self._finished = self._finished, set()
        return done

    def num_held(self) -> int:
        with self._lock:
            return len(self._holds)

    def num_parked(self) -> int:
        """Push requests that arrived before their hold and wait for it."""
        with self._lock:
            return len(self._parked)

    def close(self) -> None:
        self._channel.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- side channel --------------------------------------------------------

    def _reply(self, to: ReplyTo, req: PushRequest, ok: bool, error: str = "", nbytes: int = 0) -> None:
        self._channel.send(to, PushResult(req.transfer_id, req.ticket, ok, error, nbytes))

    def _reject_reason(self, req: PushRequest) -> str | None:
        # The version first: a consumer of another build may mean other things by every other field.
        problem = version_problem(req.protocol_version, "consumer")
        if problem:
            return problem
        if req.producer_engine_id != self._cfg.engine_id:
            return (
                f"stale transfer: this producer is engine {self._cfg.engine_id}, not {req.producer_engine_id} "
                "(it restarted or the params are from another instance); re-run the prefill"
            )
        if req.fingerprint != self._cfg.fingerprint:
            return (
                f"KV fingerprint mismatch (producer {self._cfg.fingerprint}, consumer {req.fingerprint}): "
                "different model or KV format"
            )
        return None

    def _on_message(self, to: ReplyTo, msg: Message) -> None:
        if isinstance(msg, Hold):
            if msg.engine_id != self._cfg.engine_id:
                logger.warning("dropping a hold for engine %s (this is %s)", msg.engine_id, self._cfg.engine_id)
            else:
                self.hold(msg.transfer_id, msg.owner, msg.block_ids)
            return
        if not isinstance(msg, PushRequest):
            logger.warning("producer ignores %s", type(msg).__name__)
            return
        reason = self._reject_reason(msg)
        if reason:
            self._reply(to, msg, False, reason)
            return
        deadline = self._clock() + msg.timeout_s
        with self._lock:
            hold = self._holds.claim(msg.transfer_id)
            if hold is None:
                ended = self._ended.get(msg.transfer_id)
                if ended is None and msg.transfer_id in self._holds:
                    ended = "already being pushed to another request"
                if ended is None:
                    # The consumer can be faster than our engine loop: wait for the hold.
                    self._parked[msg.transfer_id] = _Parked(to, msg, deadline)
                    return
        if hold is None:
            self._reply(to, msg, False, f"transfer {msg.transfer_id} is not available: {ended}")
            return
        self._start(to, msg, hold, deadline)

    def _remember_end(self, transfer_id: str, why: str) -> None:
        """Caller holds the lock. Late requests for an ended transfer are refused at once."""
        self._ended[transfer_id] = why
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _tick(self) -> None:
        now = self._clock()
        with self._lock:
            for transfer_id, owner in self._holds.expire(now):
                self._finished.add(owner)
                self._remember_end(transfer_id, "expired: no consumer claimed it in time")
                logger.warning("KV hold for %s expired after %.0fs without a consumer", owner, self._cfg.hold_ttl_s)
            late = [t for t, p in self._parked.items() if p.deadline <= now]
            parked = [self._parked.pop(t) for t in late]
        for p in parked:
            self._reply(p.to, p.request, False, f"transfer {p.request.transfer_id} is unknown to this producer")

    # -- pushing ---------------------------------------------------------------

    def _start(self, to: ReplyTo, req: PushRequest, hold: HeldTransfer, deadline: float) -> None:
        self._pool.submit(self._push, to, req, hold, deadline)

    def _push(self, to: ReplyTo, req: PushRequest, hold: HeldTransfer, deadline: float) -> None:
        ok, error, nbytes = False, "", 0
        started = time.perf_counter()
        try:
            src = hold.block_ids[req.first_block : req.first_block + len(req.dst_block_ids)]
            if len(src) != len(req.dst_block_ids):
                raise LayoutMismatch(
                    f"consumer asked for {len(req.dst_block_ids)} blocks from block {req.first_block}, "
                    f"but this prefill holds {len(hold.block_ids)}"
                )
            plan = plan_copies(self._layout, src, req.consumer_layout, req.dst_block_ids)
            peer = self._transport.connect(req.consumer_endpoint)
            nbytes = self._write_with_retries(peer, plan, deadline, req.transfer_id)
            ok = True
        except (TransferError, LayoutMismatch) as e:
            error = str(e)
        except Exception as e:  # never leave the consumer without an answer
            logger.exception("push of %s failed", req.transfer_id)
            error = f"producer error: {e}"
        finally:
            with self._lock:
                owner = self._holds.release(req.transfer_id)
                if owner is not None:
                    self._finished.add(owner)
                self._remember_end(req.transfer_id, "already pushed" if ok else f"push failed: {error}")
            self._reply(to, req, ok, error, nbytes)
            logger.debug(
                "push %s: ok=%s, %d bytes in %.2f ms", req.transfer_id, ok, nbytes, (time.perf_counter() - started) * 1e3
            )

    def _write_with_retries(self, peer: str, plan: list[list[TransferOp]], deadline: float, transfer_id: str) -> int:
        """Rewrite the whole plan after a failed batch (writes are idempotent: the consumer
        still waits on these blocks) until it lands, attempts run out or the deadline passes."""
        for attempt in range(1, self._cfg.write_attempts + 1):
            try:
                return self._write(peer, plan, deadline)
            except TransferError as e:
                if attempt == self._cfg.write_attempts or self._clock() > deadline:
                    raise
                logger.warning("push %s attempt %d failed (%s); retrying", transfer_id, attempt, e)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def _write(self, peer: str, plan: list[list[TransferOp]], deadline: float) -> int:
        """Write the plan in batches of `regions_per_batch` regions, all in flight at once."""
        step = self._cfg.regions_per_batch or len(plan) or 1
        batches = [[op for ops in plan[i : i + step] for op in ops] for i in range(0, len(plan), step)]
        batches = [b for b in batches if b]
        nbytes = sum(op.length for b in batches for op in b)
        if len(batches) == 1:
            if self._clock() > deadline:
                raise TransferError("consumer deadline passed before the push started")
            self._transport.write(peer, batches[0])
            return nbytes
        handles = []
        for batch in batches:
            if self._clock() > deadline:
                raise TransferError("consumer deadline passed during the push")
            handles.append(self._transport.submit_write(peer, batch))
        for handle in handles:
            while (state := self._transport.poll(handle)) is BatchState.PENDING:
                if self._clock() > deadline:
                    raise TransferError("consumer deadline passed during the push")
                time.sleep(0.0002)
            if state is BatchState.FAILED:
                raise TransferError("a KV write batch failed")
        return nbytes
