"""Counting the output events of an OpenAI-style SSE stream, as its bytes arrive.

Why not count `data:` per network chunk: a chunk can hold several events or part of
one, and two events in every stream carry no output (an optional usage-only chunk,
`"choices": []`, and the closing `[DONE]`). `SseEventCounter` reassembles events across
chunks (the SSE rule: an event ends at a blank line, lines end with LF, CRLF or CR) and
counts only those that carry choices, so the stream metrics time output, not framing.

Pure: bytes in, counts out; no clock, no I/O.
"""

from __future__ import annotations

_CHOICES_KEY = b'"choices"'
# Longest event kept while waiting for its end; a longer one (or a body that is not SSE)
# is skipped uncounted rather than buffered without bound.
MAX_EVENT_BYTES = 1 << 20


def is_output_event(event: bytes) -> bool:
    """True if one complete SSE event (without its blank line) carries output choices.

    Not output: comments and events without data, `[DONE]`, usage-only chunks, error
    objects (no `choices` key).
    """
    if b"\n" not in event:  # the common case: one line, `data: {...}`
        return event.startswith(b"data:") and _carries_choices(event)
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    return _carries_choices(b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines))


def _carries_choices(payload: bytes) -> bool:
    """`"choices"` followed by a non-empty list: not `[DONE]`, an error object or a
    usage-only chunk (`"choices":[]` from vLLM, `"choices": []` from json.dumps). A string
    value cannot fake the key: inside a JSON string its quotes would be escaped."""
    at = payload.find(_CHOICES_KEY)
    if at < 0:
        return False
    after = at + len(_CHOICES_KEY)
    compact = payload[after : after + 3]  # vLLM and SGLang write `"choices":[{` without spaces
    if compact == b":[{":
        return True
    rest = payload[after : after + 64].lstrip()
    if not rest.startswith(b":"):
        return False
    rest = rest[1:].lstrip()
    return rest.startswith(b"[") and not rest[1:].lstrip().startswith(b"]")


def _one_line_event(chunk: bytes) -> int:
    """The relay's common case, decided with a few bytes scans (the relay feeds one event
    per chunk, and the general path's per-event Python work was a quarter of its CPU in
    sse): a chunk that is exactly one one-line `data:` event with its blank line. 1 for
    output written compactly, as vLLM and SGLang write it; 0 for no `choices` at all
    (`[DONE]`, an error object); -1 for anything else (CR line ends, spaced JSON: the
    general path decides)."""
    if not chunk.startswith(b"data:") or b"\r" in chunk:
        return -1
    at = chunk.find(_CHOICES_KEY)
    if at < 0:
        return 0
    return 1 if chunk.startswith(b":[{", at + len(_CHOICES_KEY)) else -1


class SseEventCounter:
    """Feed it the network chunks of one stream in order; it counts output events."""

    __slots__ = ("_partial", "_after_cr", "output_events")

    def __init__(self) -> None:
        self._partial = b""  # the bytes of an event whose end has not arrived yet (LF line ends)
        self._after_cr = False  # the last chunk ended in CR: an LF starting the next one is its CRLF
        self.output_events = 0

    def feed(self, chunk: bytes) -> int:
        """Take the next chunk; return how many output events it completed."""
        if not self._partial and not self._after_cr and chunk.find(b"\n") == len(chunk) - 2 and chunk.endswith(b"\n\n"):
            completed = _one_line_event(chunk)
            if completed >= 0:
                self.output_events += completed
                return completed
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = self._partial + chunk if self._partial else chunk
        *events, self._partial = data.split(b"\n\n")
        if len(self._partial) > MAX_EVENT_BYTES:
            self._partial = b""
        completed = 0
        for event in events:
            if is_output_event(event):
                completed += 1
        self.output_events += completed
        return completed
