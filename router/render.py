"""Render: the bytes the client gets. One error shape for the whole router.

Every error a client sees, whatever stage raised it, is OpenAI's
`{"error": {"message", "type", "param", "code"}}` with a matching HTTP status; on a
stream that already started, the same object goes out as one SSE event followed by
`data: [DONE]`, so SDKs surface it instead of hanging on a half-finished stream.
Responses are written straight to the ASGI `send` callable: SSE chunks are forwarded the
moment they arrive, never buffered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.responses import Response

Headers = list[tuple[bytes, bytes]]

JSON_CONTENT_TYPE = b"application/json"
SSE_CONTENT_TYPE = b"text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error for the client, with its HTTP status and OpenAI error fields.

    Raise it from any stage; the app turns it into a response (or an SSE error event).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = list(headers)

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def sse_event(self) -> bytes:
        """The error as one SSE event plus the end marker, for streams already under way."""
        return b"data: " + self.body() + b"\n\n" + SSE_DONE

    @classmethod
    def from_typed(cls, err: Exception) -> ApiError:
        """From the router's typed errors (placement, admission, auth, admin): they carry
        `status_code`, `error_type`, `code`, `message` and optionally `headers()`."""
        if isinstance(err, ApiError):
            return err
        headers: Iterable[tuple[str, str]] = ()
        if callable(getattr(err, "headers", None)):
            headers = err.headers().items()
        elif getattr(err, "retry_after", None) is not None:
            headers = [("retry-after", str(max(1, math.ceil(err.retry_after))))]
        return cls(
            getattr(err, "status_code", 500),
            getattr(err, "message", str(err)),
            type=getattr(err, "error_type", None),
            code=getattr(err, "code", None),
            headers=headers,
        )

    @classmethod
    def from_upstream(cls, status: int, body: bytes, worker_url: str) -> ApiError:
        """An engine's error answer in the router's one error shape.

        vLLM and SGLang answer `{"error": {...}}`; older servers `{"object": "error",
        "message": ...}` or plain text. The engine's message is kept so the client sees the
        real cause (a prompt too long, an unknown parameter ...).
        """
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]:
            err = parsed["error"]
            return cls(status, str(err["message"]), type=err.get("type"), param=err.get("param"), code=_code_str(err.get("code")))
        if isinstance(parsed, dict) and "message" in parsed:
            message = str(parsed["message"])
        else:
            message = body.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
        return cls(status, f"worker {worker_url} answered {status}: {message}", code="upstream_error")


def error_response(err: Exception) -> Response:
    """A typed router error as a Starlette response (for middleware and admin routes)."""
    api = ApiError.from_typed(err)
    return Response(api.body(), status_code=api.status, headers=dict(api.headers), media_type="application/json")


def _code_str(code: Any) -> str | None:
    return None if code is None else str(code)


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
        await self.finish(err.sse_event())
