"""The routing key of a request: its token ids when the router tokenizes, else its text."""

from __future__ import annotations

from router.placement.types import RequestDescriptor
from router.policies.radix_tree import Key


def routing_key(request: RequestDescriptor) -> Key:
    """Token ids (a tuple) when `prepare` set them, else the routing text (characters).

    Token keys follow the engines' own cache granularity; text keys need no tokenizer.
    """
    if request.routing_tokens is not None:
        return tuple(request.routing_tokens)
    return request.routing_text
