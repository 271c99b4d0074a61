"""Run a Python snippet in the SGLang venv (SGLang cannot be imported in the vLLM venv)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from testbed.sglang_engine import SGLANG_PYTHON, sglang_available, sglang_env


def run_in_sglang(code: str, *, timeout: float = 300) -> tuple[dict[str, Any], str]:
    """Run `code`, which must print one JSON object as its last stdout line; returns (it, stderr)."""
    reason = sglang_available()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        [str(SGLANG_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**sglang_env(), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, f"snippet failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr
