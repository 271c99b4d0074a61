"""Optional tokenizer for token-level routing keys (`--tokenizer-path`).

Only the `tokenizers` library is used (no transformers, no torch): a directory holding
`tokenizer.json` or the file itself. The router works without it; with it, policies can
key on token ids, which is what engines' prefix caches key on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from `tokenizer.json`."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "--tokenizer-path needs the 'tokenizers' package: pip install tokenizers"
            ) from exc
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise RuntimeError(f"--tokenizer-path {path}: no tokenizer.json found; pass the model directory or the file")
        self._tok = _Tokenizer.from_file(str(file))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


def load_tokenizer(path: str | None) -> Tokenizer | None:
    return HFTokenizer(path) if path else None
