"""The command line: defaults from the config dataclasses, choices from the registries,
and worker specs (flags and --config-file) refused in one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.adapters import ADAPTERS
from router.cli import build_parser, config_from_args, main
from router.config import RouterConfig, WorkerSpec
from router.policies.registry import POLICIES

# Flags that are not settings of their own: they become `workers` or pick `backend`.
NOT_SETTINGS = {"help", "worker_urls", "prefill", "decode", "config_file", "backend"}


def parse(*argv: str) -> RouterConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_no_flags_is_the_dataclass_defaults():
    assert parse() == RouterConfig()


def test_every_settings_flag_names_a_config_field():
    """A flag's dest is the RouterConfig field it sets; a typo would silently set nothing."""
    defaults = RouterConfig()
    for action in build_parser()._actions:
        if action.dest in NOT_SETTINGS:
            continue
        owner = defaults
        *sections, name = action.dest.split(".")
        for section in sections:
            owner = getattr(owner, section)
        assert hasattr(owner, name), f"{action.option_strings} sets unknown field {action.dest!r}"


def test_flags_set_their_fields():
    config = parse(
        "--port", "8080",
        "--cache-threshold", "0.5",
        "--queue-size", "7",
        "--rate-limit-tokens-per-second", "2.5",
        "--disable-retries",
        "--cb-timeout-duration-secs", "9",
        "--health-check-endpoint", "/ping",
        "--session-header", "X-Conv",
        "--request-id-headers", "X-Trace", "x-b3",
        "--kv-events-port", "5557",
        "--seed", "3",
    )  # fmt: skip
    assert config.port == 8080 and config.policy_config.cache_threshold == 0.5
    assert config.admission.queue_size == 7 and config.admission.rate_limit_tokens_per_second == 2.5
    assert config.retry.enabled is False and config.retry.max_retries == RouterConfig().retry.max_retries
    assert config.circuit_breaker.timeout_duration_secs == 9.0 and config.health.endpoint == "/ping"
    assert config.policy_config.session_header == "x-conv" and config.request_id_headers == ["x-trace", "x-b3"]
    assert (config.kv_events_port, config.seed) == (5557, 3)


def test_choices_come_from_the_registries():
    by_dest = {a.dest: a for a in build_parser()._actions}
    assert tuple(by_dest["backend"].choices) == tuple(ADAPTERS)
    for dest in ("policy", "prefill_policy", "decode_policy"):
        assert tuple(by_dest[dest].choices) == POLICIES


def test_backend_defaults_by_mode_and_pd_workers():
    config = parse("--pd-disaggregation", "--prefill", "http://p:1", "8998", "--decode", "http://d:1")
    assert config.backend == "sglang"
    assert config.workers == [
        WorkerSpec(url="http://p:1", role="prefill", bootstrap_port=8998),
        WorkerSpec(url="http://d:1", role="decode"),
    ]
    assert parse("--worker-urls", "http://w:1").backend == "openai"


def _write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "workers.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_config_file_workers_are_loaded(tmp_path: Path):
    path = _write(tmp_path, {"workers": [{"url": "http://w:1", "labels": {"rack": "a"}}, {"url": "http://w:2"}]})
    assert parse("--config-file", path).workers == [
        WorkerSpec(url="http://w:1", labels={"rack": "a"}),
        WorkerSpec(url="http://w:2"),
    ]


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atom-router: error: "), out.err
    return lines[0]


@pytest.mark.parametrize(
    ("entries", "index", "words"),
    [
        ([{"url": "http://w:1"}, {"url": "http://w:2", "colour": "red"}], 1, ["unknown field", "colour"]),
        ([{"url": "http://w:1", "bootstrap_port": "8998"}], 0, ["'bootstrap_port'", "integer or null"]),
        ([{"url": "http://w:1", "labels": ["a"]}], 0, ["'labels'"]),
        ([{"role": "regular"}], 0, ["'url' is required"]),
        ([{"url": "localhost:8000"}], 0, ["'url'", "http://host:port"]),
        ([{"url": "http://w:1", "role": "prefill"}], 0, ["'role'", "--pd-disaggregation"]),
        (["http://w:1"], 0, ["JSON object"]),
    ],
)
def test_bad_config_file_entry_is_one_line_naming_file_entry_and_field(tmp_path, capsys, entries, index, words):
    path = _write(tmp_path, {"workers": entries})
    line = _usage_error(capsys, "--config-file", path)
    assert f"--config-file {path}: workers[{index}]: " in line
    for word in words:
        assert word in line


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", ["not valid JSON"]),
        ([{"url": "http://w:1"}], ["JSON object"]),
        ({"worker": []}, ["unknown key", "'worker'"]),
        ({"workers": {"url": "http://w:1"}}, ["'workers' must be a list"]),
    ],
)
def test_bad_config_file_is_one_line(tmp_path, capsys, content, words):
    path = _write(tmp_path, content)
    line = _usage_error(capsys, "--config-file", path)
    assert f"--config-file {path}: " in line
    for word in words:
        assert word in line


def test_missing_config_file_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "absent.json")
    assert "cannot read it" in _usage_error(capsys, "--config-file", path)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--worker-urls", "localhost:8000"], ["--worker-urls localhost:8000", "http://host:port"]),
        (["--prefill", "http://p:1"], ["need --pd-disaggregation"]),
        (["--pd-disaggregation", "--prefill", "http://p:1", "x"], ["--prefill http://p:1 x", "'none'"]),
        (["--pd-disaggregation", "--prefill", "http://p:1", "70000"], ["'bootstrap_port'", "1-65535"]),
        (["--pd-disaggregation", "--worker-urls", "http://w:1"], ["'prefill' or 'decode'"]),
        (["--pd-disaggregation", "--backend", "openai"], ["co-located workers only", "vllm"]),
    ],
)
def test_bad_flag_workers_are_one_line(capsys, argv, words):
    line = _usage_error(capsys, *argv)
    for word in words:
        assert word in line
