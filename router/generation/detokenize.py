"""Output token ids -> text, incrementally, as vLLM's server produces it.

Two views of the same tokens, both as vLLM's OpenAI server computes them, so answers
through the router's token-level path equal vLLM's own:

- `IncrementalDetokenizer`: the answer's text. It decodes with `tokenizers`'
  `DecodeStream` primed with the prompt ids (vLLM's `FastIncrementalDetokenizer`), which
  holds back the bytes of a multi-byte character until the token that completes it
  arrives, so no chunk ever ends in half a character (U+FFFD). On top, streamed text that
  could still become a stop string is held back until it is known not to be (only the
  tail that is a prefix of some stop string, not a fixed window), and when the engine
  reports the stop string it matched, the answer ends before it (or after it, with
  `include_stop_str_in_output`). A stop *token* (EOS, `stop_token_ids`) adds no text unless
  `include_stop_str_in_output`, as in vLLM.
- `TokenTexts`: each token's own string for logprobs (`tokenizer.decode([id])`, with
  vLLM's two corrections: a SentencePiece leading space restored, and a token whose
  bytes end inside a character shown as the character it completes given the tokens
  before it, or '' while still incomplete).

The engine detects stop strings itself (it stops there), in the same chunk that carries
the token completing one; the router only cuts the text. Pure: ids in, text out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from router.generation.types import GenerationChunk

_REPLACEMENT = "\ufffd"
# `DecodeStream` raises this when a tokenizer produced non-monotonic UTF-8; vLLM resets.
_INVALID_PREFIX = "Invalid prefix encountered"
# Enough preceding tokens to complete any UTF-8 character (at most 4 bytes).
_MAX_CONTEXT = 4


class IncrementalDetokenizer:
    """One answer's text, released chunk by chunk (see the module doc)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=skip_special_tokens)
        self._stop = tuple(stop)
        self._include_stop = include_stop_str_in_output
        # Text that may become a stop string is held only when the stop string is cut.
        self._hold_for = self._stop if not include_stop_str_in_output else ()
        self.text = ""  # everything decoded so far (the final answer once finished)
        self._released = 0  # characters of `text` already returned

    def feed(self, chunk: GenerationChunk) -> str:
        """The text `chunk` releases: its tokens' text, less any held tail; all of it
        (cut at the matched stop string) when the chunk ends the answer."""
        ids = list(chunk.token_ids)
        stop_token = chunk.finish_reason == "stop" and not isinstance(chunk.matched_stop, str)
        if stop_token and ids and not self._include_stop:
            ids = ids[:-1]  # the stop token's own text is not output (vLLM)
        for token_id in ids:
            self.text += self._step(token_id)
        if chunk.finished:
            if chunk.finish_reason == "stop" and isinstance(chunk.matched_stop, str):
                self._cut_at(chunk.matched_stop)
            end = len(self.text)
        else:
            end = max(self._released, len(self.text) - self._held_tail())
        delta = self.text[self._released : end]
        self._released = end
        return delta

    def _step(self, token_id: int) -> str:
        try:
            piece = self._stream.step(self._tokenizer, token_id)
        except Exception as exc:
            if not str(exc).startswith(_INVALID_PREFIX):
                raise
            self._stream = DecodeStream(skip_special_tokens=self._skip_special_tokens)
            piece = self._stream.step(self._tokenizer, token_id)
        return piece or ""

    def _held_tail(self) -> int:
        """Length of the longest unreleased tail that is a proper prefix of a stop string."""
        unreleased = len(self.text) - self._released
        longest = 0
        for stop in self._hold_for:
            for k in range(min(len(stop) - 1, unreleased), longest, -1):
                if self.text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _cut_at(self, stop: str) -> None:
        # The stop string cannot lie wholly in released text (it was held back), so the
        # search starts where an occurrence overlapping the unreleased tail could begin.
        at = self.text.find(stop, max(0, self._released - len(stop) + 1))
        if at < 0:
            return  # the engine's text differs from ours (it cannot here); keep it all
        self.text = self.text[: at + len(stop) if self._include_stop else at]


def leading_space_marker(tokenizer: Tokenizer) -> str | None:
    """The Metaspace replacement character (SentencePiece's '▁') when the tokenizer
    pre-tokenizes with one: `decode([id])` strips its leading space, which vLLM restores
    in logprob tokens. None for byte-level and other tokenizers."""
    try:
        pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
    except ValueError:
        return None
    candidates = [pre, *pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre]
    for p in candidates:
        if isinstance(p, dict) and p.get("type") == "Metaspace":
            marker = p.get("replacement", "\u2581")
            return marker if isinstance(marker, str) else None
    return None


class TokenTexts:
    """Each output token's string, as vLLM's logprobs show it (see the module doc)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._marker = leading_space_marker(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def text(self, token_id: int, context: Sequence[int]) -> str:
        """The string of `token_id` at a position after the sampled tokens `context`."""
        text = self._decode([token_id])
        if self._marker is not None:
            text = self._restore_space(token_id, text)
        if text.endswith(_REPLACEMENT):
            return self._completed(token_id, list(context[-_MAX_CONTEXT:]))
        return text

    def _restore_space(self, token_id: int, text: str) -> str:
        raw = self._tokenizer.id_to_token(token_id) or ""
        markers = len(raw) - len(raw.lstrip(self._marker or ""))
        missing = markers - (len(text) - len(text.lstrip(" ")))
        return " " * missing + text if missing > 0 else text

    def _completed(self, token_id: int, context: list[int]) -> str:
        """vLLM's `_correct_decoded_token`: the text this token completes, given up to 4
        preceding tokens whose own bytes were incomplete; '' if still incomplete."""
        for n in range(1, len(context) + 1):
            ctx = context[-n:]
            full = self._decode([*ctx, token_id])
            if full.endswith(_REPLACEMENT):
                continue
            clean_end = len(ctx)
            for j in range(len(ctx) - 1, -1, -1):
                if self._decode([ctx[j]]).endswith(_REPLACEMENT):
                    clean_end = j
                else:
                    break
            prefix = self._decode(ctx[:clean_end]) if clean_end else ""
            if full.startswith(prefix):
                return full[len(prefix) :]
            common = 0
            for a, b in zip(prefix, full, strict=False):
                if a != b:
                    break
                common += 1
            return full[common:]
        return ""

