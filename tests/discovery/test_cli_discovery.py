"""Discovery flags: smg / sglang-router names, defaults from DiscoveryConfig, and the
settings the router refuses at start (exit status 2, one line)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from router.cli import build_parser, config_from_args, main
from router.config import DiscoveryConfig


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_defaults_are_the_dataclass():
    assert parse().discovery == DiscoveryConfig()


def test_flags_set_their_fields():
    cfg = parse(
        "--discovery-file", "w.yaml",
        "--discovery-check-interval-secs", "5",
        "--service-discovery",
        "--selector", "app=vllm", "tier=gpu",
        "--service-discovery-port", "8000",
        "--service-discovery-namespace", "serving",
        "--bootstrap-port-annotation", "example.com/bootstrap",
        "--service-discovery-protocol", "grpc",
    ).discovery  # fmt: skip
    assert cfg == DiscoveryConfig(
        file="w.yaml",
        check_interval_secs=5.0,
        service_discovery=True,
        selector=["app=vllm", "tier=gpu"],
        port=8000,
        namespace="serving",
        bootstrap_port_annotation="example.com/bootstrap",
        protocol="grpc",
    )
    pd = parse(
        "--pd-disaggregation", "--service-discovery", "--prefill-selector", "r=p", "--decode-selector", "r=d"
    ).discovery
    assert (pd.prefill_selector, pd.decode_selector) == (["r=p"], ["r=d"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--selector", "app=x"], "need --service-discovery"),
        (["--service-discovery"], "needs --selector"),
        (["--service-discovery", "--selector", "app"], "--selector: 'app' is not key=value"),
        (["--service-discovery", "--selector", "a=b", "--service-discovery-port", "0"], "is not a TCP port"),
        (["--pd-disaggregation", "--service-discovery", "--prefill-selector", "r=p"], "--decode-selector"),
        (["--discovery-file", "w.json", "--discovery-check-interval-secs", "0"], "must be more than 0"),
    ],
)
def test_refused_settings(capsys, argv, message):
    assert message in usage_error(capsys, *argv)


def _without(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter where `module` cannot be imported."""
    code = f"import sys; sys.modules[{module!r}] = None; from router.cli import main; main({list(argv)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_service_discovery_without_the_client_library_says_what_to_install():
    done = _without("kubernetes_asyncio", "--service-discovery", "--selector", "app=x")
    assert done.returncode == 2
    assert "pip install atom-mesh[k8s]" in done.stderr


def test_yaml_discovery_file_without_pyyaml_says_what_to_install():
    done = _without("yaml", "--discovery-file", "workers.yaml")
    assert done.returncode == 2
    assert "pip install atom-mesh[yaml]" in done.stderr
