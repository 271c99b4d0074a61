"""The launchers (`testbed`) and shared test support work: process groups die, start
failures explain themselves, leaks fail the session, the tiny model is reproducible and
valid for vLLM CPU, and a simulated fleet starts, describes itself and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from testbed.models import build_tiny_model
from testbed.ports import free_port
from testbed.processes import EngineStartError, ManagedProcess, processes_in_session
from testbed.sim_fleet import start_fleet
from tests.support.shared_engine import SharedEngine, users_together

REPO = Path(__file__).resolve().parents[1]


def _http_server(port: int, with_grandchild: bool = False) -> list[str]:
    """A real HTTP server; optionally with a background child in its process group."""
    serve = f"exec {sys.executable} -m http.server --bind 127.0.0.1 {port}"
    return ["bash", "-c", f"sleep 600 & {serve}" if with_grandchild else serve]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_stop_kills_the_whole_process_group() -> None:
    port = free_port()
    proc = ManagedProcess(_http_server(port, with_grandchild=True), name="http", port=port)
    try:
        proc.wait_http_ready("/", timeout=60)
        members = processes_in_session(proc.pgid)
        assert len(members) == 2, members  # the server and its background sleep
    finally:
        proc.stop()
    assert processes_in_session(proc.pgid) == []
    assert not any(_alive(pid) for pid in members)
    proc.stop()  # idempotent


def test_context_manager_stops() -> None:
    port = free_port()
    with ManagedProcess(_http_server(port), name="http", port=port) as proc:
        proc.wait_http_ready("/", timeout=60)
        assert proc.url == f"http://127.0.0.1:{port}"
    assert proc.poll() is not None


def test_start_failure_carries_the_log_tail() -> None:
    cmd = [sys.executable, "-c", "print('boom-marker', flush=True); raise SystemExit(3)"]
    proc = ManagedProcess(cmd, name="failing", port=free_port())
    with pytest.raises(EngineStartError) as err:
        proc.wait_http_ready(timeout=60)
    assert "boom-marker" in str(err.value)
    assert "status 3" in str(err.value)
    assert "boom-marker" in proc.log_tail(5)


def test_not_ready_in_time_raises_and_stops() -> None:
    proc = ManagedProcess(["sleep", "600"], name="silent", port=free_port())
    with pytest.raises(EngineStartError, match="not ready"):
        proc.wait_http_ready(timeout=1, interval=0.2)
    assert proc.poll() is not None
    assert processes_in_session(proc.pgid) == []


def _inner_session(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run a one-test pytest session that loads our conftest as a plugin."""
    test = tmp_path / "test_inner.py"
    test.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider", str(test)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_session_fails_when_a_test_leaks_a_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = _inner_session(
        tmp_path,
        f"""
        import subprocess
        def test_leaks():
            p = subprocess.Popen(["sleep", "600"])
            open({str(pid_file)!r}, "w").write(str(p.pid))
        """,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "LEFTOVER PROCESSES" in result.stdout
    assert not _alive(int(pid_file.read_text()))  # the check also cleans up


def test_session_passes_when_processes_are_stopped(tmp_path: Path) -> None:
    result = _inner_session(
        tmp_path,
        """
        from testbed.ports import free_port
        from testbed.processes import ManagedProcess
        def test_clean():
            port = free_port()
            with ManagedProcess(["sleep", "600"], name="s", port=port):
                pass
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LEFTOVER" not in result.stdout


def test_tiny_model_fits_vllm_cpu(tiny_llama: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    vocab = json.loads((tiny_llama / "tokenizer.json").read_text())
    n_tokens = len(vocab["model"]["vocab"])
    assert config["vocab_size"] == n_tokens  # ids past the tokenizer would decode to ''
    assert config["head_dim"] == 64  # vLLM CPU attention rejects 16
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert (tiny_llama / "chat_template.jinja").exists() or "chat_template" in (
        tiny_llama / "tokenizer_config.json"
    ).read_text()


@pytest.mark.slow
def test_tiny_model_build_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Path) -> None:
    monkeypatch.setenv("ATOM_MESH_CACHE_DIR", str(tmp_path))
    rebuilt = build_tiny_model("llama")
    assert rebuilt != tiny_llama and rebuilt.name == tiny_llama.name  # same content hash
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / name).read_bytes() == (tiny_llama / name).read_bytes(), name


def test_unknown_model_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="known: llama"):
        build_tiny_model("no-such-kind")


def test_ctrl_c_stops_managed_processes(tmp_path: Path) -> None:
    """SIGINT to a program using ManagedProcess kills its servers, then raises KeyboardInterrupt."""
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import signal, sys
            sys.path.insert(0, {str(REPO)!r})
            signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores it
            from testbed.ports import free_port
            from testbed.processes import ManagedProcess
            p = ManagedProcess(["sleep", "600"], name="s", port=free_port())
            try:  # the signal may come as soon as the test reads the pgid
                print(p.pgid, flush=True)
                p.wait_http_ready(timeout=600)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            """
        )
    )
    prog = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(prog.stdout.readline())
        assert processes_in_session(pgid)
        prog.send_signal(signal.SIGINT)
        rest, _ = prog.communicate(timeout=120)
    finally:
        prog.kill()
        prog.wait()
    assert "interrupted" in rest
    assert processes_in_session(pgid) == []


def test_shared_engine_starts_lazily_and_restarts_after_release() -> None:
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        port = free_port()
        proc = ManagedProcess(_http_server(port), name="shared", port=port)
        proc.wait_http_ready("/", timeout=60)
        started.append(proc)
        return proc

    engine = SharedEngine(start)
    try:
        assert not engine.running and started == []
        first_url = engine.url
        assert engine.running and len(started) == 1
        assert engine.url == first_url  # no restart while running
        engine.release()
        assert not engine.running and started[0].poll() is not None
        assert engine.port != started[0].port  # a fresh process on first use after release
        assert engine.starts == 2
    finally:
        engine.release()


def test_modules_using_a_shared_engine_run_together_and_the_rest_keep_their_order() -> None:
    modules = {name: ModuleType(name) for name in "abcde"}
    uses = {"b": ("vllm_colocated",), "d": ("references", "vllm_colocated")}  # d: through a fixture
    tests = [
        SimpleNamespace(module=modules[m], fixturenames=("tiny_llama", *uses.get(m, ())), name=f"{m}{i}")
        for m in "abcde"
        for i in range(2)
    ]
    order = [t.name for t in users_together(tests, "vllm_colocated")]
    assert order == ["a0", "a1", "b0", "b1", "d0", "d1", "c0", "c1", "e0", "e1"]
    assert users_together(tests, "no_such_fixture") == tests


def test_interrupted_wait_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-timeout or Ctrl-C firing during start-up must not orphan the server."""
    import testbed.processes as processes

    class Interrupted(BaseException):
        pass

    def interrupt(*args: object, **kwargs: object) -> None:
        raise Interrupted

    proc = ManagedProcess(["sleep", "600"], name="silent", port=free_port())
    monkeypatch.setattr(processes.urllib.request, "urlopen", interrupt)
    with pytest.raises(Interrupted):
        proc.wait_http_ready(timeout=600)
    monkeypatch.undo()
    assert proc.poll() is not None
    assert processes_in_session(proc.pgid) == []


def test_sim_fleet_starts_describes_itself_and_stops(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, "--prefill", "1", "--decode", "1", "--protocol", "sglang", "--time-scale", "0.1")
    try:
        assert fleet.pd_protocol == "sglang" and fleet.urls() == []
        ((prefill_url, bootstrap),) = fleet.prefill_endpoints()
        assert bootstrap and fleet.index(prefill_url) == 0 and len(fleet.urls("decode")) == 1
        fleet.set_faults(1, error_rate=1.0)
        with urllib.request.urlopen(f"{fleet.admin_url}/sim/workers/1/faults", timeout=10) as r:
            assert json.load(r)["error_rate"] == 1.0
        fleet.clear_faults()
        assert len(fleet.stats()["workers"]) == 2
    finally:
        fleet.stop()
    assert processes_in_session(fleet.proc.pgid) == []


def test_sim_fleet_start_failure_carries_the_log_tail(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError, match="no workers"):
        start_fleet(tmp_path)
