"""The out-of-band control channel between producer and consumer (ZMQ over TCP).

One background thread owns every socket of an endpoint (ZMQ sockets are not
thread-safe): a ROUTER bound on the producer's side-channel port, and one DEALER per
producer the consumer talks to. Other threads hand messages over through a queue and
wake the thread through a pipe, so a push request leaves at once (no polling delay).
Malformed messages are logged and dropped; a peer that vanishes just stops answering,
and the callers' deadlines (`holds.py`) take it from there.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import zmq

from kv_connector.messages import Message, decode, encode

logger = logging.getLogger("atom_mesh.kv_connector.side_channel")


@dataclass(frozen=True)
class ReplyTo:
    """Where an incoming message came from, to answer it with `SideChannel.send`."""

    identity: bytes | None = None  # ROUTER peer identity (incoming request)
    address: str | None = None  # producer address (incoming reply on a DEALER)


Handler = Callable[[ReplyTo, Message], None]


class SideChannel:
    def __init__(
        self,
        handler: Handler,
        *,
        bind: tuple[str, int] | None = None,
        tick: Callable[[], None] | None = None,
        tick_interval_s: float = 0.1,
        name: str = "atom-kv-side-channel",
    ) -> None:
        self._handler = handler
        self._tick = tick
        self._tick_ms = int(tick_interval_s * 1000)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self.address: str | None = None
        if bind is not None:
            host, port = bind
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            try:
                self._router.bind(f"tcp://{host}:{port}")
            except zmq.ZMQError as e:
                self._router.close()
                raise RuntimeError(
                    f"KV side channel cannot bind {host}:{port} ({e}); set kv_connector_extra_config "
                    "'side_channel_port' to a free port"
                ) from e
            self.address = f"tcp://{host}:{port}"
        self._dealers: dict[str, zmq.Socket] = {}
        self._outbox: queue.SimpleQueue[tuple[ReplyTo, bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, to: ReplyTo, msg: Message) -> None:
        """Queue `msg` for a peer (thread-safe): to.identity answers a request, to.address starts one."""
        self._outbox.put((to, encode(msg)))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # pipe full: the thread is already awake
            pass

    def close(self) -> None:
        """Stop the IO thread and close its sockets (queued messages are dropped)."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass
        self._thread.join(timeout=5)

    # -- IO thread ---------------------------------------------------------

    def _dealer(self, address: str) -> zmq.Socket:
        sock = self._dealers.get(address)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self._dealers[address] = sock
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _flush_outbox(self) -> None:
        while True:
            try:
                to, data = self._outbox.get_nowait()
            except queue.Empty:
                return
            if to.identity is not None and self._router is not None:
                self._router.send_multipart([to.identity, data])
            elif to.address is not None:
                self._dealer(to.address).send(data)

    def _dispatch(self, to: ReplyTo, data: bytes) -> None:
        try:
            msg = decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            logger.warning("dropping malformed side-channel message (%d bytes): %s", len(data), e)
            return
        try:
            self._handler(to, msg)
        except Exception:  # a handler bug must not kill the channel for every other transfer
            logger.exception("side-channel handler failed on %s", type(msg).__name__)

    def _run(self) -> None:
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r, zmq.POLLIN)
        if self._router is not None:
            self._poller.register(self._router, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(self._poller.poll(self._tick_ms))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                self._flush_outbox()
                for sock, _ in events.items():
                    if sock is self._router:
                        while self._router.poll(0):
                            identity, data = self._router.recv_multipart()
                            self._dispatch(ReplyTo(identity=identity), data)
                    elif isinstance(sock, zmq.Socket):
                        address = next(a for a, s in self._dealers.items() if s is sock)
                        while sock.poll(0):
                            self._dispatch(ReplyTo(address=address), sock.recv())
                if self._tick is not None:
                    try:
                        self._tick()
                    except Exception:
                        logger.exception("side-channel tick failed")
        finally:
            for sock in [*self._dealers.values(), *([self._router] if self._router else [])]:
                sock.close(0)
            os.close(self._wake_r)
            os.close(self._wake_w)
