"""A real vLLM CPU engine, started with atom-mesh installed, loads our plugin.

vLLM runs `vllm.general_plugins` entry points in every process (API server, engine core,
workers); the plugin's `register()` logs "atom-mesh vLLM plugin loaded" at INFO. We read
the shared reference engine's log, so this costs no extra engine start.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.support.shared_engine import SharedEngine

pytestmark = pytest.mark.engine

PLUGIN_LINE = "atom-mesh vLLM plugin loaded"


def test_vllm_logs_that_the_plugin_loaded(vllm_colocated: SharedEngine) -> None:
    log = vllm_colocated.log_text()
    assert PLUGIN_LINE in log, (
        f"vLLM's log has no {PLUGIN_LINE!r}: either the atom_mesh entry point did not run, or "
        "its INFO line went nowhere (vLLM configures handlers for the 'vllm' logger only, so an "
        "'atom_mesh.*' logger needs a handler of its own inside the engine).\n"
        f"log {vllm_colocated.log_path} tail:\n"
        + vllm_colocated.log_tail(40)
    )
    assert "Failed to load plugin" not in log


def test_engine_with_plugin_serves_the_tiny_model(vllm_colocated: SharedEngine, tiny_llama: Path) -> None:
    """The plugin must not disturb serving: a greedy completion runs to its token limit."""
    body = {"model": str(tiny_llama), "prompt": "Hello world", "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(
        vllm_colocated.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer = json.loads(resp.read())
    choice = answer["choices"][0]
    assert answer["usage"]["completion_tokens"] == 4
    assert choice["finish_reason"] == "length"
