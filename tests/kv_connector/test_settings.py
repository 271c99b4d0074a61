"""AtomKVConnector's kv_connector_extra_config parsing: typos and bad values fail loudly."""

from __future__ import annotations

import pytest

from vllm_atom.kv_settings import DEFAULT_SIDE_CHANNEL_PORT, AtomKVSettings


def test_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("ATOM_KV_SIDE_CHANNEL_PORT", raising=False)
    s = AtomKVSettings.from_extra_config({"transport": "mooncake", "protocol": "tcp"})
    assert (s.transport, s.protocol, s.side_channel_port) == ("mooncake", "tcp", DEFAULT_SIDE_CHANNEL_PORT)
    s = AtomKVSettings.from_extra_config({"side_channel_port": "7001", "transfer_timeout_s": 5, "enable_test_hooks": True})
    assert (s.side_channel_port, s.transfer_timeout_s, s.enable_test_hooks) == (7001, 5.0, True)
    monkeypatch.setenv("ATOM_KV_SIDE_CHANNEL_PORT", "7100")
    assert AtomKVSettings.from_extra_config({}).side_channel_port == 7100


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"side_chanel_port": 1}, "unknown AtomKVConnector"),
        ({"transport": "nixl"}, "'mooncake' or 'mori'"),
        ({"side_channel_port": "eighty"}, "not a valid int"),
        ({"transfer_timeout_s": 0}, "positive"),
        ({"enable_test_hooks": "yes"}, "not a valid bool"),
    ],
)
def test_bad_settings_are_refused(extra, match):
    with pytest.raises(ValueError, match=match):
        AtomKVSettings.from_extra_config(extra)
