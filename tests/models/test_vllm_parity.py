"""Acceptance on real vLLM CPU: our implementation equals vLLM's built-in, token for token.

For each tiny random-weight model (Llama, Qwen3 with tied embeddings, Qwen3-MoE) the
built-in implementation and ours (selected with `--hf-overrides`) answer the same batch
of greedy completions; generated token ids must be identical and every prompt and
sampled-token logprob must agree to 1e-4 (float32). Our three engines start together
(their start-ups overlap). The Llama reference is the session's shared built-in engine,
asked live; the Qwen3 and Qwen3-MoE references are the built-ins' answers recorded by
`tests/models/record_vllm_parity.py` for this vLLM version and these model builds (their
two engines took about two vLLM start-ups of the suite).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.models import build_tiny_model
from testbed.processes import ManagedProcess
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, start_vllm, vllm_version
from tests.models.record_vllm_parity import MAX_TOKENS, OUT, PROMPTS, RECORDED_KINDS, complete_batch
from tests.support.shared_engine import SharedEngine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TOLERANCE = 1e-4
ATOM_ARCHS = {"llama": "AtomLlamaForCausalLM", "qwen3": "AtomQwen3ForCausalLM", "qwen3_moe": "AtomQwen3MoeForCausalLM"}
RERECORD = "re-record: flock /tmp/atom-heavy.lock timeout 900 .venv/bin/python -m tests.models.record_vllm_parity"


@pytest.fixture(scope="module")
def atom_engines() -> Iterator[dict[str, ManagedProcess]]:
    """Our implementation of each model kind, one engine each, started together."""
    procs: dict[str, ManagedProcess] = {}
    try:
        for kind, arch in ATOM_ARCHS.items():
            overrides = json.dumps({"architectures": [arch]})
            procs[kind] = start_vllm(
                build_tiny_model(kind), extra_args=["--hf-overrides", overrides], wait=False, name=f"vllm-atom-{kind}"
            )
        for proc in procs.values():
            proc.wait_http_ready("/health", timeout=DEFAULT_READY_TIMEOUT)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def recorded_builtin() -> dict[str, Any]:
    """The built-ins' recorded answers, for this vLLM version only (model builds: per kind)."""
    data = json.loads(OUT.read_text())
    if data["vllm"] != vllm_version():
        pytest.fail(f"{OUT.name} was recorded with vLLM {data['vllm']}, not {vllm_version()}; {RERECORD}")
    return dict(data["kinds"])


def _builtin_answers(kind: str, model_dir: Path, vllm_colocated: SharedEngine, recorded: dict[str, Any]) -> list[dict]:
    if kind not in RECORDED_KINDS:  # Llama: the session's shared built-in engine is the reference
        return complete_batch(vllm_colocated.process, model_dir)
    if recorded[kind]["model"] != model_dir.name:
        pytest.fail(f"{OUT.name} was recorded for {recorded[kind]['model']}, not {model_dir.name}; {RERECORD}")
    return list(recorded[kind]["answers"])


def _assert_same(ours: list[dict], builtin: list[dict]) -> None:
    for prompt, got, want in zip(PROMPTS, ours, builtin, strict=True):
        assert got["prompt_ids"] == want["prompt_ids"], prompt
        assert len(want["ids"]) == MAX_TOKENS
        assert got["ids"] == want["ids"], f"greedy tokens differ for {prompt!r}"
        for kind in ("prompt_logprobs", "logprobs"):
            worst = max(abs(a - b) for a, b in zip(got[kind], want[kind], strict=True))
            assert worst <= TOLERANCE, f"{kind} differ by {worst:.2e} for {prompt!r}"


@pytest.mark.parametrize("kind", list(ATOM_ARCHS))
def test_atom_matches_builtin(
    kind: str, atom_engines: dict[str, ManagedProcess], recorded_builtin: dict[str, Any], vllm_colocated: SharedEngine
) -> None:
    model_dir = build_tiny_model(kind)
    proc = atom_engines[kind]
    builtin = _builtin_answers(kind, model_dir, vllm_colocated, recorded_builtin)
    ours = complete_batch(proc, model_dir)
    assert f"Resolved architecture: {ATOM_ARCHS[kind]}" in proc.log_text(), "vLLM did not pick our class"
    _assert_same(ours, builtin)
