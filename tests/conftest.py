"""Session-wide fixtures and the no-leftover-process check.

Engines are expensive on a 2-core CI machine, so the ones several test files use are
shared by the session, and run only while modules that use them run: the plain
`vllm_colocated` reference and the `atomkv_pd` P/D engines. A test file that needs its own
engine configuration (another pair, connector or model) starts it in a module- or
session-scoped fixture of its own via `testbed.vllm_engine.start_vllm` and stops it in
teardown.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from testbed.models import build_tiny_model
from testbed.processes import ManagedProcess, cmdline, leftover_processes, live_processes, processes_in_session, stop_all
from testbed.vllm_engine import start_vllm
from tests.support.atomkv_pd import AtomKVEngines, start_atomkv_engines
from tests.support.shared_engine import SharedEngine, users_together


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """Directory of the tiny random-weight Llama (built offline once, then cached)."""
    return build_tiny_model("llama")


_shared_engines: dict[str, SharedEngine[Any]] = {}
# The fixtures below that hand out a `SharedEngine` (tests using one are run together).
_SHARED_ENGINE_FIXTURES = ("vllm_colocated", "atomkv_pd")


@pytest.fixture(scope="session")
def vllm_colocated(tiny_llama: Path) -> Iterator[SharedEngine[ManagedProcess]]:
    """One plain vLLM CPU engine (no connector): the reference several tests compare with.

    Behaves like a `ManagedProcess` (`.url`, `.log_text()` ...). Its model name is the
    model directory (`str(tiny_llama)`). Do not reconfigure or overload it: other tests
    share it. It runs only while modules that use it run (see `pytest_runtest_teardown`),
    and those modules run one after the other (`pytest_collection_modifyitems`): ask for it
    as a test's or fixture's argument (it starts on first attribute use, not when asked
    for), or with `pytest.mark.usefixtures`, so that the module counts as a user.
    """
    yield from _shared(SharedEngine(lambda: start_vllm(tiny_llama, name="vllm-colocated")), "vllm_colocated")


@pytest.fixture(scope="session")
def atomkv_pd(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedEngine[AtomKVEngines]]:
    """One AtomKVConnector P/D pair over Mooncake TCP, plus a second producer for the test
    that kills one (tests/support/atomkv_pd.py): the vLLM P/D tests on the tiny Llama share
    it (`tests/kv_connector/test_vllm_pd.py`, `tests/router/test_engine_conditional_pd.py`),
    started once for both (about three vLLM start-ups). Shared like `vllm_colocated`: its
    users run one after the other, it stops when the next module does not ask for it, and
    a test must leave it as it found it, except for the doomed producer (the kill test's).
    Counters on its engines are not zero when a test starts: compare before and after."""
    start = partial(start_atomkv_engines, tiny_llama, tmp_path_factory.mktemp)
    yield from _shared(SharedEngine(start), "atomkv_pd")


def _shared(engine: SharedEngine[Any], name: str) -> Iterator[SharedEngine[Any]]:
    """Hand out `engine` as fixture `name`, known to `pytest_runtest_teardown`, stopped at the end."""
    _shared_engines[name] = engine
    try:
        yield engine
    finally:
        engine.release()
        del _shared_engines[name]


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
