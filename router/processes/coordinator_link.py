"""The coordinator's end of the relays' links: the router's one state answering them.

Each relay process holds one Unix-socket connection to the coordinator. Its admission
and placement questions are answered here by the same `LocalDecisions` a one-process
router uses, on the same registry, planner, breakers and admission controller, so every
decision sees every relay's traffic. What a relay holds (admission slots, load on
workers) is kept here under ids the relay releases by; a relay whose connection drops
(it died) has all of it released at once, so no counter outlives it.

The worker table goes to a relay when it connects, before any plan that names a worker it has not been
sent (same connection, so in order), and to every relay when the table changes (checked
every `TABLE_CHECK_SECS`: models found later, engine facts, removals).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, cast

from router.decisions import Held, LocalDecisions
from router.errors import ApiError
from router.placement.types import plan_workers
from router.processes import link_wire as wire
from router.workers.registry import WorkerRegistry

logger = logging.getLogger("atom_mesh.processes")

TABLE_CHECK_SECS = 0.5
# A relay that does not answer a metrics request within this is left out of that scrape.
METRICS_ANSWER_SECS = 2.0


class CoordinatorLink:
    """Serves every relay's link; `start` listens on a Unix socket path."""

    def __init__(self, decisions: LocalDecisions, registry: WorkerRegistry) -> None:
        self.decisions = decisions
        self.registry = registry
        self._relays: set[_RelayConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._table: list[dict[str, Any]] = []
        self._table_ids: frozenset[str] = frozenset()
        self._ids = itertools.count(1)
        self._metric_waiters: dict[int, asyncio.Future[list[Any]]] = {}
        self.path = ""

    @property
    def relays(self) -> int:
        """Relays connected now."""
        return len(self._relays)

    async def start(self, path: str) -> None:
        self.path = path
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _RelayConnection(self), path)
        self._watch = asyncio.create_task(self._watch_table(), name="relay-worker-table")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for relay in list(self._relays):
            relay.close()

    def next_id(self) -> int:
        return next(self._ids)

    # -- the worker table -------------------------------------------------------------

    def table(self) -> tuple[list[dict[str, Any]], frozenset[str]]:
        """The current table, recomputed (and remembered as the latest)."""
        table = [wire.encode_worker(w) for w in self.registry]
        if table != self._table:
            self._table = table
            self._table_ids = frozenset(v["id"] for v in table)
        return self._table, self._table_ids

    def push_table(self) -> None:
        """Send every relay the table if it changed (a worker registered, say)."""
        table, ids = self.table()
        for relay in self._relays:
            relay.send_table_if_stale(table, ids)

    async def _watch_table(self) -> None:
        while True:
            await asyncio.sleep(TABLE_CHECK_SECS)
            self.push_table()

    # -- metrics ------------------------------------------------------------------------

    async def relay_metrics(self) -> list[list[Any]]:
        """Every connected relay's metric samples (`metrics_merge.encode_families`);
        a relay that does not answer in time is left out (and logged)."""
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[list[Any]]] = []
        for relay in list(self._relays):
            seq = self.next_id()
            fut: asyncio.Future[list[Any]] = loop.create_future()
            self._metric_waiters[seq] = fut
            relay.send([wire.METRICS_PLEASE, seq])
            waits.append(fut)
        try:
            done, pending = await asyncio.wait(waits, timeout=METRICS_ANSWER_SECS) if waits else (set(), set())
        finally:
            for seq, fut in list(self._metric_waiters.items()):
                if fut in waits:
                    del self._metric_waiters[seq]
        if pending:
            logger.warning("relays did not answer the metrics request in time", extra={"missing": len(pending)})
        return [f.result() for f in done if not f.cancelled() and f.exception() is None]

    def metrics_answered(self, seq: int, samples: list[Any]) -> None:
        fut = self._metric_waiters.get(seq)
        if fut is not None and not fut.done():
            fut.set_result(samples)

    def connected(self, relay: _RelayConnection) -> None:
        self._relays.add(relay)

    def disconnected(self, relay: _RelayConnection) -> None:
        self._relays.discard(relay)


class _RelayConnection(asyncio.Protocol):
    """One relay's link: its questions answered, what it holds kept until released."""

    def __init__(self, link: CoordinatorLink) -> None:
        self._link = link
        self._reader = wire.FrameReader()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_pending = False
        self._slots: dict[int, Held] = {}
        self._holds: dict[int, Held] = {}
        self._admits: dict[int, asyncio.Task[None]] = {}
        # The table last sent to this relay (identity: `CoordinatorLink.table` keeps the
        # same list while nothing changed) and its worker ids.
        self._sent_table: list[dict[str, Any]] | None = None
        self._sent_ids: frozenset[str] | None = None
        self.index = -1

    # -- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._link.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.disconnected(self)
        for task in self._admits.values():
            task.cancel()
        held = [*self._slots.values(), *self._holds.values()]
        self._slots.clear()
        self._holds.clear()
        for h in held:
            h.release()
        if held:
            logger.warning("relay link lost; released what it held", extra={"relay": self.index, "released": len(held)})

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def send(self, message: list[Any]) -> None:
        """Queue a message; everything queued in one loop pass goes out in one write."""
        self._out.append(wire.frame(message))
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def send_table_if_stale(self, table: list[dict[str, Any]], ids: frozenset[str]) -> None:
        if self._sent_table is not table:
            self._sent_table = table
            self._sent_ids = ids
            self.send([wire.WORKERS, table])

    # -- messages -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        for message in self._reader.feed(data):
            op = message[0]
            if op == wire.PLACE:
                self._place(message[1], message[2])
            elif op == wire.RELEASE_LOAD:
                held = self._holds.pop(message[1], None)
                if held is not None:
                    held.release()
            elif op == wire.SUCCEEDED or op == wire.FAILED:
                worker = self._link.registry.get(message[1])
                if worker is not None:  # else removed meanwhile: nothing to record
                    if op == wire.SUCCEEDED:
                        self._link.decisions.succeeded(worker)
                    else:
                        self._link.decisions.failed(worker)
            elif op == wire.ADMIT:
                seq = message[1]
                task = asyncio.get_running_loop().create_task(self._admit(seq))
                self._admits[seq] = task
            elif op == wire.RELEASE_SLOT:
                slot = self._slots.pop(message[1], None)
                if slot is not None:
                    slot.release()
            elif op == wire.CANCEL:
                waiting = self._admits.pop(message[1], None)
                if waiting is not None:
                    waiting.cancel()
            elif op == wire.METRICS:
                self._link.metrics_answered(message[1], message[2])
            elif op == wire.HELLO:
                if message[1] != wire.VERSION:
                    logger.error("relay speaks another link version; closing it", extra={"version": message[1]})
                    self.close()
                    return
                self.index = message[2]
                # The table now, so the relay knows every worker before its first request.
                table, ids = self._link.table()
                self.send_table_if_stale(table, ids)
            else:
                logger.error("unknown message on a relay link; closing it", extra={"op": op})
                self.close()
                return

    def _place(self, seq: int, descriptor: list[Any]) -> None:
        try:
            placement = self._link.decisions.place_now(wire.decode_descriptor(descriptor))
        except ApiError as err:
            self.send([wire.REFUSED, seq, wire.encode_error(err)])
            return
        plan = placement.plan
        known = self._sent_ids
        if known is None or any(w.worker_id not in known for w in plan_workers(plan)):
            table, ids = self._link.table()
            self.send_table_if_stale(table, ids)
        hold_id = self._link.next_id()
        self._holds[hold_id] = placement.hold
        self.send([wire.PLACED, seq, wire.encode_plan(plan), hold_id])

    async def _admit(self, seq: int) -> None:
        try:
            slot = await self._link.decisions.admit()
        except ApiError as err:
            self.send([wire.REFUSED, seq, wire.encode_error(err)])
            return
        finally:
            self._admits.pop(seq, None)
        if self._transport is None or self._transport.is_closing():
            slot.release()  # the relay is gone
            return
        slot_id = self._link.next_id()
        self._slots[slot_id] = slot
        self.send([wire.ADMITTED, seq, slot_id])

