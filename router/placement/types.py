"""Types shared by prepare, place and dispatch: the request descriptor and plans.

Placement's errors (`PlacementError` and its subclasses) live with every other
client-visible error in router.errors."""

from __future__ import annotations

from dataclasses import dataclass, field

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


PlacementPlan = Single | Pair
