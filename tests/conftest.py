"""Session-wide fixtures and the no-leftover-process check.

Engines are expensive on a 2-core CI machine, so the ones several test files use are
session-scoped and started once. A test file that needs its own engine configuration
(a P/D pair, a connector) starts it in a module- or session-scoped fixture of its own
via `tests.support.vllm_engine.start_vllm` and stops it in teardown.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import build_tiny_model
from tests.support.processes import (
    live_processes,
    processes_in_session,
    started_sessions,
    stop_all,
)
from tests.support.shared_engine import SharedEngine
from tests.support.vllm_engine import start_vllm


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """Directory of the tiny random-weight Llama (built offline once, then cached)."""
    return build_tiny_model("llama")


_shared_engines: dict[str, SharedEngine] = {}


@pytest.fixture(scope="session")
def vllm_colocated(tiny_llama: Path) -> Iterator[SharedEngine]:
    """One plain vLLM CPU engine (no connector): the reference several tests compare with.

    Behaves like a `ManagedProcess` (`.url`, `.log_text()` ...). Its model name is the
    model directory (`str(tiny_llama)`). Do not reconfigure or overload it: other tests
    share it. It runs only while modules that use it run (see `pytest_runtest_teardown`).
    """
    engine = SharedEngine(lambda: start_vllm(tiny_llama, name="vllm-colocated"))
    _shared_engines["vllm_colocated"] = engine
    try:
        yield engine
    finally:
        engine.release()
        del _shared_engines["vllm_colocated"]


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop shared engines when the next test is in another module and does not ask for
    them, so an idle reference engine never runs beside the engines later tests start.
    A later user (even one using `request.getfixturevalue`) restarts it on first use."""
    if nextitem is not None and getattr(nextitem, "module", None) is getattr(item, "module", None):
        return
    for name, engine in _shared_engines.items():
        if nextitem is None or name not in getattr(nextitem, "fixturenames", ()):
            engine.release()


# --- leftover-process check -------------------------------------------------------------

# Python's multiprocessing helpers (started by torch/vLLM imports inside pytest itself)
# live until the interpreter exits by design; they are not leaks of a test.
_BENIGN_CMDLINES = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of `pid`, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _leftover_pids() -> set[int]:
    """Live descendants of this process plus anything alive in a session we started."""
    me = os.getpid()
    stats = {int(e): s for e in os.listdir("/proc") if e.isdigit() and (s := _proc_stat(int(e)))}
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(children.get(me, []))
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, []))
    for sid in started_sessions():
        found.update(processes_in_session(sid))
    return {
        pid
        for pid in found
        if pid in stats and stats[pid][0] != "Z" and not any(b in _cmdline(pid) for b in _BENIGN_CMDLINES)
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run loudly if a test left a process behind (then kill it)."""
    leaked_managed = [p for p in live_processes() if p.poll() is None or processes_in_session(p.pgid)]
    stop_all()
    leftovers = _leftover_pids()
    if not leaked_managed and not leftovers:
        return
    lines = ["LEFTOVER PROCESSES after the test session (a test or fixture did not stop them):"]
    lines += [f"  managed process never stopped: {p!r} (log {p.log_path})" for p in leaked_managed]
    lines += [f"  pid {pid}: {_cmdline(pid)[:200]}" for pid in sorted(leftovers)]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join(lines))
    else:
        reporter.write_sep("=", "leftover processes", red=True, bold=True)
        for line in lines:
            reporter.write_line(line, red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
