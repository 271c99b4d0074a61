"""An engine several tests share, started on first use and stopped between its users.

A session-scoped engine fixture would otherwise stay up from its first user to the end of
the session, i.e. beside every P/D pair and SGLang server started later: three or more
engines on a 2-core machine. `SharedEngine` behaves like the `ManagedProcess` it wraps
(`.url`, `.port`, `.log_text()` ...), starts it lazily, and `release()` stops it until the
next user touches it again (tests/conftest.py releases it at module boundaries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.processes import ManagedProcess


class SharedEngine:
    """A lazily (re)started `ManagedProcess`; attribute access is forwarded to it."""

    def __init__(self, start: Callable[[], ManagedProcess]) -> None:
        self._start = start
        self._proc: ManagedProcess | None = None
        self.starts = 0  # how many times it was started (visible in reports, not for logic)

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def process(self) -> ManagedProcess:
        """The running process, started now if it is not up."""
        if self._proc is None:
            self._proc = self._start()
            self.starts += 1
        return self._proc

    def release(self) -> None:
        """Stop the engine; the next attribute access starts a fresh one."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.stop()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on SharedEngine itself. Private and dunder
        # lookups (copy, pickle, introspection by pytest) must not start an engine.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.process, name)

    def __repr__(self) -> str:
        return f"SharedEngine({self._proc!r}, starts={self.starts})"
