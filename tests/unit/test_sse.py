"""The SSE output-event counter: events, not chunks; usage-only chunks and [DONE] are not output."""

import orjson
import pytest

from router.sse import MAX_EVENT_BYTES, SseEventCounter, is_output_event


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


TOKEN = _event({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
USAGE_ONLY = _event({"id": "c", "choices": [], "usage": {"completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


def _counts(chunks: list[bytes]) -> list[int]:
    counter = SseEventCounter()
    return [counter.feed(c) for c in chunks]


def test_one_event_per_chunk():
    assert _counts([TOKEN, TOKEN, TOKEN, DONE]) == [1, 1, 1, 0]


def test_several_events_in_one_chunk_all_count():
    assert _counts([TOKEN * 3 + USAGE_ONLY + DONE]) == [3]


def test_an_event_split_across_chunks_counts_once_when_it_ends():
    stream = TOKEN + TOKEN + DONE
    # every split point, including inside "data:" and between the two newlines
    for cut in range(1, len(stream)):
        counts = _counts([stream[:cut], stream[cut:]])
        assert sum(counts) == 2, cut
    assert _counts([TOKEN[:7], TOKEN[7:-1], TOKEN[-1:]]) == [0, 0, 1]


@pytest.mark.parametrize(
    "event",
    [
        DONE,
        USAGE_ONLY,
        b'data: {"id": "c", "choices": [ ], "usage": {}}\n\n',  # json.dumps spacing
        b'data: {"error": {"message": "worker died", "code": "upstream_stream_broken"}}\n\n',
        b": keep-alive comment\n\n",
        b"event: ping\n\n",  # no data line: not dispatched at all
    ],
)
def test_events_without_output_do_not_count(event):
    assert _counts([event]) == [0]


def test_a_token_whose_text_mentions_empty_choices_still_counts():
    text = _event({"choices": [{"index": 0, "text": '"choices": []'}]})
    assert _counts([text]) == [1]


def test_crlf_and_multi_line_data_events():
    multi = b'data: {"choices":\r\ndata: [{"index": 0, "text": "x"}]}\r\n\r\n'
    assert _counts([multi]) == [1]
    # a CRLF split between its CR and LF is one line end, not a blank line that ends the event
    cut = multi.index(b"\r") + 1
    assert _counts([multi[:cut], multi[cut:]]) == [0, 1]
    assert _counts([multi[:-1], multi[-1:]]) == [1, 0]  # CRLF then CR: the blank line already ended it
    assert _counts([b'data:{"choices":[{"index":0}]}\r\r']) == [1]  # no space after the colon, CR line ends


def test_is_output_event_on_single_events():
    assert is_output_event(TOKEN[:-2])
    assert not is_output_event(DONE[:-2])
    assert not is_output_event(b"")


def test_running_total_and_an_oversized_event_is_skipped_not_buffered():
    counter = SseEventCounter()
    counter.feed(TOKEN + TOKEN[:10])
    counter.feed(TOKEN[10:] + DONE)
    assert counter.output_events == 2
    huge = SseEventCounter()
    assert huge.feed(b'data: {"choices": [{"text": "' + b"x" * (MAX_EVENT_BYTES + 1)) == 0
    assert huge.feed(b'"}]}\n\n' + TOKEN) == 1  # the tail of the skipped event is not counted


@pytest.mark.parametrize(
    "event",
    [
        TOKEN,
        USAGE_ONLY,
        DONE,
        b'data: {"id": "c", "choices": [ {"index": 0}]}\n\n',  # spaced: the general path decides
        b'data: {"x": {"choices": []}, "choices": [{"index": 0}]}\n\n',  # first key empty
        b'data: {"error": {"message": "m"}}\n\n',
        b': comment mentioning "choices":[{\n\n',
        b'data: {"choices":[{"index":0}]}\r\n\r\n',
        b'data: {"choices":[{"index":0}]}\rdata: x\n\n',
    ],
)
def test_a_one_event_chunk_counts_as_the_event_does(event):
    """The one-event-per-chunk shortcut agrees with the event rules in every shape."""
    assert _counts([event]) == [int(is_output_event(event.replace(b"\r\n", b"\n").rstrip(b"\n")))]
    assert sum(_counts([event[:-1], event[-1:]])) == _counts([event])[0]  # the general path
