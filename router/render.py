"""Render: the bytes the client gets. One error shape for the whole router.

Every error a client sees, whatever stage raised it, is an `ApiError` (router.errors),
rendered here as OpenAI's `{"error": {"message", "type", "param", "code"}}` with its HTTP
status and headers; on a stream that already started, the same object goes out as one
SSE event followed by `data: [DONE]`, so SDKs surface it instead of hanging on a
half-finished stream.
Responses are written straight to the ASGI `send` callable: SSE chunks are forwarded the
moment they arrive, never buffered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from starlette.responses import Response

from router.errors import ApiError

Headers = list[tuple[bytes, bytes]]
# How middleware and admin routes turn an error into a response (`error_response`).
RenderError = Callable[[ApiError], Response]

JSON_CONTENT_TYPE = b"application/json"
SSE_CONTENT_TYPE = b"text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"


def error_response(err: ApiError) -> Response:
    """A router error as a Starlette response (for middleware and admin routes)."""
    return Response(err.body(), status_code=err.status, headers=dict(err.headers), media_type="application/json")


def sse_error_event(err: ApiError) -> bytes:
    """The error as one SSE event plus the end marker, for streams already under way."""
    return b"data: " + err.body() + b"\n\n" + SSE_DONE


def header_list(content_type: bytes, extra: Iterable[tuple[str, str]] = ()) -> Headers:
    headers: Headers = [(b"content-type", content_type)]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra)
    return headers


async def send_body(send: Any, status: int, body: bytes, headers: Headers) -> None:
    """A complete response in two ASGI messages."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Any, status: int, body: bytes, extra: Iterable[tuple[str, str]] = ()) -> None:
    await send_body(send, status, body, header_list(JSON_CONTENT_TYPE, extra))


async def send_error(send: Any, err: ApiError, extra: Iterable[tuple[str, str]] = ()) -> None:
    await send_json(send, err.status, err.body(), [*err.headers, *extra])


class StreamWriter:
    """Writes one streamed (SSE) response chunk by chunk, as the chunks arrive."""

    __slots__ = ("_send", "started", "finished", "delivered")

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False
        self.finished = False
        # The client has the whole answer (its `[DONE]` went out): a client that hangs up
        # now has not cut anything short.
        self.delivered = False

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        if b"[DONE]" in chunk[-16:]:
            self.delivered = True

    async def finish(self, last: bytes = b"") -> None:
        if not self.finished:
            self.finished = True
            await self._send({"type": "http.response.body", "body": last, "more_body": False})

    async def fail(self, err: ApiError) -> None:
        """End a started stream with an explicit error event and `[DONE]`."""
        await self.finish(sse_error_event(err))
