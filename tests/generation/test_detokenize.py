"""The incremental detokenizer and logprob token texts, against vLLM's own."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from router.generation.detokenize import IncrementalDetokenizer, TokenTexts, leading_space_marker
from router.generation.types import FinishReason, GenerationChunk

MULTIBYTE = ["😀 emoji 🍵", "世界 東京 café", "naïve — “quotes” ✓", "👩‍👩‍👧 family"]
EOS = 1  # the tiny model's </s>


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))


def _chunk(ids: list[int], finish: FinishReason | None = None, matched: int | str | None = None) -> GenerationChunk:
    return GenerationChunk(tuple(ids), prompt_tokens=3, completion_tokens=len(ids), finish_reason=finish, matched_stop=matched)


def _stream(
    detok: IncrementalDetokenizer, ids: list[int], finish: FinishReason = "length", matched: int | str | None = None
) -> list[str]:
    """Feed `ids` one chunk per token, the last finishing; the released deltas."""
    return [detok.feed(_chunk([t], finish if i == len(ids) - 1 else None, matched)) for i, t in enumerate(ids)]


@pytest.mark.parametrize("text", MULTIBYTE)
def test_multibyte_text_is_never_split(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # byte-level: characters span several tokens
    deltas = _stream(IncrementalDetokenizer(tok, [5, 6]), ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some tokens end inside a character and release nothing yet


def test_text_that_may_become_a_stop_string_is_held_until_it_cannot(tok: Tokenizer) -> None:
    ids = tok.encode("hello world, wow", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok, [], stop=["wox"])
    released = ""
    for t in ids[:-1]:
        released += detok.feed(_chunk([t]))
        assert not released.endswith("w") and not released.endswith("wo")
        assert detok.text.startswith(released)
    released += detok.feed(_chunk([ids[-1]], "length"))
    assert released == "hello world, wow"


def test_a_matched_stop_string_ends_the_answer_before_it(tok: Tokenizer) -> None:
    ids = tok.encode("one two three", add_special_tokens=False).ids
    # The engine stops on the token that completes the stop string and says so in its chunk.
    ids = ids[: next(n for n in range(1, len(ids) + 1) if "two" in tok.decode(ids[:n]))]
    deltas = _stream(IncrementalDetokenizer(tok, [], stop=["two"]), ids, "stop", "two")
    assert "".join(deltas) == "one "
    deltas = _stream(IncrementalDetokenizer(tok, [], stop=["two"], include_stop_str_in_output=True), ids, "stop", "two")
    assert "".join(deltas) == "one two"


def test_a_stop_token_adds_no_text_unless_asked(tok: Tokenizer) -> None:
    ids = tok.encode("abc def", add_special_tokens=False).ids
    stop_id = ids[-1]
    kept = tok.decode(ids[:-1])
    assert "".join(_stream(IncrementalDetokenizer(tok, []), ids, "stop", stop_id)) == kept
    with_stop = IncrementalDetokenizer(tok, [], include_stop_str_in_output=True)
    assert "".join(_stream(with_stop, ids, "stop", stop_id)) == "abc def"


def test_special_tokens_are_skipped_unless_asked(tok: Tokenizer) -> None:
    ids = [*tok.encode("hi", add_special_tokens=False).ids, EOS]
    assert "".join(_stream(IncrementalDetokenizer(tok, []), ids)) == "hi"
    assert "".join(_stream(IncrementalDetokenizer(tok, [], skip_special_tokens=False), ids)) == "hi</s>"


def test_a_chunk_may_carry_many_tokens(tok: Tokenizer) -> None:
    ids = tok.encode("😀 x 世界 y", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok, [])
    out = detok.feed(_chunk(ids[:5])) + detok.feed(_chunk(ids[5:], "length"))
    assert out == "😀 x 世界 y"


def test_token_texts_show_a_completed_character_on_its_last_token(tok: Tokenizer) -> None:
    ids = tok.encode("a😀", add_special_tokens=False).ids
    texts = TokenTexts(tok)
    shown = [texts.text(t, ids[:i]) for i, t in enumerate(ids)]
    assert shown[0] == "a"
    assert shown[-1] == "😀" and all(s == "" for s in shown[1:-1])
    assert texts.text(EOS, []) == "</s>"  # logprob tokens keep special tokens, as vLLM's


def test_metaspace_tokenizers_keep_the_leading_space_in_token_texts() -> None:
    vocab = {"<unk>": 0, "▁hello": 1, "▁world": 2, "x": 3}
    sp = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    assert leading_space_marker(sp) == "▁"
    assert sp.decode([2]) == "world"  # decode strips it ...
    assert TokenTexts(sp).text(2, [1]) == " world"  # ... vLLM's logprob token restores it
    assert TokenTexts(sp).text(3, [1]) == "x"


# -- against vLLM's FastIncrementalDetokenizer (imports vLLM: slow) --------------------------


def _vllm_answer(tok: Tokenizer, prompt: list[int], ids: list[int], stop: list[str], include: bool, eos: bool):
    """What vLLM's engine-side detokenizer outputs and keeps for this token stream."""
    from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

    params = SimpleNamespace(
        stop=stop,
        min_tokens=0,
        include_stop_str_in_output=include,
        skip_special_tokens=True,
        spaces_between_special_tokens=True,
    )
    request = SimpleNamespace(request_id="r", sampling_params=params, prompt_token_ids=prompt)
    detok = FastIncrementalDetokenizer(SimpleNamespace(_tokenizer=tok), request)  # type: ignore[arg-type]
    matched: str | None = None
    for i, t in enumerate(ids):
        matched = detok.update([t], stop_terminated=eos and i == len(ids) - 1)
        if matched is not None:
            break
    return detok.get_next_output_text(finished=True, delta=False), list(detok.output_token_ids), matched


def _cases(tok: Tokenizer) -> list[tuple[list[int], list[int], list[str], bool, bool]]:
    rng = random.Random(12)
    vocab = tok.get_vocab_size()
    cases = []
    for n in range(40):
        ids = [rng.randrange(3, vocab) for _ in range(30)]
        if n % 4 == 0:
            text = rng.choice(MULTIBYTE)
            ids = tok.encode(text * 2, add_special_tokens=False).ids
        plain = tok.decode(ids)
        start = rng.randrange(0, max(1, len(plain) - 3))
        stop = [plain[start : start + rng.randrange(1, 4)]] if n % 3 else []
        stop = [s for s in stop if s.strip("\ufffd")]
        eos = n % 5 == 0
        cases.append(([5, 6, 7], ids + ([EOS] if eos else []), stop, n % 2 == 0, eos))
    return cases


@pytest.mark.slow
def test_text_equals_vllms_detokenizer(tok: Tokenizer) -> None:
    finishes: list[str] = []
    for prompt, ids, stop, include, eos in _cases(tok):
        text, kept, matched = _vllm_answer(tok, prompt, ids, stop, include, eos)
        if matched is not None:
            finish: FinishReason = "stop"
            match: int | str | None = matched
        elif eos:
            finish, match = "stop", None
        else:
            finish, match = "length", None
        ours = IncrementalDetokenizer(tok, prompt, stop=stop, include_stop_str_in_output=include)
        deltas = _stream(ours, kept, finish, match)
        assert "".join(deltas) == text, (ids, stop, include)
        assert ours.text == text
        finishes.append("stop string" if matched else finish)
    # the cases cover stop strings, stop tokens and running out of tokens
    assert {"stop string", "stop", "length"} <= set(finishes)


@pytest.mark.slow
def test_logprob_token_texts_equal_vllms(tok: Tokenizer, tiny_llama: Path) -> None:
    """Each token's logprob string, sampled and alternative, equals vLLM's LogprobsProcessor
    output over multi-byte text (incomplete bytes '' until the completing token)."""
    import numpy as np
    from vllm.tokenizers import get_tokenizer
    from vllm.v1.engine.logprobs import LogprobsProcessor

    vllm_tok = get_tokenizer(str(tiny_llama))
    texts = TokenTexts(tok)
    rng = random.Random(3)
    for text in [*MULTIBYTE, "x</s>y"]:
        ids = [*tok.encode(text, add_special_tokens=False).ids, EOS]
        processor = LogprobsProcessor(
            tokenizer=vllm_tok,
            logprobs=[],
            prompt_logprobs=None,
            cumulative_logprob=0.0,
            num_logprobs=2,
            num_prompt_logprobs=None,
        )
        alternatives = []
        for t in ids:
            alts = [t, *rng.sample(range(3, tok.get_vocab_size()), 2)]
            alternatives.append(alts)
            processor._update_sample_logprobs(
                ([np.array(alts)], [np.array([-1.0, -2.0, -3.0])], [np.array([1])], None)  # type: ignore[arg-type]
            )
        assert processor.logprobs is not None
        for i, (position, alts) in enumerate(zip(processor.logprobs, alternatives, strict=True)):
            theirs = [position[a].decoded_token for a in alts]
            ours = [texts.text(a, ids[:i]) for a in alts]
            assert ours == theirs, (text, i)
