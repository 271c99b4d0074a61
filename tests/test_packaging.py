"""Packaging acceptance: the router installs and runs without the engines, and the
engine plugins are advertised through the entry-point groups the engines scan."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("vllm", "sglang", "torch")
# The server stack: `--help` needs none of it (it is imported only to serve).
SERVER_STACK = ("starlette", "uvicorn", "uvloop", "aiohttp", "pydantic", "prometheus_client", "zmq")


def _entry_point(group: str, name: str) -> importlib.metadata.EntryPoint:
    matches = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
    assert matches, f"no entry point {name!r} in group {group!r}; reinstall with `pip install -e .`"
    return matches[0]


@pytest.mark.parametrize(
    ("group", "target"),
    [("vllm.general_plugins", "vllm_atom:register"), ("sglang.srt.plugins", "sglang_atom:register")],
)
def test_engine_plugin_entry_points(group: str, target: str) -> None:
    ep = _entry_point(group, "atom_mesh")
    assert ep.value == target
    assert callable(ep.load())


def test_console_script_entry_point() -> None:
    assert _entry_point("console_scripts", "atom-router").value == "router.cli:main"


def test_router_cli_help_imports_no_engine_and_no_server() -> None:
    """In the full dev venv (vllm and torch installed), `--help` must not import them, nor
    the server stack: backend and policy names come from registries that stay light."""
    probe = (
        "import json, sys\n"
        "import router.cli\n"
        "try:\n"
        "    router.cli.main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + SERVER_STACK!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "--pd-disaggregation" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _repo_packages() -> list[str]:
    """Top-level packages in the repo (root and plugins/), except the non-shipped ones."""
    not_shipped = {"tests", "testbed", "benchmarks", "scripts"}
    return sorted(
        d.name
        for base in (REPO, REPO / "plugins")
        for d in base.iterdir()
        if (d / "__init__.py").is_file() and d.name not in not_shipped
    )


def _source_copy(dest: Path) -> Path:
    """The repo without venvs, caches and build output, so the install builds from source."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "build", "*.egg-info", "__pycache__", ".pytest_cache", "results"
    )
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_clean_venv_install_runs_router_help(tmp_path: Path) -> None:
    """`pip install .` (no extras) into a fresh venv gives a working `atom-router --help`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    src = _source_copy(tmp_path / "src")
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True, timeout=900
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr

    py = str(venv / "bin" / "python")
    absent = subprocess.run(
        [py, "-c", f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"],
        capture_output=True, text=True, timeout=60,
    )
    assert absent.stdout.strip() == "[]", "the clean venv must not contain engines: " + absent.stdout

    help_run = subprocess.run(
        [str(venv / "bin" / "atom-router"), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "--pd-disaggregation" in help_run.stdout and "--backend" in help_run.stdout

    # Every importable package of the repo ships (a package missing from pyproject's
    # `packages.find` works in the editable dev install but breaks real installs).
    shipped = subprocess.run(
        [py, "-c", f"import importlib.util as u; print([p for p in {_repo_packages()!r} if not u.find_spec(p)])"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert shipped.stdout.strip() == "[]", "packages missing from the installed dist: " + shipped.stdout

    list_plugins = "import importlib.metadata as m; print(sorted(e.value for e in m.entry_points(group='vllm.general_plugins')))"
    eps = subprocess.run(
        [py, "-c", list_plugins],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert eps.stdout.strip() == "['vllm_atom:register']"
