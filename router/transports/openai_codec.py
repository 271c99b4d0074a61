"""The gRPC leg's `GenerationCodec` from `router.generation`: chats and completions, text
or token ids, rendered as vLLM's OpenAI server renders them.

It needs the router's tokenizer (`--tokenizer-path`, with the model's chat template for
chats): prompts are tokenized here and answers detokenized incrementally, with stop-string
holdback. A router without one serves gRPC workers with `CompletionsCodec` (token ids).
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
from router.tokenizer import HFTokenizer
from router.workers.worker import Worker


class OpenAICodec:
    """`GenerationCodec` over `router.generation`, with the router's tokenizer."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tokenizer = tokenizer
        self._token_texts: TokenTexts | None = None

    @property
    def token_texts(self) -> TokenTexts:
        """Built on first use, not at router start: reading the tokenizer's pre-tokenizer
        serialises the whole tokenizer, which takes tens of seconds for a large
        vocabulary, and a router with only HTTP workers never needs it."""
        if self._token_texts is None:
            self._token_texts = TokenTexts(self._tokenizer.backend)
        return self._token_texts

    async def request(self, prepared: PreparedRequest, worker: Worker) -> GenerationRequest:
        chat = prepared.route == CHAT_ROUTE
        sampling = sampling_params(prepared.body, chat=chat)
        # The engine checks the context length itself (its INVALID_ARGUMENT is the 400).
        # A long prompt is tokenized in a worker thread (router.generation.inputs).
        prompt = await prompt_input_async(self._tokenizer, prepared.body, chat=chat, max_model_len=None)
        return GenerationRequest(
            request_id=prepared.descriptor.request_id,
            input_ids=prompt.input_ids,
            sampling=sampling,
            stream=prepared.descriptor.stream,
            text=prompt.text,
        )

    def _renderer(self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest) -> AnswerRenderer:
        chat = prepared.route == CHAT_ROUTE
        model = prepared.descriptor.model or (min(worker.models) if worker.models else "")
        s = request.sampling
        return AnswerRenderer(
            AnswerSpec.for_request(prepared.body, chat=chat, model=model, logprobs=s.logprobs),
            detokenizer=IncrementalDetokenizer(
                self._tokenizer.backend,
                request.input_ids,
                skip_special_tokens=s.skip_special_tokens,
                stop=s.stop,
                include_stop_str_in_output=s.include_stop_str_in_output,
            ),
            token_texts=self.token_texts,
            parser=parser_for(None),
            prompt_ids=request.input_ids,
        )

    def render_body(
        self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest, chunk: GenerationChunk
    ) -> bytes:
        return orjson.dumps(self._renderer(prepared, worker, request).response([chunk]))

    async def render_stream(
        self,
        prepared: PreparedRequest,
        worker: Worker,
        request: GenerationRequest,
        chunks: AsyncIterator[GenerationChunk],
    ) -> AsyncGenerator[bytes, None]:
        renderer = self._renderer(prepared, worker, request)
        async for chunk in chunks:
            for event in renderer.stream_events(chunk):
                yield event
