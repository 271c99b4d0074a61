"""The model's chat template, rendered in the router as Hugging Face renders it.

Why the router renders chats: an engine's prefix cache keys on the token ids of the
*rendered* prompt (template markup, system prompt, turns), so the `kv_aware` policy can
match a chat against the engines' KV events only with those ids. The client's body is
still forwarded unchanged; the engine renders it again, so a difference costs a cache
miss, never a wrong answer (`tests/router/test_engine_chat_template.py` checks that ours
equals vLLM's own rendering).

Rendering follows `transformers`' `apply_chat_template`: a sandboxed Jinja environment
with `trim_blocks`/`lstrip_blocks` and loop controls, a `tojson` filter that keeps
non-ASCII text, the `raise_exception` and `strftime_now` globals, the tokenizer's special
tokens in the context, and `{% generation %}` blocks rendered as their body. Message
content follows vLLM's OpenAI server: text parts are joined with newlines for templates
that print `content` as a string, and kept as a list of parts for templates that loop
over it; tool-call arguments sent as JSON strings reach the template as objects; and
`developer` messages become one leading system message for templates that do not name the
`developer` role.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The tokenizer_config.json keys passed to templates (what transformers passes).
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Marks the final message's end for `continue_final_message` (as transformers does it).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """The template rejected the chat (its own `raise_exception`, or a render error).
    `reason` is the template's own message where it raised one (what vLLM answers with)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _loops_over_content(ast: jinja2.nodes.Template) -> bool:
    """True when the template iterates over a message's `content` (it expects a list of
    parts, vLLM's "openai" content format) rather than printing it as a string."""
    for loop in ast.find_all(jinja2.nodes.For):
        target = loop.iter
        while isinstance(target, jinja2.nodes.Filter) and target.node is not None:
            target = target.node
        if isinstance(target, jinja2.nodes.Getitem) and isinstance(target.arg, jinja2.nodes.Const):
            if target.arg.value == "content":
                return True
        if isinstance(target, jinja2.nodes.Getattr) and target.attr == "content":
            return True
    return False


def _special_token(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


class ChatTemplate:
    """One compiled template plus the special tokens its context needs."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        env = _environment()
        try:
            ast = env.parse(source)
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc
        self.source = source
        self.content_as_parts = _loops_over_content(ast)
        self._knows_developer = '"developer"' in source or "'developer'" in source
        self._special_tokens = dict(special_tokens or {})

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text the engine builds from this chat (vLLM's defaults: a generation
        prompt unless the final message is continued). `extra` is the request's
        `chat_template_kwargs`. Raises `ChatTemplateError` when the template rejects it."""
        chat = [self._message(m) for m in messages]
        if not self._knows_developer and any(m.get("role") == "developer" for m in chat):
            chat = _developer_as_system(chat)
        if continue_final_message:
            chat[-1] = self._tag_final(chat[-1])
        context: dict[str, Any] = {
            **self._special_tokens,
            **(extra or {}),
            "messages": chat,
            "tools": list(tools) if tools is not None else None,
            "documents": list(documents) if documents is not None else None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            text = self._template.render(**context)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {exc}", reason=str(exc)) from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"the model's chat template failed on the messages: {exc}") from exc
        if continue_final_message:
            if _CONTINUE_TAG.strip() not in text:
                raise ChatTemplateError("continue_final_message: the template does not print the final message")
            text = text[: text.rindex(_CONTINUE_TAG.strip())]
        return text

    def _message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(message)
        content = out.get("content")
        if isinstance(content, list):
            texts = [p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            out["content"] = [{"type": "text", "text": t} for t in texts] if self.content_as_parts else "\n".join(texts)
        elif isinstance(content, str) and self.content_as_parts:
            out["content"] = [{"type": "text", "text": content}]
        calls = out.get("tool_calls")
        if isinstance(calls, list):
            out["tool_calls"] = [_with_parsed_arguments(call) for call in calls]
        return out

    def _tag_final(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": content + _CONTINUE_TAG}
        if isinstance(content, list) and content:
            last = dict(content[-1])
            last["text"] = (last.get("text") or "") + _CONTINUE_TAG
            return {**message, "content": [*content[:-1], last]}
        raise ChatTemplateError("continue_final_message is set but the final message has no text to continue")


def _developer_as_system(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Developer turns as system ones, and every system text merged into one first message
    (some templates accept a system message only in first place)."""
    chat = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in chat]
    systems = [i for i, m in enumerate(chat) if m.get("role") == "system"]
    if systems == [0] or not systems:
        return chat
    texts = [_text_of(chat[i].get("content")) for i in systems]
    merged = {"role": "system", "content": "\n\n".join(t for t in texts if t)}
    return [merged, *(m for m in chat if m.get("role") != "system")]


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, Mapping))
    return content or ""


def _with_parsed_arguments(call: Any) -> Any:
    """A tool call whose `function.arguments` JSON string is parsed (templates index it)."""
    if not isinstance(call, Mapping):
        return call
    function = call.get("function")
    if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
        try:
            arguments = json.loads(function["arguments"])
        except ValueError:
            return call
        return {**call, "function": {**function, "arguments": arguments}}
    return call


def _template_source(directory: Path) -> str | None:
    """Where Hugging Face keeps a model's template: chat_template.jinja (transformers 4.43+
    saves it there), chat_template.json, or tokenizer_config.json's `chat_template` (a
    string, or a list of named templates of which "default" is used)."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get("chat_template")
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            default = named.get("default")
            if isinstance(default, str):
                return default
    return None


def load_chat_template(tokenizer_dir: str | Path, override: str | None = None) -> ChatTemplate | None:
    """The template for the model in `tokenizer_dir` (a file given by `override` wins, as
    vLLM's `--chat-template` does; a value that is no file is the template itself); None
    when the model has none, so chats then route by their plain text."""
    directory = Path(tokenizer_dir)
    if directory.is_file():
        directory = directory.parent
    source: str | None
    if override is not None:
        path = Path(override)
        source = path.read_text() if path.is_file() else override
    else:
        source = _template_source(directory)
    if source is None:
        return None
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokens = {name: token for name in _SPECIAL_TOKENS if (token := _special_token(config.get(name))) is not None}
    return ChatTemplate(source, tokens)
