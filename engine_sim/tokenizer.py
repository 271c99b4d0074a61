"""A deterministic word-level tokenizer and the deterministic "model output".

One token per whitespace-separated word; a token id is the CRC-32 of the word. This is
not a real tokenizer, only a stable, fast map from text to ids, so prompt lengths are
easy to control in workloads ("N words = N tokens") and prefix-cache keys are exact.

Output depends only on the prompt's token ids: the same prompt gives the same answer on a
regular worker, on a decode worker after P/D, and through any router. Output words come
from a fixed list and re-tokenize to the ids that were generated, so in multi-turn chat
the previous answer is a cached prefix of the next prompt, as on a real engine.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

OUTPUT_WORDS: tuple[str, ...] = tuple(
    "the of and to in is was for on that with as by at from it an be this are or which "
    "one has had his her all their there were been have more when would will who what "
    "into time can only other new some could these two may then first any like now our "
    "over such after most also made many before must through back years where much your "
    "way well down should because each just those people how too little state good very "
    "make world still own see men work long get here between both life being under never".split()
)


def tokenize(text: str) -> list[int]:
    """Token ids of `text`: one per whitespace-separated word."""
    return [zlib.crc32(word.encode()) for word in text.split()]


def render_chat(messages: Sequence[dict[str, Any]]) -> str:
    """A chat as one prompt, like a chat template: `<|role|>` markers, then a generation prompt.

    Raises ValueError (an HTTP 400 upstream) for malformed messages.
    """
    parts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'role'")
        parts.append(f"<|{message['role']}|>")
        parts.append(_content_text(message.get("content"), i))
    parts.append("<|assistant|>")
    return " ".join(p for p in parts if p)


def _content_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ValueError(f"messages[{index}].content parts must be {{'type': 'text', 'text': ...}}")
        return " ".join(texts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts")


def prompt_digest(token_ids: Sequence[int]) -> str:
    """A short, stable fingerprint of a prompt (P/D legs compare it to catch mismatched KV)."""
    return hashlib.blake2b(array("I", token_ids).tobytes(), digest_size=8).hexdigest()


def output_words(token_ids: Sequence[int], count: int) -> list[str]:
    """The `count` words the simulated model answers to `token_ids` (a pure function)."""
    rng = random.Random(int(prompt_digest(token_ids), 16))
    return rng.choices(OUTPUT_WORDS, k=count)


def word_ids(words: Sequence[str]) -> list[int]:
    return [zlib.crc32(w.encode()) for w in words]


def tokenizer_json(words: Iterable[str]) -> dict[str, Any]:
    """A Hugging Face `tokenizer.json` (word-level, whitespace split) that gives `words`
    the ids `tokenize` gives them, so a router with `--tokenizer-path` computes the same
    token ids as the simulator (for prompts made of `words` and the output words)."""
    vocab = {w: zlib.crc32(w.encode()) for w in (*words, *OUTPUT_WORDS)}
    vocab.setdefault("<unk>", 0)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
