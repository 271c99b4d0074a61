"""AtomKVConnector's kv_connector_extra_config parsing: typos and bad values fail loudly,
and every default and name comes from the engine-neutral core."""

from __future__ import annotations

import pytest
from vllm_atom.kv_settings import DEFAULT_SIDE_CHANNEL_PORT, AtomKVSettings

from kv_connector import defaults
from kv_connector.consumer import ConsumerConfig
from kv_connector.producer import ProducerConfig
from kv_connector.transport import DEFAULT_PROTOCOL, DEFAULT_TRANSPORT


def test_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("ATOM_KV_SIDE_CHANNEL_PORT", raising=False)
    s = AtomKVSettings.from_extra_config({})
    assert (s.transport, s.protocol, s.side_channel_port) == (DEFAULT_TRANSPORT, DEFAULT_PROTOCOL, DEFAULT_SIDE_CHANNEL_PORT)
    s = AtomKVSettings.from_extra_config({"transport": "mori", "side_channel_port": "7001", "transfer_timeout_s": 5})
    assert (s.transport, s.side_channel_port, s.transfer_timeout_s) == ("mori", 7001, 5.0)
    monkeypatch.setenv("ATOM_KV_SIDE_CHANNEL_PORT", "7100")
    assert AtomKVSettings.from_extra_config({}).side_channel_port == 7100


def test_timeout_defaults_are_the_cores():
    """One default per timeout: the vLLM settings and the core's configs agree."""
    s = AtomKVSettings()
    assert s.hold_timeout_s == ProducerConfig("e", "f").hold_ttl_s == defaults.HOLD_TTL_S
    assert s.transfer_timeout_s == ConsumerConfig("e", "f").timeout_s == defaults.TRANSFER_TIMEOUT_S
    assert defaults.HOLD_TTL_S > defaults.TRANSFER_TIMEOUT_S  # a consumer allowed to ask still finds its KV


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"side_chanel_port": 1}, "unknown AtomKVConnector"),
        ({"transport": "nixl"}, "unknown KV transport 'nixl'; use one of 'mooncake', 'mori'"),
        ({"protocol": "udp"}, "unknown Mooncake protocol 'udp'; use one of 'tcp', 'rdma'"),
        ({"side_channel_port": "eighty"}, "not a valid int"),
        ({"transfer_timeout_s": 0}, "positive"),
        ({"enable_test_hooks": True}, "unknown AtomKVConnector"),  # test hooks are not a setting
    ],
)
def test_bad_settings_are_refused(extra, match):
    with pytest.raises(ValueError, match=match):
        AtomKVSettings.from_extra_config(extra)
