"""Bad P/D configuration fails at SGLang start-up with a message that says what to fix.

Each case starts a real `sglang.launch_server` that must exit during argument
resolution, before any model loads (seconds, not a full engine start).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from testbed import REPO_ROOT
from testbed.ports import free_port
from testbed.processes import EngineStartError
from testbed.sglang_engine import SHIMS_DIR, sglang_available, start_sglang

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_sglang() -> None:
    reason = sglang_available()
    if reason:
        pytest.skip(reason)


def _start_failure(model_dir: Path, **kwargs) -> str:
    with pytest.raises(EngineStartError) as err:
        start_sglang(model_dir, timeout=600, **kwargs)
    assert "exited with status" in str(err.value), str(err.value)
    return str(err.value)


def test_mooncake_missing(tiny_llama: Path) -> None:
    no_mooncake = os.pathsep.join([str(SHIMS_DIR / "no_mooncake"), str(SHIMS_DIR), str(REPO_ROOT)])
    message = _start_failure(tiny_llama, mode="prefill", env={"PYTHONPATH": no_mooncake})
    assert (
        "--disaggregation-transfer-backend atom: the mooncake transport cannot start here: "
        "mooncake transfer engine is not installed: pip install 'atom-mesh[mooncake]'"
    ) in message


def test_bootstrap_port_in_use(tiny_llama: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _start_failure(tiny_llama, mode="prefill", bootstrap_port=port)
    assert f"--disaggregation-bootstrap-port {port} is already in use on 127.0.0.1; pick a free port" in message


def test_bootstrap_port_equal_to_api_port(tiny_llama: Path) -> None:
    port = free_port()
    message = _start_failure(tiny_llama, mode="prefill", port=port, bootstrap_port=port)
    assert f"--disaggregation-bootstrap-port {port} equals --port" in message
