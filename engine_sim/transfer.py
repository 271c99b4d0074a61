"""Where the two legs of a P/D request meet inside one simulator process.

A prefill worker `publish`es a record when its prefill is done (keyed by the protocol's
identifiers: vLLM engine id + request id, Mooncake transfer id, SGLang bootstrap port +
room); the decode worker `wait`s for that key, with a timeout, and checks that the record
is for the same prompt: a router that pairs the wrong legs gets an error, not silent
garbage. Records nobody claims expire, so warm-up and abandoned legs do not leak.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class KVRecord:
    prompt_digest: str
    prompt_tokens: int
    engine_id: str


class KVTimeoutError(Exception):
    """No prefill leg published the awaited KV in time."""


class TransferHub:
    def __init__(self, ttl_s: float = 600.0, max_records: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max_records = max_records
        self._records: OrderedDict[Hashable, tuple[float, KVRecord]] = OrderedDict()
        self._waiters: dict[Hashable, list[asyncio.Future[KVRecord]]] = {}

    def publish(self, key: Hashable, record: KVRecord) -> None:
        waiters = self._waiters.pop(key, [])
        live = [f for f in waiters if not f.done()]
        if live:
            for fut in live:
                fut.set_result(record)
            return
        self._records[key] = (time.monotonic(), record)
        self._records.move_to_end(key)
        self._expire()

    async def wait(self, key: Hashable, timeout_s: float) -> KVRecord:
        """The record for `key`, waiting up to `timeout_s` for it; claims (removes) it."""
        stored = self._records.pop(key, None)
        if stored is not None:
            return stored[1]
        fut: asyncio.Future[KVRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise KVTimeoutError(f"no prefill published KV for {key!r} within {timeout_s:g}s") from None
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]

    def __len__(self) -> int:
        return len(self._records)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl_s
        while self._records:
            key, (stamp, _) = next(iter(self._records.items()))
            if stamp >= cutoff and len(self._records) <= self._max_records:
                break
            del self._records[key]
