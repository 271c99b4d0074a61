"""Tracing settings: flags, endpoints, the missing-extra error, and nothing imported when off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from router.cli import build_parser, config_from_args
from router.config import RouterConfig, TracingConfig
from router.tracing import OFF, create_tracer, is_http_endpoint, otlp_http_url

WORKER = ["--worker-urls", "http://127.0.0.1:9"]


def parse(*argv: str) -> RouterConfig:
    return config_from_args(build_parser().parse_args([*WORKER, *argv]))


def test_tracing_is_off_by_default() -> None:
    config = parse()
    assert config.tracing == TracingConfig() and not config.tracing.enabled
    assert create_tracer(config.tracing) is OFF


def test_the_endpoint_flag_turns_tracing_on() -> None:
    tracing = parse("--otlp-traces-endpoint", "10.0.0.5:4317").tracing
    assert tracing.enabled and tracing.endpoint == "10.0.0.5:4317"
    assert not is_http_endpoint(tracing.endpoint)


def test_enable_trace_alone_exports_to_smgs_default() -> None:
    tracing = parse("--enable-trace").tracing
    assert tracing.enabled and tracing.endpoint == "localhost:4317"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector.example/otlp/v1/traces", "https://collector.example/otlp/v1/traces"),
    ],
)
def test_http_endpoints_get_the_traces_path_unless_they_name_one(endpoint: str, url: str) -> None:
    assert is_http_endpoint(endpoint)
    assert otlp_http_url(endpoint) == url


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4317", "http://127.0.0.1:4318"])
def test_an_endpoint_builds_an_exporting_tracer(endpoint: str) -> None:
    tracer = create_tracer(TracingConfig(otlp_traces_endpoint=endpoint))
    try:
        assert tracer.enabled
    finally:
        tracer.shutdown()  # nothing was recorded: nothing to send


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_without_the_otel_extra_the_flag_exits_2_saying_what_to_install() -> None:
    done = _run(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "from router.cli import main\n"
        f"main({[*WORKER, '--otlp-traces-endpoint', '127.0.0.1:4317']!r})\n"
    )
    assert done.returncode == 2, done.stderr
    assert "pip install atom-mesh[otel]" in done.stderr
    assert "Traceback" not in done.stderr


def test_nothing_from_opentelemetry_is_imported_when_tracing_is_off() -> None:
    done = _run(
        "import sys\n"
        "from router.app import create_app\n"
        "from router.config import RouterConfig, WorkerSpec\n"
        "create_app(RouterConfig(workers=[WorkerSpec(url='http://127.0.0.1:9')]))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"
