"""Where model-family output parsers (tool calls, reasoning) plug into the renderer.

Why a hook now: models write tool calls and reasoning in their own markup
(`<tool_call>...</tool_call>`, `<think>...</think>`), which an OpenAI answer shows as
`tool_calls` and `reasoning` rather than content. Parsing them is a later issue; the
renderer already passes every chat text delta through the parser registered for the
model's family (`model_type` in its config.json), so adding one is a registration, not a
renderer change. Unregistered families get `PlainText`: all text is content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class MessageDelta:
    """What a piece of model text contributes to the assistant message."""

    content: str = ""
    reasoning: str | None = None
    # OpenAI `tool_calls` entries (streamed: deltas with `index`), as JSON-able dicts.
    tool_calls: tuple[dict[str, Any], ...] = field(default_factory=tuple)


class ResponseParser(Protocol):
    """One answer's parser; stateful across a stream's deltas."""

    def parse(self, text: str, *, finished: bool) -> MessageDelta:
        """The message parts in `text` (the newly released text; all of it when not
        streaming). A parser may hold text back and release it on a later call;
        `finished` says no more text follows."""
        ...


class PlainText:
    """The default: every character is content."""

    def parse(self, text: str, *, finished: bool) -> MessageDelta:
        return MessageDelta(content=text)


ParserFactory = Callable[[], ResponseParser]

_PARSERS: dict[str, ParserFactory] = {}


def register_parser(model_type: str, factory: ParserFactory) -> None:
    """Use `factory` for answers of models whose config.json `model_type` is this."""
    _PARSERS[model_type] = factory


def parser_for(model_type: str | None) -> ResponseParser:
    """A fresh parser for one answer of a `model_type` model (`PlainText` if none)."""
    factory = _PARSERS.get(model_type or "")
    return factory() if factory is not None else PlainText()
