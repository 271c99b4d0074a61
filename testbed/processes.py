"""Server processes that tests, benchmarks and the demo start and must never leave behind.

Each `ManagedProcess` runs in its own session (so its own process group): engines fork
helpers (vLLM's engine core, workers), and killing the group is the only way to stop
them all. Every live process is tracked so that interpreter exit (atexit) and SIGINT /
SIGTERM stop them too: a Ctrl-C during `make demo` or pytest must not orphan a vLLM.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

logger = logging.getLogger("atom_mesh.testbed")

_live: set[ManagedProcess] = set()
# Re-entrant: the signal handler may run stop_all() while this thread holds the lock.
_live_lock = threading.RLock()
# Every session (= process group) ever started, so a leak check can find orphans whose
# parent died and who were re-parented away from this process.
_started_sessions: list[int] = []
_handlers_installed = False


class EngineStartError(RuntimeError):
    """A managed server exited or did not become ready; the message carries its log tail."""


def _log_dir() -> Path:
    d = Path(os.environ.get("ATOM_MESH_LOG_DIR", Path(tempfile.gettempdir()) / "atom-mesh-logs"))
    d.mkdir(parents=True, exist_ok=True)
    return d


class ManagedProcess:
    """A server command started in its own process group, output captured in a log file.

    `port` is the port the command listens on (the caller chose it and put it into the
    command); `url` is `http://host:port`.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str,
        port: int,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.name = name
        self.port = port
        self.host = host
        self.url = f"http://{host}:{port}"
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{name}-{port}-", suffix=".log", dir=_log_dir())
            os.close(fd)
        self.log_path = Path(log_path)
        full_env = dict(os.environ)
        full_env.update(env or {})
        _install_cleanup_handlers()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pgid = self._proc.pid  # session leader: pgid == pid
        with _live_lock:
            _live.add(self)
            _started_sessions.append(self.pgid)
        logger.info("started %s (pid %d) on %s, log %s", name, self._proc.pid, self.url, self.log_path)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit status, or None while the leader process runs."""
        return self._proc.poll()

    def log_tail(self, n: int = 60) -> str:
        """The last `n` lines of the process's output (stdout and stderr together)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        """The whole log so far (for tests that look for a line the engine printed)."""
        return self.log_path.read_text(errors="replace")

    def wait_http_ready(self, path: str = "/health", timeout: float = 600.0, interval: float = 0.5) -> None:
        """Poll `GET url+path` until it answers 200.

        Raises `EngineStartError` (with the log tail) if the process exits first or
        `timeout` seconds pass; engines on a busy 2-core machine can take minutes. On any
        failure, including an interrupt or pytest-timeout firing meanwhile, the process is
        stopped: the caller never got a ready server to clean up.
        """
        target = self.url + path

        def answers_200() -> bool:
            try:
                with urllib.request.urlopen(target, timeout=5) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                return False

        self.wait_ready(answers_200, target, timeout=timeout, interval=interval)

    def wait_ready(self, probe: Callable[[], bool], target: str, *, timeout: float, interval: float = 0.5) -> None:
        """Call `probe` every `interval` seconds until it returns True (`target` names what
        it checks, for the error). Fails, and stops the process, as `wait_http_ready` does."""
        try:
            self._poll_ready(probe, target, time.monotonic() + timeout, interval)
        except BaseException:
            self.stop()
            raise

    def _poll_ready(self, probe: Callable[[], bool], target: str, deadline: float, interval: float) -> None:
        started = time.monotonic()
        while True:
            code = self.poll()
            if code is not None:
                raise EngineStartError(
                    f"{self.name} exited with status {code} before {target} was ready.\n"
                    f"command: {' '.join(self.cmd)}\nlog {self.log_path} (tail):\n{self.log_tail()}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"{self.name} not ready at {target} after {time.monotonic() - started:.0f}s (stopped it).\n"
                    f"command: {' '.join(self.cmd)}\nlog {self.log_path} (tail):\n{self.log_tail()}"
                )
            time.sleep(interval)

    def stop(self, grace: float = 15.0) -> None:
        """Stop the process and its whole group; idempotent.

        SIGTERM goes to the leader only: vLLM's API server then shuts its engine core and
        workers down in order (under a second), whereas a group-wide SIGTERM makes them
        race and stall for many seconds. Whatever is left after the leader exits (or
        after `grace` seconds) is SIGKILLed as a group. Returns once the leader is reaped
        and no group member is alive, so the port and memory are free again.
        """
        with _live_lock:
            _live.discard(self)
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing its group", self.name, self.pid, grace)
        if _wait_group_gone(self.pgid, 3.0):
            return
        _signal_group(self.pgid, signal.SIGKILL)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if not _wait_group_gone(self.pgid, 10.0):
            logger.warning("%s: processes %s survived SIGKILL", self.name, processes_in_session(self.pgid))

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name}, pid={self.pid}, url={self.url})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(sid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for session `sid` to have no live process."""
    deadline = time.monotonic() + timeout
    while processes_in_session(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def processes_in_session(sid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose session id is `sid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is not None and stat[3] == sid and stat[0] != "Z":
            found.append(int(entry))
    return found


def read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of `pid`, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def cmdline(pid: int) -> str:
    """The command line of `pid` ('?' if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# Python's multiprocessing helpers (started by torch/vLLM imports inside pytest itself)
# live until the interpreter exits by design; they are not leaks of a test.
_BENIGN_CMDLINES = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def leftover_processes(root: int) -> set[int]:
    """Live processes that `root` is responsible for: its descendants, plus anything alive
    in a session a `ManagedProcess` started (orphans re-parented away from `root`)."""
    stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := read_stat(int(e)))}
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, []))
    for sid in started_sessions():
        found.update(processes_in_session(sid))
    return {
        pid
        for pid in found
        if pid in stats and stats[pid][0] != "Z" and not any(b in cmdline(pid) for b in _BENIGN_CMDLINES)
    }


def live_processes() -> list[ManagedProcess]:
    """Managed processes started and not yet stopped."""
    with _live_lock:
        return list(_live)


def started_sessions() -> list[int]:
    """Session ids of all managed processes started by this interpreter."""
    with _live_lock:
        return list(_started_sessions)


def stop_all() -> None:
    """Stop every managed process still alive (atexit, signals, session teardown)."""
    for proc in live_processes():
        proc.stop(grace=5.0)


def _install_cleanup_handlers() -> None:
    """Once per interpreter: stop children at exit and on SIGINT/SIGTERM.

    Children live in their own sessions, so a terminal's Ctrl-C never reaches them: we
    must forward it. The previous handler still runs afterwards (KeyboardInterrupt for
    SIGINT), so callers' `finally` blocks and pytest's teardown behave as usual.
    """
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if previous == signal.SIG_IGN:  # e.g. a background job: whoever ignored it meant it
            continue

        def handler(signum: int, frame: FrameType | None, previous=previous) -> None:
            stop_all()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)
