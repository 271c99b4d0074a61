"""The consumer (decode) side of push-mode KV transfer, engine-neutral.

The engine binding allocates blocks for a request whose KV lives on a producer, then
calls `request()`: we ask the producer (side channel) to push those pages into our
registered memory and track the answer against a deadline. `take_results()` tells the
binding which requests may run (done) and which must fail or recompute (failed); a
producer that dies or never answers turns into a failure after `timeout_s + grace_s`,
never an endless wait.

The grace covers the producer's own deadline check: it starts no write later than
`timeout_s` after receiving the request, so once we give up (and the engine reuses the
blocks) no late write can land in them.

A producer that died is noticed sooner: while transfers wait on it, its side-channel
port is probed every `probe_interval_s`; "connection refused" means its process is
gone (and its writes with it), so those transfers fail at once. A producer that is
merely slow or unreachable (no answer) is waited for until the deadline.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from kv_connector.defaults import TRANSFER_TIMEOUT_S
from kv_connector.holds import ReceiveTracker
from kv_connector.identity import PROTOCOL_VERSION
from kv_connector.layout import KVLayout
from kv_connector.messages import Message, PushRequest, PushResult
from kv_connector.side_channel import ReplyTo, SideChannel
from kv_connector.transport import Transport

logger = logging.getLogger("atom_mesh.kv_connector.consumer")


@dataclass(frozen=True)
class ConsumerConfig:
    engine_id: str
    fingerprint: str
    timeout_s: float = TRANSFER_TIMEOUT_S
    grace_s: float = 5.0
    probe_interval_s: float = 1.0


def producer_gone(address: str, timeout_s: float = 0.5) -> bool:
    """True only if the producer's side-channel port actively refuses connections."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError as e:
        return e.errno == errno.ECONNREFUSED


class KVConsumer:
    def __init__(
        self,
        transport: Transport,
        layout: KVLayout,
        config: ConsumerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._endpoint = transport.engine_descriptor()
        self._layout = layout
        self._cfg = config
        self._clock = clock
        self._lock = threading.Lock()
        self._tracker = ReceiveTracker()
        self._tickets: dict[str, tuple[str, float, str]] = {}  # ticket -> (transfer id, start, producer address)
        self._next_probe = 0.0
        self._channel = SideChannel(self._on_message, tick=self._tick, name="atom-kv-consumer")

    def request(
        self,
        owner: Hashable,
        *,
        transfer_id: str,
        producer_address: str,
        producer_engine_id: str,
        dst_block_ids: list[int],
        first_block: int = 0,
    ) -> None:
        """Ask the producer to push `transfer_id` into `dst_block_ids`; the answer shows up in take_results()."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tracker.start(ticket, owner, deadline=self._clock() + self._cfg.timeout_s + self._cfg.grace_s)
            self._tickets[ticket] = (transfer_id, self._clock(), producer_address)
        self._channel.send(
            ReplyTo(address=producer_address),
            PushRequest(
                transfer_id=transfer_id,
                ticket=ticket,
                producer_engine_id=producer_engine_id,
                consumer_engine_id=self._cfg.engine_id,
                fingerprint=self._cfg.fingerprint,
                consumer_endpoint=self._endpoint,
                consumer_layout=self._layout,
                dst_block_ids=list(dst_block_ids),
                first_block=first_block,
                timeout_s=self._cfg.timeout_s,
                protocol_version=PROTOCOL_VERSION,
            ),
        )

    def fail(self, owner: Hashable, reason: str) -> None:
        """Report a receive that cannot start (bad params) through take_results()."""
        with self._lock:
            self._tracker.fail(owner, reason)

    def take_results(self) -> tuple[set[Hashable], dict[Hashable, str]]:
        """(owners whose KV arrived, {owner: why it failed}) since the last call."""
        self._expire()
        with self._lock:
            return self._tracker.take()

    def num_waiting(self) -> int:
        with self._lock:
            return len(self._tracker)

    def close(self) -> None:
        self._channel.close()

    def _on_message(self, to: ReplyTo, msg: Message) -> None:
        if not isinstance(msg, PushResult):
            logger.warning("consumer ignores %s", type(msg).__name__)
            return
        with self._lock:
            known = self._tracker.complete(msg.ticket, msg.ok, msg.error)
            _, started, _ = self._tickets.pop(msg.ticket, ("", self._clock(), ""))
        logger.debug("push result for %s after %.2f ms: ok=%s", msg.transfer_id, (self._clock() - started) * 1e3, msg.ok)
        if not known:
            logger.warning("late or unknown push result for transfer %s (ok=%s)", msg.transfer_id, msg.ok)
        elif not msg.ok:
            logger.warning("KV push for transfer %s failed: %s", msg.transfer_id, msg.error)

    def _expire(self) -> None:
        with self._lock:
            expired = self._tracker.expire(self._clock())
            ids = [self._tickets.pop(t, (t, 0.0, ""))[0] for t, _ in expired]
        for transfer_id in ids:
            logger.warning("gave up on KV for transfer %s after %.0fs", transfer_id, self._cfg.timeout_s + self._cfg.grace_s)

    def _tick(self) -> None:
        """Side-channel thread: expire, and probe producers we wait on (never on the engine thread)."""
        self._expire()
        now = self._clock()
        with self._lock:
            if now < self._next_probe or not self._tickets:
                return
            self._next_probe = now + self._cfg.probe_interval_s
            addresses = {a for _, _, a in self._tickets.values()}
        for address in addresses:
            if producer_gone(address):
                self._fail_producer(address)

    def _fail_producer(self, address: str) -> None:
        with self._lock:
            tickets = [t for t, (_, _, a) in self._tickets.items() if a == address]
            for t in tickets:
                self._tracker.complete(t, False, f"the producer at {address} is gone (connection refused)")
                self._tickets.pop(t)
        if tickets:
            logger.warning("producer %s is gone: failed %d waiting KV transfers", address, len(tickets))
