"""A backend that holds thousands of streams open: each POST is answered by SSE token events
trickled over a fixed time, then `data: [DONE]`.

    python -m benchmarks.trickle_backend --port P [--seconds 2] [--events 8]

It measures how many concurrent streams a router can hold, so the backend itself must be far
cheaper per stream than any router: a bare asyncio protocol (no framework), one timer per
stream, events pre-encoded once. GET answers at once: /v1/models the model list, anything
else (health checks) the fixed JSON body.
HTTP/1.1 keep-alive with chunked bodies, so routers may pool their upstream connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, cast

from benchmarks.capacity_bodies import FIXED_CHAT_BODY, MODELS_BODY, SSE_DONE, sse_event_bodies

_HEAD_END = b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class TrickleProtocol(asyncio.Protocol):
    """One client connection: parses requests in order and answers each one."""

    def __init__(self, events: list[bytes], interval_s: float) -> None:
        self._events = events
        self._interval = interval_s
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a stream is being written; later requests wait in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._busy and self._transport is not None:
            end = self._buf.find(_HEAD_END)
            if end < 0:
                return
            head = self._buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + len(_HEAD_END) + length
            if len(self._buf) < total:
                return
            self._buf = self._buf[total:]
            if head.startswith("POST"):
                self._start_stream()
            else:
                body = MODELS_BODY if head.startswith("GET /v1/models") else FIXED_CHAT_BODY
                self._transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    def _start_stream(self) -> None:
        assert self._transport is not None
        self._busy = True
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self._next_event(0)

    def _next_event(self, index: int) -> None:
        self._timer = None
        if self._transport is None:
            return
        if index < len(self._events):
            self._transport.write(_chunk(self._events[index]))
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._next_event, index + 1)
            return
        self._transport.write(_chunk(SSE_DONE) + b"0\r\n\r\n")
        self._busy = False
        self._serve_buffered()


async def serve(host: str, port: int, seconds: float, events: int) -> None:
    bodies = sse_event_bodies(events)
    interval = seconds / events
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TrickleProtocol(bodies, interval), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when installed (it is with the router's uvicorn[standard]): cheaper per event."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trickle_backend", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=2.0, help="How long each streamed answer takes.")
    p.add_argument("--events", type=int, default=8, help="Token events per answer, evenly spaced.")
    args = p.parse_args()
    print(json.dumps({"listening": f"http://{args.host}:{args.port}"}), flush=True)
    _event_loop_runner()(serve(args.host, args.port, args.seconds, args.events))


if __name__ == "__main__":
    main()
