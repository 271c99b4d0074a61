"""The load monitor's flags: smg's names, defaults from `LoadMonitorConfig`, bad values refused."""

from __future__ import annotations

import pytest

from router.cli import UsageError, build_parser, config_from_args
from router.config import LoadMonitorConfig, RouterConfig


def parse(*argv: str) -> RouterConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_are_the_dataclass_and_smgs_thresholds():
    assert parse().load_monitor == LoadMonitorConfig(
        enabled=True,
        interval_secs=1.0,
        overload_waiting_requests=8,
        overload_token_usage=0.8,
        overload_protection=True,
        overload_shed=False,
    )


def test_every_flag_sets_its_field():
    config = parse(
        "--load-monitor-interval", "0.5",
        "--disable-load-monitoring",
        "--worker-overload-waiting-requests", "3",
        "--worker-overload-token-usage", "0.9",
        "--disable-worker-overload-protection",
        "--worker-overload-shed",
    )  # fmt: skip
    assert config.load_monitor == LoadMonitorConfig(
        enabled=False,
        interval_secs=0.5,
        overload_waiting_requests=3,
        overload_token_usage=0.9,
        overload_protection=False,
        overload_shed=True,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--load-monitor-interval", "0"], "--load-monitor-interval must be more than 0"),
        (["--worker-overload-waiting-requests", "0"], "--worker-overload-waiting-requests must be 1 or more"),
        (["--worker-overload-token-usage", "0"], r"--worker-overload-token-usage must be within \(0, 1\]"),
        (["--worker-overload-token-usage", "1.5"], r"--worker-overload-token-usage must be within \(0, 1\]"),
    ],
)
def test_out_of_range_values_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(*argv)
