"""Optional tokenizer for token-level routing keys (`--tokenizer-path`).

Only the `tokenizers` library and Jinja are used (no transformers, no torch): a
directory holding `tokenizer.json` (and, for chats, the model's chat template), or the
file itself. The router works without it; with it, policies can key on token ids, which
is what engines' prefix caches key on. Chats are rendered with the model's template
first (`router.chat_template`), so their ids are the ones the engine caches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from router.chat_template import ChatTemplate, ChatTemplateError, load_chat_template


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        """The prompt text of a chat completions body; None without a chat template."""
        ...


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from `tokenizer.json`, with the
    model's chat template when the directory has one (or `chat_template` names one)."""

    def __init__(self, path: str | Path, chat_template: str | None = None) -> None:
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
        try:
            self.chat_template: ChatTemplate | None = load_chat_template(file.parent, chat_template)
        except ChatTemplateError as exc:
            raise RuntimeError(f"--chat-template: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        # Special tokens are the template's business (it writes BOS itself), as in
        # transformers' apply_chat_template and vLLM's completions of plain text.
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """The ids an engine runs for `text`: vLLM encodes completions prompts with the
        special tokens (the post-processor adds BOS where the model wants one) and
        rendered chats without. Through `encode_batch`, which releases the GIL while it
        works (`encode` holds it), so a worker thread encoding a long prompt leaves the
        event loop free."""
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` itself, for incremental detokenization."""
        return self._tok

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        """Render with the request's own template switches, as vLLM reads them.

        Raises `ChatTemplateError` when the template (or the body's template fields)
        rejects the chat."""
        if self.chat_template is None:
            return None
        extra = body.get("chat_template_kwargs")
        if extra is not None and not isinstance(extra, Mapping):
            raise ChatTemplateError("chat_template_kwargs must be an object")
        tools = body.get("tools")
        return self.chat_template.render(
            body["messages"],
            tools=tools if isinstance(tools, list) else None,
            documents=body.get("documents") if isinstance(body.get("documents"), list) else None,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            continue_final_message=bool(body.get("continue_final_message", False)),
            extra=extra,
        )


def load_tokenizer(path: str | None, chat_template: str | None = None) -> Tokenizer | None:
    return HFTokenizer(path, chat_template) if path else None
