"""The relay's end of its link to the coordinator: `router.decisions` answered remotely.

`RemoteDecisions` asks the coordinator (`coordinator_link`) for admission and placement
and tells it each leg's outcome and each release; the relay keeps copies of the workers
(the table the coordinator pushes) to run legs on. Messages queued in one loop pass go
out in one write, so a request costs the relay two small round trips at most (admission
only when the router has a limit) and one write of its releases and outcomes.

A question whose asker went away (client hang-up, cancellation) may still be answered:
what that answer grants (a slot, a hold) is released at once, so nothing leaks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from router.config import AdmissionConfig
from router.decisions import Held, Placement
from router.errors import ApiError
from router.placement.types import RequestDescriptor
from router.processes import link_wire as wire
from router.workers.registry import WorkerRegistry
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.processes")


class LinkLost(ApiError):
    """The coordinator is gone (the router is stopping or crashed)."""

    def __init__(self) -> None:
        super().__init__(503, "router is restarting (its coordinator process is gone); retry the request", code="shutting_down")


class RelayLink(asyncio.Protocol):
    """The connection: questions out, answers matched to them by sequence number, the
    worker table kept in `registry`, metric requests answered with `metric_samples()`."""

    def __init__(
        self,
        registry: WorkerRegistry,
        metric_samples: Callable[[], list[Any]],
        on_lost: Callable[[], None],
        on_worker: Callable[[Worker], None],
    ) -> None:
        self.registry = registry
        self._on_worker = on_worker
        self._metric_samples = metric_samples
        self._on_lost = on_lost
        self._reader = wire.FrameReader()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_pending = False
        self._seq = 0
        self._answers: dict[int, tuple[asyncio.Future[list[Any]], str]] = {}
        self.closing = False
        # Set by the first table (the coordinator sends it on HELLO): the relay serves only
        # once it knows the workers (their models label the metrics from the first request).
        self.has_table = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        path: str,
        index: int,
        registry: WorkerRegistry,
        metric_samples: Callable[[], list[Any]],
        on_lost: Callable[[], None],
        on_worker: Callable[[Worker], None],
    ) -> RelayLink:
        """`on_worker` sees every worker the table adds or updates, before any plan names it."""
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(lambda: cls(registry, metric_samples, on_lost, on_worker), path)
        link.send([wire.HELLO, wire.VERSION, index])
        return link

    # -- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        answers, self._answers = self._answers, {}
        for fut, _ in answers.values():
            if not fut.done():
                fut.set_exception(LinkLost())
        if not self.closing:
            self._on_lost()

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def send(self, message: list[Any]) -> None:
        if self._transport is None:
            return  # the coordinator is gone; what this would release died with it
        self._out.append(wire.frame(message))
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(b"".join(out))

    # -- questions ----------------------------------------------------------------------

    async def ask(self, op: str, release_op: str, *args: Any) -> list[Any]:
        """Send `[op, seq, *args]` and wait for its answer. Should the asker be cancelled
        first, a grant that still arrives is released with `release_op`."""
        if self._transport is None:
            raise LinkLost()
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._answers[seq] = (fut, release_op)
        self.send([op, seq, *args])
        try:
            return await fut
        except asyncio.CancelledError:
            if op == wire.ADMIT and seq in self._answers:
                self.send([wire.CANCEL, seq])
            raise

    def data_received(self, data: bytes) -> None:
        for message in self._reader.feed(data):
            op = message[0]
            if op == wire.PLACED or op == wire.ADMITTED or op == wire.REFUSED:
                waiting = self._answers.pop(message[1], None)
                if waiting is None:
                    continue
                fut, release_op = waiting
                if not fut.done():
                    fut.set_result(message)
                elif op != wire.REFUSED:  # the asker left: give back what it was granted
                    self.send([release_op, message[-1]])
            elif op == wire.WORKERS:
                self._apply_table(message[1])
                self.has_table.set()
            elif op == wire.METRICS_PLEASE:
                self.send([wire.METRICS, message[1], self._metric_samples()])
            else:
                logger.error("unknown message from the coordinator", extra={"op": op})

    def _apply_table(self, table: list[dict[str, Any]]) -> None:
        registry = self.registry
        ids = {v["id"] for v in table}
        for worker in registry:
            if worker.worker_id not in ids:
                registry.remove(worker.worker_id)
        for v in table:
            found = registry.get(v["id"])
            updated = wire.update_worker(found, v)
            if found is None:
                registry.add(updated)
            self._on_worker(updated)

    def worker(self, worker_id: str) -> Worker:
        found = self.registry.get(worker_id)
        if found is None:
            raise KeyError(worker_id)
        return found


class _Release:
    """A grant held on the coordinator, released by one message (idempotent)."""

    __slots__ = ("_link", "_message")

    def __init__(self, link: RelayLink, op: str, grant_id: int) -> None:
        self._link: RelayLink | None = link
        self._message = [op, grant_id]

    def release(self) -> None:
        if self._link is not None:
            self._link.send(self._message)
            self._link = None


class _NoSlot:
    """Admission with no limit configured: nothing to ask, nothing to hold."""

    def release(self) -> None:
        return None


_NO_SLOT = _NoSlot()


class RemoteDecisions:
    """`router.decisions.Decisions` over the link: the coordinator decides for all relays."""

    def __init__(self, link: RelayLink, admission: AdmissionConfig, *, shared_rate_limit: bool = False) -> None:
        self._link = link
        # Without a concurrency limit or a rate limit, admission admits everything and
        # keeps no state: no need to ask.
        self._ask_admission = (
            admission.max_concurrent_requests > 0 or bool(admission.rate_limit_tokens_per_second) or shared_rate_limit
        )

    async def admit(self) -> Held:
        if not self._ask_admission:
            return _NO_SLOT
        answer = await self._link.ask(wire.ADMIT, wire.RELEASE_SLOT)
        if answer[0] == wire.REFUSED:
            raise wire.decode_error(answer[2])
        return _Release(self._link, wire.RELEASE_SLOT, answer[2])

    async def place(self, descriptor: RequestDescriptor) -> Placement:
        answer = await self._link.ask(wire.PLACE, wire.RELEASE_LOAD, wire.encode_descriptor(descriptor))
        if answer[0] == wire.REFUSED:
            raise wire.decode_error(answer[2])
        hold = _Release(self._link, wire.RELEASE_LOAD, answer[3])
        try:
            plan = wire.decode_plan(answer[2], self._link.worker)
        except KeyError:
            hold.release()
            raise ApiError(
                500, "internal router error: a plan named a worker this process does not know", code="internal_error"
            ) from None
        return Placement(plan, hold)

    def succeeded(self, worker: Worker) -> None:
        self._link.send([wire.SUCCEEDED, worker.worker_id])

    def failed(self, worker: Worker) -> None:
        self._link.send([wire.FAILED, worker.worker_id])
