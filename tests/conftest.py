"""Session-wide fixtures and the no-leftover-process check.

Engines are expensive on a 2-core CI machine, so the ones several test files use are
shared by the session, and run only while modules that use them run. A test file that needs its own engine configuration
(a P/D pair, a connector) starts it in a module- or session-scoped fixture of its own
via `testbed.vllm_engine.start_vllm` and stops it in teardown.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.models import build_tiny_model
from testbed.processes import cmdline, leftover_processes, live_processes, processes_in_session, stop_all
from testbed.vllm_engine import start_vllm
from tests.support.shared_engine import SharedEngine, users_together


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """Directory of the tiny random-weight Llama (built offline once, then cached)."""
    return build_tiny_model("llama")


_shared_engines: dict[str, SharedEngine] = {}
# The fixtures below that hand out a `SharedEngine` (tests using one are run together).
_SHARED_ENGINE_FIXTURES = ("vllm_colocated",)


@pytest.fixture(scope="session")
def vllm_colocated(tiny_llama: Path) -> Iterator[SharedEngine]:
    """One plain vLLM CPU engine (no connector): the reference several tests compare with.

    Behaves like a `ManagedProcess` (`.url`, `.log_text()` ...). Its model name is the
    model directory (`str(tiny_llama)`). Do not reconfigure or overload it: other tests
    share it. It runs only while modules that use it run (see `pytest_runtest_teardown`),
    and those modules run one after the other (`pytest_collection_modifyitems`): ask for it
    as a test's or fixture's argument (it starts on first attribute use, not when asked
    for), or with `pytest.mark.usefixtures`, so that the module counts as a user.
    """
    engine = SharedEngine(lambda: start_vllm(tiny_llama, name="vllm-colocated"))
    _shared_engines["vllm_colocated"] = engine
    try:
        yield engine
    finally:
        engine.release()
        del _shared_engines["vllm_colocated"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that use a shared engine one after the other, so the engine starts
    once for all of them instead of once per user: it is released at every module
    boundary where the next test does not use it, and a vLLM CPU start-up costs 30-50 s on
    2 cores. Every other test keeps its order."""
    for name in _SHARED_ENGINE_FIXTURES:
        items[:] = users_together(items, name)


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run loudly if a test left a process behind (then kill it)."""
    leaked_managed = [p for p in live_processes() if p.poll() is None or processes_in_session(p.pgid)]
    stop_all()
    leftovers = leftover_processes(os.getpid())
    if not leaked_managed and not leftovers:
        return
    lines = ["LEFTOVER PROCESSES after the test session (a test or fixture did not stop them):"]
    lines += [f"  managed process never stopped: {p!r} (log {p.log_path})" for p in leaked_managed]
    lines += [f"  pid {pid}: {cmdline(pid)[:200]}" for pid in sorted(leftovers)]
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
