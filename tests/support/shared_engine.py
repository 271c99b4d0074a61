"""An engine (or a group of engines) several tests share, started on first use and
stopped between its users.

A session-scoped engine fixture would otherwise stay up from its first user to the end of
the session, i.e. beside every P/D pair and SGLang server started later: three or more
engines on a 2-core machine. `SharedEngine` behaves like the `ManagedProcess` it wraps
(`.url`, `.port`, `.log_text()` ...), starts it lazily, and `release()` stops it until the
next user touches it again (tests/conftest.py releases it at module boundaries).
`users_together` orders a session's tests so that the modules using one shared engine run
one after the other, and the engine starts once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar


class Stoppable(Protocol):
    """What a shared engine must offer: `release()` stops it, whatever it groups."""

    def stop(self) -> None: ...


E = TypeVar("E", bound=Stoppable)


class SharedEngine(Generic[E]):
    """A lazily (re)started `ManagedProcess`, or a group of engines that stops as one (a
    P/D pair: tests/support/atomkv_pd.py); attribute access is forwarded to it."""

    def __init__(self, start: Callable[[], E]) -> None:
        self._start = start
        self._proc: E | None = None
        self.starts = 0  # how many times it was started (visible in reports, not for logic)

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def process(self) -> E:
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


T = TypeVar("T")


def users_together(tests: Sequence[T], fixture: str) -> list[T]:
    """`tests` (collected items: `.module`, `.fixturenames`) with every module that asks
    for `fixture`, directly or through another fixture, moved up behind the first such
    module, in their collected order; every other test keeps its place and order. A module
    moves whole, so its module-scoped fixtures still set up once."""
    users = {_module(t) for t in tests if fixture in getattr(t, "fixturenames", ())} - {None}
    first = next((i for i, t in enumerate(tests) if _module(t) in users), len(tests))
    tail = tests[first:]
    return [*tests[:first], *(t for t in tail if _module(t) in users), *(t for t in tail if _module(t) not in users)]


def _module(test: object) -> object:
    return getattr(test, "module", None)
