"""Scripted upstream servers that record what they receive: real HTTP on loopback ports.

Router tests need engines whose behaviour they control exactly (a 503, a hang, a stream
that dies after two chunks) and whose received bodies they can inspect. Each
`RecordingUpstream` is an aiohttp server on a free port in the test's event loop; every
request is recorded (path, headers, body, whether the client went away before the answer
finished) and answered by the next scripted reply for its path, or the path's default.

Replies are async callables `(Recorded, web.Request) -> web.StreamResponse`; the helpers
below build the common ones. Handler cancellation is on, so a router that closes its
upstream connection shows up as `Recorded.cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from testbed.ports import free_port


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # True when the client closed the connection before the reply finished.
    cancelled: bool = False
    finished: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


Reply = Callable[[Recorded, web.Request], Awaitable[web.StreamResponse]]


def json_reply(body: Any, status: int = 200) -> Reply:
    async def reply(_rec: Recorded, _req: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    return reply


def text_reply(text: str, status: int) -> Reply:
    async def reply(_rec: Recorded, _req: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status)

    return reply


def sse_reply(
    events: Iterable[Any],
    *,
    die_after: int | None = None,
    gate: asyncio.Event | None = None,
    end_gate: asyncio.Event | None = None,
) -> Reply:
    """Stream `events` as SSE (dicts as JSON, then `[DONE]`).

    `die_after=N`: abort the connection after N events (a worker dying mid-stream).
    `gate`: wait for it after the first event (lets a test act while the stream is open).
    `end_gate`: wait for it after `[DONE]`, before the end of the body (an engine that is
    slow to close its stream).
    """
    events = list(events)

    async def reply(_rec: Recorded, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(req)
        for i, event in enumerate(events):
            if die_after is not None and i == die_after:
                assert req.transport is not None
                req.transport.abort()
                raise asyncio.CancelledError
            data = event if isinstance(event, str) else orjson.dumps(event).decode()
            await resp.write(f"data: {data}\n\n".encode())
            if i == 0 and gate is not None:
                await gate.wait()
        await resp.write(b"data: [DONE]\n\n")
        if end_gate is not None:
            await end_gate.wait()
        await resp.write_eof()
        return resp

    return reply


def hang() -> Reply:
    """Never answer (until the client goes away, which is recorded)."""

    async def reply(_rec: Recorded, _req: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return reply


def after(event: asyncio.Event | Callable[[], Awaitable[Any]], then: Reply, timeout: float = 30.0) -> Reply:
    """Answer with `then` only once `event` is set (or the awaitable finished).

    A test of concurrency: a leg that answers only after its sibling arrived deadlocks a
    router that sends the legs one after the other; the timeout turns that into a 500
    the test sees as a failure.
    """

    async def reply(rec: Recorded, req: web.Request) -> web.StreamResponse:
        try:
            if isinstance(event, asyncio.Event):
                await asyncio.wait_for(event.wait(), timeout)
            else:
                await asyncio.wait_for(event(), timeout)
        except TimeoutError:
            return web.Response(text="sibling leg never arrived", status=500)
        return await then(rec, req)

    return reply


def completion_body(text: str = "hello", *, chat: bool, **extra: Any) -> dict[str, Any]:
    """A minimal OpenAI (chat) completion answer."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": "cmpl-test",
        "object": "chat.completion" if chat else "text_completion",
        "model": "tiny",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        **extra,
    }


def stream_events(tokens: Iterable[str] = ("he", "llo"), *, chat: bool = True) -> list[dict[str, Any]]:
    key = "delta" if chat else "text"
    return [
        {"id": "cmpl-test", "choices": [{"index": 0, key: {"content": t} if chat else t}]} for t in tokens
    ]


async def default_completion(rec: Recorded, req: web.Request) -> web.StreamResponse:
    """What a healthy engine does: stream if asked, else one JSON body."""
    chat = rec.path.endswith("/chat/completions")
    body = rec.json or {}
    if body.get("stream"):
        return await sse_reply(stream_events(chat=chat))(rec, req)
    return await json_reply(completion_body(chat=chat))(rec, req)


class RecordingUpstream:
    """A scripted, recording HTTP server on `127.0.0.1:<free port>`."""

    def __init__(self, name: str = "upstream", models: Iterable[str] = ("tiny",)) -> None:
        self.name = name
        self.models = list(models)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply] = {
            "/health": json_reply({}),
            "/v1/models": json_reply({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}),
            "/v1/chat/completions": default_completion,
            "/v1/completions": default_completion,
        }
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with `replies`, in order."""
        self._scripts[path].extend(replies)

    def set_default(self, path: str, reply: Reply) -> None:
        self._defaults[path] = reply

    def requests(self, path: str | None = None) -> list[Recorded]:
        """Recorded requests (health probes and model lists left out unless asked for)."""
        if path is not None:
            return [r for r in self.received if r.path == path]
        return [r for r in self.received if r.path not in ("/health", "/v1/models")]

    async def wait_for(self, path: str, count: int = 1, within_s: float = 30.0) -> list[Recorded]:
        """Wait until `count` requests to `path` arrived (at most `within_s` seconds)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests(path)) >= count), within_s)
        return self.requests(path)

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        rec = Recorded(req.method, req.path, {k.lower(): v for k, v in req.headers.items()}, await req.read())
        self.received.append(rec)
        async with self._arrived:
            self._arrived.notify_all()
        queue = self._scripts.get(req.path)
        reply = queue.popleft() if queue else self._defaults.get(req.path)
        try:
            if reply is None:
                return web.Response(status=404, text=f"{self.name}: no script for {req.path}")
            resp = await reply(rec, req)
            rec.finished = True
            return resp
        except asyncio.CancelledError:
            rec.cancelled = True
            raise
        finally:
            rec.done.set()

    async def start(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RecordingUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def upstreams(*names: str, models: Iterable[str] = ("tiny",)) -> AsyncIterator[list[RecordingUpstream]]:
    """Several started upstreams, stopped on exit."""
    servers = [RecordingUpstream(n, models) for n in names]
    try:
        for s in servers:
            await s.start()
        yield servers
    finally:
        for s in servers:
            await s.stop()
