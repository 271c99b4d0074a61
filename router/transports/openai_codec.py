"""The gRPC leg's `GenerationCodec` from `router.generation`: chats and completions, text
or token ids, rendered as vLLM's OpenAI server renders them.

It needs the model's tokenizer (`--tokenizer-path` / `--model-path`, or the one fetched
from the model's gRPC workers; with the chat template for chats). The prompt was
tokenized once, in prepare (`PreparedRequest.prompt`): those ids go to the engine, and
only a prompt prepare could not tokenize is tried again here, which raises its 400.
Unset sampling fields get the model's generation_config defaults, which vLLM's gRPC
servicer does not apply. A request for a model the router has no tokenizer for is
served by `CompletionsCodec` (token ids only).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from router.generation.detokenize import IncrementalDetokenizer, TokenTexts
from router.generation.inputs import prompt_input_async
from router.generation.openai_render import AnswerRenderer, AnswerSpec
from router.generation.parsers import parser_for
from router.generation.sampling import sampling_params
from router.generation.types import GenerationChunk, GenerationRequest
from router.prepare import CHAT_ROUTE, PreparedRequest
from router.tokenizer import ModelTokenizers, Tokenizer
from router.transports.completions_codec import CompletionsCodec
from router.workers.worker import Worker


class OpenAICodec:
    """`GenerationCodec` over `router.generation`, with the router's tokenizers."""

    def __init__(self, tokenizers: ModelTokenizers) -> None:
        self._tokenizers = tokenizers
        self._token_ids_only = CompletionsCodec()
        self._token_texts: dict[int, TokenTexts] = {}

    def token_texts(self, tokenizer: Tokenizer) -> TokenTexts:
        """Built on first use, not at router start: reading the tokenizer's pre-tokenizer
        serialises the whole tokenizer, which takes tens of seconds for a large
        vocabulary, and a router with only HTTP workers never needs it. Tokenizers live
        as long as the router, so one per tokenizer object."""
        texts = self._token_texts.get(id(tokenizer))
        if texts is None:
            texts = self._token_texts[id(tokenizer)] = TokenTexts(tokenizer.backend)
        return texts

    def _tokenizer(self, prepared: PreparedRequest, worker: Worker) -> Tokenizer | None:
        """The request's tokenizer: prepare's, or (a request naming no model, on a router
        with several) the one of the model the worker serves."""
        if prepared.tokenizer is None and len(worker.models) == 1:
            prepared.tokenizer = self._tokenizers.for_model(next(iter(worker.models)))
        return prepared.tokenizer

    async def request(self, prepared: PreparedRequest, worker: Worker) -> GenerationRequest:
        tokenizer = self._tokenizer(prepared, worker)
        if tokenizer is None:
            return await self._token_ids_only.request(prepared, worker)
        chat = prepared.route == CHAT_ROUTE
        sampling = sampling_params(prepared.body, chat=chat, defaults=tokenizer.sampling_defaults)
        # The engine checks the context length itself (its INVALID_ARGUMENT is the 400).
        prompt = prepared.prompt
        if prompt is None:  # prepare could not tokenize it: this raises the reason (a 400)
            prompt = await prompt_input_async(tokenizer, prepared.body, chat=chat, max_model_len=None)
        return GenerationRequest(
            request_id=prepared.descriptor.request_id,
            input_ids=prompt.input_ids,
            sampling=sampling,
            stream=prepared.descriptor.stream,
            text=prompt.text,
        )

    def _renderer(
        self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest, tokenizer: Tokenizer
    ) -> AnswerRenderer:
        chat = prepared.route == CHAT_ROUTE
        model = prepared.descriptor.model or (min(worker.models) if worker.models else "")
        s = request.sampling
        return AnswerRenderer(
            AnswerSpec.for_request(prepared.body, chat=chat, model=model, logprobs=s.logprobs),
            detokenizer=IncrementalDetokenizer(
                tokenizer.backend,
                request.input_ids,
                skip_special_tokens=s.skip_special_tokens,
                stop=s.stop,
                include_stop_str_in_output=s.include_stop_str_in_output,
            ),
            token_texts=self.token_texts(tokenizer),
            parser=parser_for(None),
            prompt_ids=request.input_ids,
        )

    def render_body(self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest, chunk: GenerationChunk) -> bytes:
        tokenizer = prepared.tokenizer
        if tokenizer is None:
            return self._token_ids_only.render_body(prepared, worker, request, chunk)
        return orjson.dumps(self._renderer(prepared, worker, request, tokenizer).response([chunk]))

    async def render_stream(
        self,
        prepared: PreparedRequest,
        worker: Worker,
        request: GenerationRequest,
        chunks: AsyncIterator[GenerationChunk],
    ) -> AsyncGenerator[bytes, None]:
        tokenizer = prepared.tokenizer
        if tokenizer is None:
            async for event in self._token_ids_only.render_stream(prepared, worker, request, chunks):
                yield event
            return
        renderer = self._renderer(prepared, worker, request, tokenizer)
        async for chunk in chunks:
            for event in renderer.stream_events(chunk):
                yield event
