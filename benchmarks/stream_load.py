"""Many concurrent streaming chat requests at once: how many a router carries, and how late.

Each client is one bare asyncio connection (no HTTP library, so the load generator stays far
cheaper per stream than the router it measures): it sends one streaming chat request with
`Connection: close`, reads until `data: [DONE]` or the end of the connection, and is timed
from connect to the last byte. A stream counts as ok only with a 200 status, every token
event and the closing [DONE]; otherwise it is an error (with its reason) or a timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.capacity_bodies import chat_request
from benchmarks.loadgen import percentile

_DONE = b"data: [DONE]"


@dataclass
class StreamOutcome:
    ok: bool
    timed_out: bool
    seconds: float
    error: str = ""


@dataclass
class StreamReport:
    streams: int
    completed: int
    timeouts: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _request_bytes(url: str, path: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = chat_request(stream=True)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return host, port, head.encode() + body


async def _one_stream(host: str, port: int, request: bytes, events: int, timeout_s: float) -> StreamOutcome:
    start = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    received = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            while _DONE not in received:
                data = await reader.read(65536)
                if not data:
                    break
                received += data
    except TimeoutError:
        return StreamOutcome(False, True, time.perf_counter() - start, "timeout")
    except OSError as exc:
        return StreamOutcome(False, False, time.perf_counter() - start, type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - start
    status = bytes(received[:12]).split(b" ")[1:2]
    if status != [b"200"]:
        return StreamOutcome(False, False, elapsed, f"status {status[0].decode() if status else 'none'}")
    if _DONE not in received:
        return StreamOutcome(False, False, elapsed, "stream ended without [DONE]")
    # Only token events count: routers may add keep-alive comments, never drop or merge events.
    if received.count(b'"chat.completion.chunk"') < events:
        return StreamOutcome(False, False, elapsed, "token events missing")
    return StreamOutcome(True, False, elapsed)


async def run_streams(
    url: str, *, streams: int, events: int, timeout_s: float, path: str = "/v1/chat/completions"
) -> StreamReport:
    """Open `streams` streaming requests at once against `url`; wait for every one to end."""
    host, port, request = _request_bytes(url, path)
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(_one_stream(host, port, request, events, timeout_s) for _ in range(streams)))
    wall = time.perf_counter() - start
    return summarize(list(outcomes), wall)


def summarize(outcomes: list[StreamOutcome], wall_s: float) -> StreamReport:
    ok = [o.seconds for o in outcomes if o.ok]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok and not o.timed_out:
            errors[o.error] = errors.get(o.error, 0) + 1
    return StreamReport(
        streams=len(outcomes),
        completed=len(ok),
        timeouts=sum(o.timed_out for o in outcomes),
        wall_s=wall_s,
        p50_ms=percentile(ok, 50) * 1e3,
        p99_ms=percentile(ok, 99) * 1e3,
        errors=errors,
    )


def report_row(report: StreamReport) -> dict[str, Any]:
    """The report as one table row (the same columns as a wrk run's)."""
    return {
        "rps": report.completed / report.wall_s if report.wall_s else 0.0,
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "errors": report.error_count,
        "timeouts": report.timeouts,
        "requests": report.streams,
        "completed": report.completed,
        "error_kinds": report.errors,
    }
