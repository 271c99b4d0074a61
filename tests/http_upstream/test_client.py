"""The lean upstream client (router.transports.http_upstream) against a real local server.

The server is a bare asyncio TCP server whose answer per request is scripted byte by
byte, so each test controls exactly what the worker does on the wire: Content-Length,
chunked, keep-alive, closing a pooled connection, a reset mid-body, silence. Every test
runs on the default event loop and on uvloop (the router's; see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from router.transports.http_upstream import (
    BadResponse,
    ConnectFailed,
    ConnectionDropped,
    HttpUpstream,
    ReadTimeout,
)
from testbed.ports import free_port
from tests.support.tls import self_signed_cert

HEADERS = {"content-type": "application/json", "x-request-id": "req-1"}


@dataclass
class Received:
    connection: int  # 0-based, in accept order
    head: bytes
    body: bytes


Answer = Callable[[Received, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Worker:
    """A scripted HTTP/1.1 server on 127.0.0.1: `answer` writes each response."""

    answer: Answer
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    # One event per connection, set when the client's side of it is closed (EOF seen).
    client_closed: list[asyncio.Event] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        closed = asyncio.Event()
        self.client_closed.append(closed)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                got = Received(number, head, body)
                self.received.append(got)
                await self.answer(got, reader, writer)
                if writer.is_closing():
                    break
        finally:
            closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[Worker]:
    worker = Worker(answer)
    server = await asyncio.start_server(worker.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    worker.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield worker
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def fixed(body: bytes, *extra: bytes) -> Answer:
    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(body), *extra]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()

    return answer


@pytest.fixture
async def client() -> AsyncIterator[HttpUpstream]:
    http = HttpUpstream()
    yield http
    await http.close()


async def test_content_length_body_and_keep_alive_reuse(client: HttpUpstream) -> None:
    async with serving(fixed(b'{"ok":true}')) as worker:
        for _ in range(3):
            resp = await client.post(worker.url + "/v1/completions", b'{"prompt":"hi"}', HEADERS)
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert await resp.read() == b'{"ok":true}'
            resp.release()
        assert worker.connections == 1, "keep-alive connection not reused"
        first = worker.received[0]
        assert first.head.startswith(b"POST /v1/completions HTTP/1.1\r\n")
        head = first.head.lower()
        assert f"host: 127.0.0.1:{worker.url.rsplit(':', 1)[1]}".encode() in head
        assert b"content-type: application/json" in head and b"x-request-id: req-1" in head
        assert b"content-length: 15" in head
        assert first.body == b'{"prompt":"hi"}'


async def test_chunked_body_is_delivered_as_each_chunk_arrives(client: HttpUpstream) -> None:
    first_seen = asyncio.Event()

    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        # The second chunk goes out only once the client has the first: a client that
        # buffered until the end of the body would never get here.
        await asyncio.wait_for(first_seen.wait(), 10)
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()

    async with serving(answer) as worker:
        resp = await client.post(worker.url + "/v1/chat/completions", b"{}", HEADERS)
        assert resp.status == 200 and resp.headers["transfer-encoding"] == "chunked"
        assert await resp.next_chunk() == b"data: 1"
        first_seen.set()
        rest = [chunk async for chunk in resp.iter_chunks()]
        assert b"".join(rest) == b"data: 2"
        resp.release()
        # The chunked body ended cleanly: the connection is reused.
        first_seen.clear()
        resp = await client.post(worker.url + "/v1/chat/completions", b"{}", HEADERS)
        first_seen.set()
        assert await resp.read() == b"data: 1data: 2"
        resp.release()
        assert worker.connections == 1


async def test_a_pooled_connection_the_worker_closed_is_replaced(client: HttpUpstream) -> None:
    async def answer(got: Received, r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fixed(b"{}")(got, r, writer)
        if got.connection == 0:
            writer.write_eof()  # the worker's keep-alive timeout: it closes the idle connection

    async with serving(answer) as worker:
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        assert await resp.read() == b"{}"
        resp.release()
        # The client sees the close and closes its end (the server's read ends) ...
        await asyncio.wait_for(worker.client_closed[0].wait(), 10)
        # ... so the next request goes out on a fresh connection and succeeds.
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        assert resp.status == 200 and await resp.read() == b"{}"
        resp.release()
        assert worker.connections == 2


async def test_connection_close_answer_is_not_reused(client: HttpUpstream) -> None:
    async with serving(fixed(b"{}", b"Connection: close")) as worker:
        for _ in range(2):
            resp = await client.post(worker.url + "/x", b"{}", HEADERS)
            assert await resp.read() == b"{}"
            resp.release()
        assert worker.connections == 2


async def test_body_without_length_ends_with_the_connection(client: HttpUpstream) -> None:
    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with serving(answer) as worker:
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        assert await resp.read() == b"until the end"
        resp.release()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_reset_mid_body_fails_the_read_and_the_stream(client: HttpUpstream) -> None:
    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        _reset(writer)

    async with serving(answer) as worker:
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        with pytest.raises(ConnectionDropped):
            await resp.read()
        resp.close()
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        received = b""
        with pytest.raises(ConnectionDropped):
            async for chunk in resp.iter_chunks():
                received += chunk
        assert received in (b"", b"partial")  # what arrived before the reset, if anything
        resp.close()
        assert worker.connections == 2


async def test_closed_before_any_answer_is_a_dropped_connection(client: HttpUpstream) -> None:
    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving(answer) as worker:
        with pytest.raises(ConnectionDropped):
            await client.post(worker.url + "/x", b"{}", HEADERS)


async def test_refused_connection_is_connect_failed(client: HttpUpstream) -> None:
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await client.post(f"http://127.0.0.1:{free_port()}/x", b"{}", HEADERS)


async def test_not_http_is_a_bad_response(client: HttpUpstream) -> None:
    async def answer(_got: Received, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with serving(answer) as worker:
        with pytest.raises(BadResponse):
            await client.post(worker.url + "/x", b"{}", HEADERS)


async def test_read_timeout_on_head_and_on_body() -> None:
    async def answer(got: Received, r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if got.body == b"body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await writer.drain()
        await r.read()  # then silence until the client goes away

    http = HttpUpstream(read_timeout_secs=0.2)
    try:
        async with serving(answer) as worker:
            with pytest.raises(ReadTimeout, match="no response head"):
                await http.post(worker.url + "/x", b"head", HEADERS)
            resp = await http.post(worker.url + "/x", b"body", HEADERS)
            assert await resp.next_chunk() == b"half"
            with pytest.raises(ReadTimeout, match="sent nothing"):
                await resp.next_chunk()
            resp.close()
            # Both timed-out connections were closed, not pooled.
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in worker.client_closed)), 10)
    finally:
        await http.close()


async def test_connect_timeout() -> None:
    # A listener whose accept queue is full and never accepted: the SYN goes unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    http = HttpUpstream(connect_timeout_secs=0.3)
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        with pytest.raises(ConnectFailed, match="within 0.3s"):
            await http.post(f"http://127.0.0.1:{port}/x", b"{}", HEADERS)
    finally:
        await http.close()
        for s in fillers:
            s.close()
        listener.close()


async def test_cancelling_the_caller_closes_the_connection(client: HttpUpstream) -> None:
    arrived = asyncio.Event()

    async def answer(_got: Received, r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        arrived.set()
        await r.read()  # never answers; returns when the client closes

    async with serving(answer) as worker:
        task = asyncio.ensure_future(client.post(worker.url + "/x", b"{}", HEADERS))
        await asyncio.wait_for(arrived.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker sees the connection close: that is how an engine learns to abort.
        await asyncio.wait_for(worker.client_closed[0].wait(), 10)


async def test_closing_an_unfinished_stream_closes_the_connection(client: HttpUpstream) -> None:
    async def answer(_got: Received, r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await r.read()

    async with serving(answer) as worker:
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        assert await resp.next_chunk() == b"first"
        resp.release()  # not finished: released early means closed
        await asyncio.wait_for(worker.client_closed[0].wait(), 10)
        resp = await client.post(worker.url + "/x", b"{}", HEADERS)
        resp.close()
        await asyncio.wait_for(worker.client_closed[1].wait(), 10)


async def test_idle_connections_per_worker_are_bounded() -> None:
    http = HttpUpstream(max_idle_per_origin=1)
    try:
        async with serving(fixed(b"{}")) as worker:
            for _ in range(2):  # two at once need two connections; only one stays pooled
                responses = await asyncio.gather(*(http.post(worker.url + "/x", b"{}", HEADERS) for _ in range(2)))
                for resp in responses:
                    assert await resp.read() == b"{}"
                    resp.release()
            assert worker.connections == 3
            await asyncio.wait_for(worker.client_closed[0].wait(), 10)  # the second connection made
    finally:
        await http.close()


async def test_bad_header_value_is_refused(client: HttpUpstream) -> None:
    with pytest.raises(ValueError, match="x-request-id"):
        await client.post("http://127.0.0.1:1/x", b"{}", {"x-request-id": "a\r\nInjected: yes"})


async def test_https_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with serving(fixed(b'{"tls":1}'), tls=server_tls) as worker:
        untrusting = HttpUpstream()
        try:
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.post(worker.url + "/x", b"{}", HEADERS)
        finally:
            await untrusting.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system CA store, as an operator sets it
        trusting = HttpUpstream()
        try:
            for _ in range(2):
                resp = await trusting.post(worker.url + "/x", b"{}", HEADERS)
                assert await resp.read() == b'{"tls":1}'
                resp.release()
            assert worker.connections == 1
        finally:
            await trusting.close()
