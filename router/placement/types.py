"""Types shared by prepare, place and dispatch: the request descriptor, plans and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from router.workers.worker import Worker


@dataclass
class RequestDescriptor:
    """What placement needs to know about a request; built by `router.prepare`."""

    request_id: str
    model: str | None
    # The whole chat (every message) or the prompt, as text: the key for prefix-aware policies.
    routing_text: str
    stream: bool = False
    # Token ids of the routing text when the router has a tokenizer configured.
    routing_tokens: list[int] | None = None
    # Session affinity key (from a header such as X-Session-Id), if any.
    session_key: str | None = None
    # Rough prompt+output size, for token-aware load accounting.
    estimated_tokens: int = 0
    # Workers already tried for this request (retries prefer others).
    excluded: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Single:
    """Run the whole request on one worker."""

    worker: Worker
    reason: str = ""


@dataclass(frozen=True)
class Pair:
    """Prefill on one worker, decode on another; KV moves between them."""

    prefill: Worker
    decode: Worker
    prefill_reason: str = ""
    decode_reason: str = ""


PlacementPlan = Union[Single, Pair]


class PlacementError(Exception):
    """A request that cannot be placed. Carries the HTTP status and OpenAI error fields."""

    status_code = 503
    error_type = "service_unavailable"
    code = "no_available_workers"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds until a worker may take requests again (its breaker's timeout), when
        # known: the app can send it as a Retry-After header.
        self.retry_after = retry_after


class NoWorkersError(PlacementError):
    """No worker is registered or ready for this role/model."""


class NoHealthyPrefillError(PlacementError):
    code = "no_healthy_prefill"


class NoHealthyDecodeError(PlacementError):
    code = "no_healthy_decode"


class UnknownModelError(PlacementError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"
