"""Every error a client can get from the router: one exception tree, one set of fields.

Why one tree: each stage (auth, admission, prepare, placement, dispatch, the admin API)
refuses requests for its own reasons, but the client always gets the same thing: an HTTP
status, OpenAI's `{"error": {"message", "type", "param", "code"}}` and, where it helps,
headers (`WWW-Authenticate`, `Retry-After`). So every error is an `ApiError` carrying
exactly those fields, the app catches `ApiError` once, and `router.render` writes it
without knowing which stage raised it (as httpx and Starlette keep one exception tree).

    ApiError                      status chosen where raised: bad input, upstream, timeout
    └── TypedError                status, type and code fixed by the class, one per cause
        ├── AuthError                     401 invalid_api_key, WWW-Authenticate: Bearer
        ├── AdmissionRejected             429 (RateLimited, QueueFull), 503 (QueueTimeout)
        ├── PlacementError                503 no worker (NoWorkers..., NoHealthy...,
        │                                 WorkerOverloadShed), 404 UnknownModel
        ├── WorkerRequestError            400 bad worker spec, 409, 404, 503 (admin API)
        ├── ShuttingDown                  503 shutting_down (graceful shutdown, router.drain)
        └── InvalidGenerationRequest      400 invalid_parameter (router.generation: sampling, prompt)

`Retry-After` is derived in one place (`ApiError.headers`) from `retry_after`, the
seconds the raiser knows the client should wait.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

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


def type_for_status(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error for the client: HTTP status, OpenAI error fields, response headers.

    Raise it (or a `TypedError` subclass) from any stage; the app turns it into a
    response, or an SSE error event on a stream that already started.
    """

    status: int
    type: str
    code: str | None

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or type_for_status(status)
        self.param = param
        self.code = code
        # Seconds until a retry may succeed, when the raiser knows: sent as Retry-After.
        self.retry_after = retry_after

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Response headers (lower-case names, as ASGI wants): Retry-After in whole
        seconds, at least 1, when `retry_after` is known."""
        if self.retry_after is None:
            return []
        return [("retry-after", str(max(1, math.ceil(self.retry_after))))]

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

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
            code = err.get("code")
            return cls(
                status,
                str(err["message"]),
                type=err.get("type"),
                param=err.get("param"),
                code=None if code is None else str(code),
            )
        if isinstance(parsed, dict) and "message" in parsed:
            message = str(parsed["message"])
        else:
            message = body.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
        return cls(status, f"worker {worker_url} answered {status}: {message}", code="upstream_error")


class TypedError(ApiError):
    """An `ApiError` whose status, type and code belong to its class: one class per cause,
    so callers catch a cause by class (`except QueueFull`) and raise it as `Cls(message)`."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        cls = self.__class__
        super().__init__(cls.status, message, type=cls.type, param=param, code=cls.code, retry_after=retry_after)


# -- auth (router.auth) ---------------------------------------------------------------------


class AuthError(TypedError):
    """Missing or wrong API key."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("www-authenticate", "Bearer")]


# -- admission (router.admission) -------------------------------------------------------------


class AdmissionRejected(TypedError):
    """A request refused before any upstream saw it; `retry_after` says when to come back."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rejected"


class RateLimited(AdmissionRejected):
    code = "rate_limited"


class QueueFull(AdmissionRejected):
    code = "queue_full"


class QueueTimeout(AdmissionRejected):
    status = 503
    type = "service_unavailable"
    code = "queue_timeout"


# -- placement (router.placement) -------------------------------------------------------------


class PlacementError(TypedError):
    """A request that cannot be placed. `retry_after`: seconds until a worker may take
    requests again (its breaker's timeout), when known."""

    status = 503
    type = "service_unavailable"
    code = "no_available_workers"


class NoWorkersError(PlacementError):
    """No worker is registered or ready for this role/model."""


class NoHealthyPrefillError(PlacementError):
    code = "no_healthy_prefill"


class NoHealthyDecodeError(PlacementError):
    code = "no_healthy_decode"


class WorkerOverloadShedError(PlacementError):
    """Every candidate is overloaded and `--worker-overload-shed` is on; `retry_after` is
    the load monitor's interval, when the next engine numbers arrive."""

    code = "worker_overload_protection_shed"


class UnknownModelError(PlacementError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


# -- worker admin (router.admin, router.workers) ----------------------------------------------


class WorkerRequestError(TypedError):
    """A worker spec or admin request that cannot be honoured; `param` names the bad field."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_worker"


class WorkerConflictError(WorkerRequestError):
    status = 409
    code = "worker_exists"


class WorkerNotFoundError(WorkerRequestError):
    status = 404
    code = "worker_not_found"


class WorkerStartFailedError(WorkerRequestError):
    """A worker added with `wait` that failed its start-up; it stays listed as failed."""

    status = 503
    type = "service_unavailable"
    code = "worker_failed"


# -- graceful shutdown (router.drain, router.server) ------------------------------------------


class ShuttingDown(TypedError):
    """The router is draining for shutdown: /readiness, new inference requests, and
    requests still running when the grace period ends. `Connection: close` so a client's
    pooled connection is not reused against this instance."""

    status = 503
    type = "service_unavailable"
    code = "shutting_down"

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers, ("connection", "close")]


# -- router-side generation (router.generation) -----------------------------------------------


class InvalidGenerationRequest(TypedError):
    """A request the router's token-level path cannot run as sent (a sampling parameter out
    of range, a prompt longer than the model's context, a feature this path lacks); `param`
    names the field, as vLLM's server does."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_parameter"


class ChatTemplateRejected(InvalidGenerationRequest):
    """The model's chat template refused the chat (its `raise_exception`): vLLM's HTTP
    server answers exactly this body (the template's own words, `BadRequestError`, code
    400), so a gRPC worker's client gets what an HTTP worker's gets through the router."""

    type = "BadRequestError"
    code = "400"
