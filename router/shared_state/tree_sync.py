"""The wire schema of cache_aware's shared routing decisions (pure: no I/O).

Each replica publishes, for every request it places with cache_aware, which worker it
chose and the routing key's first `max_key_length` elements; the others insert that into
their own approximate trees, so every replica's tree models all the fleet's traffic.
A worker is named by role and URL, the one name replicas agree on (worker ids are local).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from router.policies.radix_tree import Key

SCHEMA_VERSION = 1


class BadDecision(ValueError):
    """A message on the decisions channel that is not one of ours (it is skipped)."""


@dataclass(frozen=True)
class RoutingDecision:
    """`replica` sent a request whose routing key starts with `key` to the `role` worker at `url`."""

    replica: str
    role: str
    url: str
    key: Key


def encode(decision: RoutingDecision, max_key_length: int) -> bytes:
    """The decision as one JSON message, its key cut to `max_key_length` elements:
    text keys as "text", token keys as "tokens"."""
    key = decision.key[:max_key_length]
    field = "text" if isinstance(key, str) else "tokens"
    return orjson.dumps(
        {"v": SCHEMA_VERSION, "replica": decision.replica, "role": decision.role, "url": decision.url, field: key}
    )


def decode(data: bytes | str) -> RoutingDecision:
    """Parse a message from `encode`; `BadDecision` says what is wrong with any other."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadDecision(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
        raise BadDecision(f"not a version-{SCHEMA_VERSION} routing decision")
    names = [msg.get(field) for field in ("replica", "role", "url")]
    replica, role, url = (v if isinstance(v, str) else "" for v in names)
    if not (replica and role and url):
        raise BadDecision("replica, role and url must be non-empty strings")
    key: Key
    if isinstance(msg.get("text"), str):
        key = msg["text"]
    elif isinstance(msg.get("tokens"), list) and all(isinstance(t, int) for t in msg["tokens"]):
        key = tuple(msg["tokens"])
    else:
        raise BadDecision("needs a 'text' string or a 'tokens' list of integers")
    return RoutingDecision(replica, role, url, key)
