"""HTTP/1.1 to workers: the lean client that carries every inference leg.

Why not aiohttp: on a router whose upstream answers in microseconds, aiohttp's client
(request and response objects, header merging through multidict and yarl, its stream
reader) was a third of the router's CPU (docs/router-capacity.md). A leg needs much
less: a POST of bytes already in hand, the status and a header or two, and the body
passed through as it arrives. So this module keeps, per worker origin, a stack of idle
keep-alive connections, each an `asyncio.Protocol` feeding httptools' response parser;
the request line and fixed headers are built once per URL.

What it guarantees:
- Pooling: idle connections are kept per origin, at most `max_idle_per_origin`, for at
  most `idle_timeout_secs` (below uvicorn's 5 s keep-alive, which vLLM and SGLang serve
  with, so the pool drops a connection before the server would). A connection the server
  closed while idle is dropped when the close arrives; a response that says
  `Connection: close` (or HTTP/1.0) is never reused.
- Retry rule: a pooled connection found closed before anything was written is replaced
  by a fresh one. Once a request was written, any failure goes to the caller (the
  dispatcher's retry rules decide), never a silent resend of a generation request.
- Bodies: Content-Length, chunked or until-close; `next_chunk()` hands over what arrived
  since the last call (never waits for more than one chunk), and reading from the socket
  pauses while more than `_HIGH_WATER` bytes wait for the consumer (back-pressure).
- Timeouts: `connect_timeout_secs` for the TCP (and TLS) connect; `read_timeout_secs`
  (None: none) for each wait on the worker; the request deadline is the caller's
  (cancelling the awaiting task closes the connection).
- `close()` on an unfinished response closes its connection, so the engine sees the
  client go away and aborts the generation.
- Errors are `UpstreamError`s (connect failed, connection dropped, bad response, read
  timeout), which the adapters turn into `LegFailure` and the dispatcher into the router's
  one error tree (router.errors). `https://` workers use TLS with the system's CAs
  (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Buffered response bytes above which reading from the worker pauses, and below which it resumes.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """A leg failed below HTTP: no connection, a dropped connection, an unparseable answer."""


class ConnectFailed(UpstreamError):
    """No connection to the worker (refused, unreachable, TLS failed, connect timed out)."""


class ConnectionDropped(UpstreamError):
    """The worker closed or reset the connection before the response was complete."""


class BadResponse(UpstreamError):
    """The worker's bytes are not an HTTP/1.x response."""


class ReadTimeout(UpstreamError):
    """The worker sent nothing for `read_timeout_secs`."""


@dataclass(frozen=True)
class _Target:
    """One URL, parsed once: where to connect and the request's fixed first lines."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool key
    host: str
    port: int
    tls: bool
    head: bytes  # b"POST /path HTTP/1.1\r\nHost: ...\r\nAccept: */*\r\n" without the method


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{port}"
    head = f" {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: */*\r\n".encode("latin-1")
    return _Target((parts.scheme, host, port), host, port, tls, head)


def _header_block(headers: Mapping[str, str], length: int) -> bytes:
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a character HTTP does not allow")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


class UpstreamResponse:
    """One response: status and headers once `HttpUpstream.request` returns, then the body.

    Every path must end in `release()` (after the whole body was read: the connection goes
    back to the pool) or `close()` (anything else: the connection is closed).
    """

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_chunks",
        "_buffered",
        "_waiter",
        "_complete",
        "_error",
        "_finished",
        "_whole",
    )

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False  # the whole body arrived
        self._error: UpstreamError | None = None
        self._finished = False  # released or closed
        self._whole = False  # read() is collecting the whole body: no back-pressure

    @property
    def complete(self) -> bool:
        return self._complete

    async def next_chunk(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some when none
        did); b"" at the end of the body. Raises `UpstreamError` if the body breaks off."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        if self._buffered > _LOW_WATER:
            self._conn.resume_reading()
        self._buffered = 0
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.next_chunk():
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        self._conn.resume_reading()
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        return data

    def release(self) -> None:
        """Done with a fully read response: its connection goes back to the pool if the
        worker allows it; an unfinished response is closed instead."""
        if self._finished:
            return
        self._finished = True
        self._conn.finished(self, reusable=self._complete)

    def close(self) -> None:
        """Done early (client gone, error, timeout): close the connection so the worker
        stops working on the request."""
        if self._finished:
            return
        self._finished = True
        self._conn.finished(self, reusable=False)

    async def _wait(self) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        timeout = self._conn.read_timeout
        try:
            if timeout is None:
                await waiter
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await waiter
                except TimeoutError:
                    raise ReadTimeout(f"{self._conn.name} sent nothing for {timeout:g}s") from None
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- fed by the connection -------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._whole:
            self._conn.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; serves one request at a time."""

    def __init__(self, pool: _OriginPool, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self.pool = pool
        self.loop = loop
        self.name = pool.name
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.headers_arrived: asyncio.Future[None] | None = None
        self.closed = False
        self.reusable = False  # the last response ended with keep-alive allowed
        self.idle_since = 0.0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reading_paused = False

    # -- use ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> UpstreamResponse:
        assert self.transport is not None and self.response is None
        response = self.response = UpstreamResponse(self)
        self.headers_arrived = self.loop.create_future()
        self.reusable = False
        self.transport.write(data)
        return response

    def finished(self, response: UpstreamResponse, *, reusable: bool) -> None:
        if response is not self.response:
            return
        self.response = None
        self.headers_arrived = None
        if reusable and self.reusable and not self.closed:
            self.resume_reading()
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(BadResponse(f"{self.name} sent a response that is not HTTP/1.x: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if self.response is None or self.response.complete:
            return
        if self.headers_arrived is not None and self.headers_arrived.done() and self._body_until_close():
            self.response._end()  # a body without length ends with the connection
            return
        reason = f": {exc!r}" if exc is not None else ""
        self._broken(ConnectionDropped(f"{self.name} closed the connection before the response was complete{reason}"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        response.headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self._raw_headers}
        self._raw_headers = []
        if self.headers_arrived is not None and not self.headers_arrived.done():
            self.headers_arrived.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.response is not None:
            self.response._end()

    # -- helpers -----------------------------------------------------------------------------

    def _body_until_close(self) -> bool:
        assert self.response is not None
        headers = self.response.headers
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()

    def _broken(self, error: UpstreamError) -> None:
        if self.headers_arrived is not None and not self.headers_arrived.done():
            self.headers_arrived.set_exception(error)
        if self.response is not None:
            self.response._fail(error)


class _OriginPool:
    """The idle connections to one origin, most recently used last (reused first: the
    least likely to have been closed by the worker)."""

    def __init__(self, name: str, max_idle: int, idle_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.loop = loop
        self.idle: list[_Connection] = []
        self.closed = False

    def take(self) -> _Connection | None:
        expired_before = self.loop.time() - self.idle_timeout
        while self.idle:
            conn = self.idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.abort()
                continue
            if conn.idle_since < expired_before:
                conn.abort()
                continue
            return conn
        return None

    def put(self, conn: _Connection) -> None:
        now = self.loop.time()
        conn.idle_since = now
        idle = self.idle
        # Drop the oldest: over the bound, or idle for too long.
        while idle and (len(idle) >= self.max_idle or idle[0].idle_since < now - self.idle_timeout):
            idle.pop(0).abort()
        if self.max_idle > 0 and not self.closed:
            idle.append(conn)
        else:
            conn.abort()

    def discard(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().abort()


class HttpUpstream:
    """The router's client for inference legs: one per router, pooled per worker origin."""

    def __init__(
        self,
        *,
        connect_timeout_secs: float = 10.0,
        read_timeout_secs: float | None = None,
        max_idle_per_origin: int = 512,
        idle_timeout_secs: float = 4.0,
    ) -> None:
        self.connect_timeout = connect_timeout_secs
        self.read_timeout = read_timeout_secs
        self.max_idle = max_idle_per_origin
        self.idle_timeout = idle_timeout_secs
        self._pools: dict[tuple[str, str, int], _OriginPool] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        return await self.request("POST", url, body, headers)

    async def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send one request; return once the response's status and headers arrived.

        Raises `UpstreamError` (or `ValueError` for a URL or header it cannot send).
        Cancelling the caller closes the connection.
        """
        if self._closed:
            raise ConnectFailed("the upstream client is closed (the router is shutting down)")
        target = _target(url)
        data = method.encode("ascii") + target.head + _header_block(headers, len(body)) + body
        pool = self._pool(target)
        conn = pool.take()
        if conn is None:
            conn = await self._connect(target, pool)
        response = conn.send(data)
        try:
            await self._headers(conn)
        except BaseException:
            response.close()
            raise
        return response

    async def close(self) -> None:
        """Close every idle connection; later requests fail (responses in flight finish)."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, target: _Target) -> _OriginPool:
        pool = self._pools.get(target.origin)
        if pool is None:
            scheme, host, port = target.origin
            name = f"worker {scheme}://{host}:{port}"
            pool = self._pools[target.origin] = _OriginPool(
                name, self.max_idle, self.idle_timeout, asyncio.get_running_loop()
            )
        return pool

    async def _headers(self, conn: _Connection) -> None:
        assert conn.headers_arrived is not None
        if self.read_timeout is None:
            await conn.headers_arrived
            return
        try:
            async with asyncio.timeout(self.read_timeout):
                await conn.headers_arrived
        except TimeoutError:
            raise ReadTimeout(f"{conn.name} sent no response head within {self.read_timeout:g}s") from None

    async def _connect(self, target: _Target, pool: _OriginPool) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context = self._ssl_context() if target.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(pool, loop, self.read_timeout),
                    target.host,
                    target.port,
                    ssl=ssl_context,
                    server_hostname=target.host if ssl_context is not None else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"cannot connect to {pool.name} within {self.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {pool.name}: {exc!r}") from exc
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl
