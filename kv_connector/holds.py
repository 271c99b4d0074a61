"""Time-bounded bookkeeping of transfers on both sides (pure: callers pass `now`).

Producer: `HoldTable` of `HeldTransfer`s — blocks kept alive after prefill until a consumer claims them
or the hold expires (so a decode that never comes cannot leak blocks). A claimed hold
never expires under a running push; it is released when the push ends.

Consumer: `ReceiveTracker` — transfers decode waits for, each with a deadline, so a
decode engine never waits forever for KV.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class HeldTransfer:
    """One entry of the producer's `HoldTable` (the `messages.Hold` that asks for it is the wire message)."""

    transfer_id: str
    owner: Hashable  # the engine's request key, reported back when the hold ends
    block_ids: list[int]
    expires_at: float
    claimed: bool = False


@dataclass
class HoldTable:
    _holds: dict[str, HeldTransfer] = field(default_factory=dict)

    def add(self, transfer_id: str, owner: Hashable, block_ids: list[int], *, now: float, ttl_s: float) -> None:
        if transfer_id in self._holds:
            raise ValueError(f"transfer {transfer_id} is already held")
        self._holds[transfer_id] = HeldTransfer(transfer_id, owner, list(block_ids), now + ttl_s)

    def claim(self, transfer_id: str) -> HeldTransfer | None:
        """Reserve a hold for one push; None if unknown, expired or already claimed."""
        hold = self._holds.get(transfer_id)
        if hold is None or hold.claimed:
            return None
        hold.claimed = True
        return hold

    def release(self, transfer_id: str) -> Hashable | None:
        """End a hold (push done or failed); returns its owner to free its blocks."""
        hold = self._holds.pop(transfer_id, None)
        return hold.owner if hold else None

    def expire(self, now: float) -> list[tuple[str, Hashable]]:
        """Drop unclaimed holds past their deadline; returns their (transfer id, owner) pairs."""
        gone = [t for t, h in self._holds.items() if not h.claimed and h.expires_at <= now]
        return [(t, self._holds.pop(t).owner) for t in gone]

    def __contains__(self, transfer_id: str) -> bool:
        return transfer_id in self._holds

    def __len__(self) -> int:
        return len(self._holds)


@dataclass
class _Waiting:
    owner: Hashable
    deadline: float


@dataclass
class ReceiveTracker:
    _waiting: dict[str, _Waiting] = field(default_factory=dict)
    _done: set = field(default_factory=set)
    _failed: dict = field(default_factory=dict)  # owner -> reason

    def start(self, transfer_id: str, owner: Hashable, *, deadline: float) -> None:
        if transfer_id in self._waiting:
            raise ValueError(f"transfer {transfer_id} is already awaited")
        self._waiting[transfer_id] = _Waiting(owner, deadline)

    def complete(self, transfer_id: str, ok: bool, reason: str = "") -> bool:
        """Record the producer's answer; False if the transfer was not awaited (late or unknown)."""
        waiting = self._waiting.pop(transfer_id, None)
        if waiting is None:
            return False
        if ok:
            self._done.add(waiting.owner)
        else:
            self._failed[waiting.owner] = reason
        return True

    def fail(self, owner: Hashable, reason: str) -> None:
        """Fail a receive that never started (bad params) so the engine releases it."""
        self._failed[owner] = reason

    def expire(self, now: float) -> list[tuple[str, Hashable]]:
        """Fail every receive past its deadline; returns (transfer_id, owner) pairs."""
        gone = [t for t, w in self._waiting.items() if w.deadline <= now]
        out = []
        for t in gone:
            owner = self._waiting.pop(t).owner
            self._failed[owner] = "timed out waiting for the producer to push KV"
            out.append((t, owner))
        return out

    def take(self) -> tuple[set, dict]:
        """Finished-ok owners and failed owners (with reasons) since the last call."""
        done, failed = self._done, self._failed
        self._done, self._failed = set(), {}
        return done, failed

    def __len__(self) -> int:
        return len(self._waiting)
