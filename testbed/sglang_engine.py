"""Start a real SGLang CPU server (`python -m sglang.launch_server`) on a free port.

SGLang lives in its own venv (`.venv-sglang`, built by scripts/setup_sglang.sh) so its
pins never touch the vLLM venv. How it runs on a CPU-only machine (docs/engines-on-cpu.md):
CPU engine, torch-native attention, no CUDA graphs, and the test-only shims in
`tests/support/sglang_shims` on PYTHONPATH (torchvision stub, sgl_kernel tolerance).
The atom-mesh plugin is loaded by SGLang itself through the `sglang.srt.plugins` entry
point of the editable install; nothing here injects it.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed import REPO_ROOT
from testbed.ports import free_port
from testbed.processes import ManagedProcess

SGLANG_VENV = Path(os.environ.get("ATOM_MESH_SGLANG_VENV", REPO_ROOT / ".venv-sglang"))
SGLANG_PYTHON = SGLANG_VENV / "bin" / "python"
# Test-only shims, kept with the tests; engines started from here get them by path.
SHIMS_DIR = REPO_ROOT / "tests" / "support" / "sglang_shims"
# One scheduler loads in ~30-60 s here; two at once on a busy 2-core machine take longer.
DEFAULT_READY_TIMEOUT = 900.0


def sglang_available() -> str | None:
    """None if the SGLang venv is usable, else why not (for a pytest skip reason)."""
    if not SGLANG_PYTHON.exists():
        return f"{SGLANG_PYTHON} missing: run scripts/setup_sglang.sh (make test does)"
    return None


def sglang_version() -> str:
    """The SGLang version in the SGLang venv: answers recorded from SGLang for the tests'
    references are only comparable with the SGLang (and tiny-model build) they came from."""
    site = [str(p) for p in SGLANG_VENV.glob("lib/python*/site-packages")]
    for dist in importlib.metadata.distributions(name="sglang", path=site):
        return dist.version
    raise RuntimeError(f"no sglang distribution in {SGLANG_VENV}")


def sglang_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for any process of the SGLang venv (servers, sglang-router, probes)."""
    pythonpath = [str(SHIMS_DIR), str(REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env = {
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "SGLANG_USE_CPU_ENGINE": "1",
        "SGLANG_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        # The vLLM venv may be active in the parent; keep SGLang's interpreter on its own venv.
        "VIRTUAL_ENV": str(SGLANG_VENV),
    }
    env.update(extra or {})
    return env


def sglang_command(
    model_dir: str | Path,
    port: int,
    *,
    mode: str | None = None,
    transfer_backend: str = "atom",
    bootstrap_port: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line `start_sglang` runs (exposed for debugging and the README)."""
    cmd = [
        str(SGLANG_PYTHON),
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--nccl-port",
        str(free_port()),
        "--device",
        "cpu",
        "--attention-backend",
        "torch_native",
        "--disable-cuda-graph",
        "--max-total-tokens",
        "4096",
        "--random-seed",
        "0",
    ]
    if mode is not None:
        if mode not in ("prefill", "decode"):
            raise ValueError(f"mode must be None, 'prefill' or 'decode', not {mode!r}")
        cmd += ["--disaggregation-mode", mode, "--disaggregation-transfer-backend", transfer_backend]
        if bootstrap_port is not None:
            cmd += ["--disaggregation-bootstrap-port", str(bootstrap_port)]
    return cmd + list(extra_args)


def start_sglang(
    model_dir: str | Path,
    *,
    mode: str | None = None,
    transfer_backend: str = "atom",
    bootstrap_port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    timeout: float = DEFAULT_READY_TIMEOUT,
    name: str | None = None,
) -> ManagedProcess:
    """Start an SGLang server: co-located (`mode=None`), or a P/D `prefill`/`decode` server.

    A prefill server gets a free bootstrap port unless one is given (read it back from
    `proc.bootstrap_port`). With `wait=False`, call `proc.wait_http_ready(timeout=...)`
    yourself: starting a P/D pair together overlaps their start-ups.
    """
    reason = sglang_available()
    if reason:
        raise RuntimeError(reason)
    port = port or free_port()
    if mode == "prefill" and bootstrap_port is None:
        bootstrap_port = free_port()
    proc = ManagedProcess(
        sglang_command(
            model_dir,
            port,
            mode=mode,
            transfer_backend=transfer_backend,
            bootstrap_port=bootstrap_port,
            extra_args=extra_args,
        ),
        name=name or f"sglang-{mode or 'colocated'}",
        port=port,
        env=sglang_env(env),
    )
    proc.bootstrap_port = bootstrap_port  # type: ignore[attr-defined]
    if wait:
        proc.wait_http_ready("/health", timeout=timeout)
    return proc
