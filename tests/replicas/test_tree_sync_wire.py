"""The cache_aware decisions' wire schema: what one replica encodes, another decodes."""

import pytest

from router.shared_state.tree_sync import BadDecision, RoutingDecision, decode, encode


def test_text_and_token_keys_round_trip_cut_to_the_bound():
    text = RoutingDecision("r1", "regular", "http://w:1", "hello world")
    assert decode(encode(text, max_key_length=5)) == RoutingDecision("r1", "regular", "http://w:1", "hello")
    tokens = RoutingDecision("r1", "decode", "http://w:2", (1, 2, 3))
    assert decode(encode(tokens, max_key_length=8)) == tokens


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"v": 2, "replica": "r", "role": "regular", "url": "u", "text": "x"}', "version-1"),
        (b'{"v": 1, "replica": "", "role": "regular", "url": "u", "text": "x"}', "non-empty"),
        (b'{"v": 1, "replica": "r", "role": "regular", "url": "u"}', "'text' string"),
        (b'{"v": 1, "replica": "r", "role": "regular", "url": "u", "tokens": [1, "a"]}', "'tokens' list"),
    ],
)
def test_foreign_messages_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadDecision, match=reason):
        decode(data)
