"""The replica flags: off by default, set their `SharedStateConfig` fields, bad values refused."""

from __future__ import annotations

import pytest

from router.cli import UsageError, build_parser, config_from_args
from router.config import SharedStateConfig


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_nothing_is_shared_by_default():
    assert _config().shared_state == SharedStateConfig()
    assert SharedStateConfig().redis_url is None


def test_flags_set_the_shared_state():
    pytest.importorskip("redis", reason="the redis client is not installed: pip install atom-mesh[redis]")
    shared = _config(
        "--redis-url", "redis://10.0.0.5:6379/2", "--redis-key-prefix", "fleet-a", "--tree-sync-max-key-length", "512"
    ).shared_state
    assert shared == SharedStateConfig("redis://10.0.0.5:6379/2", "fleet-a", 512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis-url", "10.0.0.5:6379"], "expected redis://"),
        (["--tree-sync-max-key-length", "0"], "1 or more"),
    ],
)
def test_bad_values_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        _config(*argv)
