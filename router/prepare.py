"""Prepare: an OpenAI request body -> a validated `PreparedRequest` with its descriptor.

Validation is deliberately shallow: the fields the router itself relies on (model,
messages/prompt, stream, token limits, n) are checked strictly so that bad input gets a
clear 4xx here instead of a confusing engine error or a crash; everything else passes
through (`extra="allow"`), because engines accept many fields of their own.
The raw bytes are kept: co-located dispatch forwards them unchanged.

With the model's tokenizer the prompt is tokenized here, once, exactly as the engine
runs it (`router.generation.inputs`): placement keys on those ids (what the engines'
prefix caches hold) and the gRPC leg sends them, instead of rendering and encoding the
prompt a second time. A prompt the router cannot tokenize (the template rejects the
chat, a batch of prompts) still routes, by its text: an HTTP engine may take it, and the
gRPC leg gives the error.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from router.errors import ApiError, InvalidGenerationRequest
from router.generation.inputs import OFF_LOOP_CHARS, PromptInput, prompt_input
from router.placement.types import RequestDescriptor, estimate_prompt_tokens
from router.tokenizer import ModelTokenizers, Tokenizer

logger = logging.getLogger("atom_mesh.prepare")

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"

# No engine generates a million tokens for one request; larger values are typos or abuse.
MAX_TOKENS_LIMIT = 1 << 20
MAX_N = 128

TokenLimit = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Open):
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None


class _Common(_Open):
    model: StrictStr | None = None
    stream: StrictBool | None = False
    max_tokens: TokenLimit | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenLimit | None = None


Prompt = (
    StrictStr
    | Annotated[list[StrictStr], Field(min_length=1)]
    | Annotated[list[StrictInt], Field(min_length=1)]
    | Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_Common):
    prompt: Prompt


@dataclass
class PreparedRequest:
    """A validated request: the route, the client's bytes, the parsed body and its descriptor."""

    route: str
    raw: bytes
    body: dict[str, Any]
    descriptor: RequestDescriptor
    # Number of prompts in a completions batch (list of strings / list of token lists); 1 otherwise.
    batch_size: int = 1
    # The model's tokenizer, when the router has one for the request's model.
    tokenizer: Tokenizer | None = None
    # The prompt as the engine runs it (token ids, rendered text), when `tokenizer` could
    # tokenize it: the gRPC leg sends these ids rather than tokenizing again.
    prompt: PromptInput | None = None


def payload_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body exceeds the router's limit of {limit} bytes; send a smaller request or raise --max-payload-size",
        code="payload_too_large",
    )


def _validation_error(exc: ValidationError, body: dict[str, Any]) -> ApiError:
    first = exc.errors(include_url=False)[0]
    param = _param_path(first.get("loc", ()), body, missing=first.get("type") == "missing")
    return ApiError(400, f"invalid request: {param or 'body'}: {first.get('msg', 'invalid value')}", param=param)


def _param_path(loc: tuple[Any, ...], body: Any, *, missing: bool) -> str | None:
    """The offending field as `messages.0.role`: pydantic's location minus its union-member
    tags (`str`, `list[int]` ...), found by walking the body itself. A missing field
    (not in the body) is named too."""
    parts: list[str] = []
    node = body
    for part in loc:
        if isinstance(node, dict) and part in node:
            parts.append(part)
            node = node[part]
        elif isinstance(node, dict) and missing and isinstance(part, str):
            parts.append(part)
            break
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parts.append(str(part))
            node = node[part]
        else:
            break
    return ".".join(parts) or None


def _chat_text(messages: list[dict[str, Any]]) -> str:
    """Every message's role and text, in order: the prefix-routing key for a chat."""
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        lines.append(f"{m.get('role', '')}: {content or ''}")
    return "\n".join(lines)


def _engine_prompt(tokenizer: Tokenizer, body: dict[str, Any], *, chat: bool) -> PromptInput | None:
    """The prompt's ids as the engine runs them, or None when the router cannot tokenize
    it (no chat template, the template rejects the chat, a batch): the request then
    routes by its text, and an HTTP engine, which renders it again, answers with its
    own verdict (the gRPC leg answers with the router's)."""
    try:
        return prompt_input(tokenizer, body, chat=chat, max_model_len=None)
    except InvalidGenerationRequest as exc:
        logger.debug("prompt not tokenized; routing by its text", extra={"reason": exc.message})
        return None


def _prompt_key(prompt: Any) -> tuple[str, list[int] | None, int]:
    """(routing text, prompt token ids if the client sent ids, batch size)."""
    if isinstance(prompt, str):
        return prompt, None, 1
    if prompt and isinstance(prompt[0], str):
        return "\n".join(prompt), None, len(prompt)
    if prompt and isinstance(prompt[0], list):
        # A batch of token prompts routes by its first prompt; all go to one worker.
        return " ".join(map(str, prompt[0])), list(prompt[0]), len(prompt)
    return " ".join(map(str, prompt)), list(prompt), 1


def _request_id(headers: Mapping[str, str], names: list[str]) -> str:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return f"atom-{os.urandom(16).hex()}"  # as random as uuid4().hex, without building a UUID


def prepare_request(
    route: str,
    raw: bytes,
    headers: Mapping[str, str],
    *,
    request_id_headers: list[str],
    session_header: str,
    tokenizer: Tokenizer | ModelTokenizers | None = None,
) -> PreparedRequest:
    """Parse and validate `raw` for `route`; raise `ApiError` (4xx) on bad input.

    `tokenizer`: the model's, or the router's tokenizers by model. `headers` must have
    lower-case names.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model_cls = ChatCompletionRequest if route == CHAT_ROUTE else CompletionRequest
    try:
        parsed = model_cls.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc, body) from None

    tok = tokenizer.for_model(parsed.model) if isinstance(tokenizer, ModelTokenizers) else tokenizer
    chat = isinstance(parsed, ChatCompletionRequest)
    prompt = _engine_prompt(tok, body, chat=chat) if tok is not None else None
    batch_size = 1
    if isinstance(parsed, ChatCompletionRequest):
        text, tokens = _chat_text(body["messages"]), None
        if prompt is not None:
            text, tokens = prompt.text, list(prompt.input_ids)
        max_out = parsed.max_completion_tokens or parsed.max_tokens
    else:
        text, tokens, batch_size = _prompt_key(body["prompt"])
        if prompt is not None and prompt.text:  # a text prompt, encoded as the engine does
            tokens = list(prompt.input_ids)
        max_out = parsed.max_tokens
    if tokens is None and tok is not None:
        tokens = tok.encode(text)
    prompt_estimate = estimate_prompt_tokens(text, tokens)
    descriptor = RequestDescriptor(
        request_id=_request_id(headers, request_id_headers),
        model=parsed.model,
        routing_text=text,
        stream=bool(parsed.stream),
        routing_tokens=tokens,
        session_key=headers.get(session_header) or None,
        estimated_tokens=(prompt_estimate + (max_out or 0)) * batch_size * (parsed.n or 1),
        prompt_tokens=prompt_estimate,
    )
    return PreparedRequest(
        route=route, raw=raw, body=body, descriptor=descriptor, batch_size=batch_size, tokenizer=tok, prompt=prompt
    )


async def prepare_request_async(
    route: str,
    raw: bytes,
    headers: Mapping[str, str],
    *,
    request_id_headers: list[str],
    session_header: str,
    tokenizer: Tokenizer | ModelTokenizers | None = None,
) -> PreparedRequest:
    """`prepare_request`, in a worker thread when it tokenizes a long body: encoding a
    32k-token prompt takes ~50 ms of CPU (docs/router-side-processing.md), which the event
    loop would otherwise stall for (`HFTokenizer.encode_text` releases the GIL)."""
    kwargs: dict[str, Any] = {
        "request_id_headers": request_id_headers,
        "session_header": session_header,
        "tokenizer": tokenizer,
    }
    tokenizes = tokenizer is not None and not (isinstance(tokenizer, ModelTokenizers) and tokenizer.empty)
    if not tokenizes or len(raw) < OFF_LOOP_CHARS:
        return prepare_request(route, raw, headers, **kwargs)
    return await asyncio.to_thread(prepare_request, route, raw, headers, **kwargs)
