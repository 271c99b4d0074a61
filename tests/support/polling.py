"""Waiting on observable state with a bounded deadline (never a sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(predicate: Callable[[], Awaitable[bool]], deadline_secs: float) -> bool:
    """True as soon as `predicate()` is, polled every 0.1 s; False once `deadline_secs` pass."""
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False
