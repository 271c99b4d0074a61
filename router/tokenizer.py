"""Optional tokenizer for token-level routing keys (`--tokenizer-path` / `--model-path`).

Only the `tokenizers` library and Jinja are used (no transformers, no torch): a
directory holding `tokenizer.json` (and, for chats, the model's chat template), or the
file itself. The router works without it; with it, policies can key on token ids, which
is what engines' prefix caches key on. Chats are rendered with the model's template
first (`router.chat_template`), so their ids are the ones the engine caches.

For grpc:// workers the router also needs it to serve at all (it tokenizes and renders
the answers itself): a router started without one fetches each model's from the first
gRPC worker that serves it (`router.transports.grpc_tokenizer`), kept in `ModelTokenizers`.
The model's sampling defaults (generation_config.json, `router.generation.defaults`) are
read from the same directory, since vLLM's gRPC servicer does not apply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from router.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from router.generation.defaults import AUTO, GenerationConfigError, SamplingDefaults, sampling_defaults


class Tokenizer(Protocol):
    # The model's defaults for unset sampling fields (router.generation.defaults).
    sampling_defaults: SamplingDefaults

    def encode(self, text: str) -> list[int]: ...

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """The ids an engine runs for `text` (see `HFTokenizer.encode_text`)."""
        ...

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        """The prompt text of a chat completions body; None without a chat template."""
        ...

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` itself, for incremental detokenization."""
        ...


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from `tokenizer.json`, with the
    model's chat template when the directory has one (or `chat_template` names one) and
    its sampling defaults (`generation_config`: vLLM's --generation-config values)."""

    def __init__(self, path: str | Path, chat_template: str | None = None, generation_config: str = AUTO) -> None:
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
        try:
            self.sampling_defaults: SamplingDefaults = sampling_defaults(generation_config, file.parent)
        except GenerationConfigError as exc:
            raise RuntimeError(str(exc)) from exc

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


def load_tokenizer(
    path: str | None, chat_template: str | None = None, generation_config: str = AUTO
) -> HFTokenizer | None:
    return HFTokenizer(path, chat_template, generation_config) if path else None


class ModelTokenizers:
    """The router's tokenizer for each model: the configured one (`--tokenizer-path`,
    `--model-path`) serves every model, as it always has; without one, the tokenizers
    fetched from gRPC workers serve the models they were fetched for."""

    def __init__(self, configured: Tokenizer | None = None) -> None:
        self.configured = configured
        self._by_model: dict[str, Tokenizer] = {}

    def for_model(self, model: str | None) -> Tokenizer | None:
        """The tokenizer for a request naming `model`; a request naming none gets the
        only one there is (a router serving one model), else None."""
        if self.configured is not None:
            return self.configured
        if model is None:
            return next(iter(self._by_model.values())) if len(self._by_model) == 1 else None
        return self._by_model.get(model)

    @property
    def empty(self) -> bool:
        """No tokenizer at all (yet): the router tokenizes nothing."""
        return self.configured is None and not self._by_model

    def has(self, model: str) -> bool:
        return self.configured is not None or model in self._by_model

    def add(self, model: str, tokenizer: Tokenizer) -> None:
        self._by_model[model] = tokenizer
