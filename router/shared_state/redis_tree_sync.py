"""cache_aware's routing decisions shared between replicas over one Redis pub/sub channel.

Choosing a worker stays local and synchronous: `select_worker` only queues the decision
(bounded; dropped when full, never blocking a request), a publisher task sends the queue
and a subscriber task inserts the other replicas' decisions into this replica's trees.
Pub/sub is fire-and-forget: a replica that is down or reconnecting misses decisions, and
its tree is that much less complete, which costs cache hits, never correctness (the tree
is an approximation either way). Both tasks reconnect with backoff on Redis errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from router.policies.cache_aware import CacheAwarePolicy
from router.policies.radix_tree import Key
from router.shared_state.tree_sync import BadDecision, RoutingDecision, decode, encode
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role, Worker

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("atom_mesh.shared_state")

# Decisions waiting to be published; past this (Redis slow or gone) new ones are dropped.
QUEUE_LIMIT = 10_000
_RETRY_INITIAL_S, _RETRY_MAX_S = 0.1, 5.0


class RedisTreeSync:
    """Publishes this replica's cache_aware decisions and applies the others'.

    `policies` maps each pool's role to its cache_aware policy; `tokenized` says whether
    this router's keys are token ids (`--tokenizer-path`): decisions keyed the other way
    cannot match this tree and are skipped.
    """

    def __init__(
        self,
        redis: Redis,
        channel: str,
        registry: WorkerRegistry,
        policies: dict[Role, CacheAwarePolicy],
        *,
        max_key_length: int,
        tokenized: bool,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._registry = registry
        self._policies = policies
        self._max_key_length = max_key_length
        self._tokenized = tokenized
        self.replica_id = uuid.uuid4().hex
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.subscribed = asyncio.Event()
        self.counts = {"published": 0, "applied": 0, "dropped": 0, "unknown_worker": 0, "skipped": 0}
        for role, policy in policies.items():
            policy.on_decision = functools.partial(self._queue_decision, role)

    @staticmethod
    def cache_aware_pools(pools: Iterable[tuple[Role, object]]) -> dict[Role, CacheAwarePolicy]:
        """The (role, policy) pairs whose policy is cache_aware (the only ones shared)."""
        return {role: policy for role, policy in pools if isinstance(policy, CacheAwarePolicy)}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(self._subscribe, "subscriber"), name="tree-sync-subscriber"),
            asyncio.create_task(self._run(self._publish, "publisher"), name="tree-sync-publisher"),
        ]

    async def stop(self) -> None:
        # The flag as well as the cancel: the client's read timeouts can swallow a
        # cancellation that lands as they expire (asyncio timeouts before 3.12), and the
        # loops must end all the same.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _queue_decision(self, role: Role, key: Key, worker: Worker) -> None:
        if not key:
            return
        message = encode(RoutingDecision(self.replica_id, role.value, worker.url, key), self._max_key_length)
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1

    async def _run(self, loop_body: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `loop_body` forever, reconnecting after Redis errors with capped backoff."""
        delay = _RETRY_INITIAL_S
        while not self._stopping:
            try:
                await loop_body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection, timeout, protocol: all mean "retry later"
                self.subscribed.clear()
                if self._stopping:
                    return
                logger.warning(
                    "tree sync %s lost Redis; retrying", what,
                    extra={"channel": self._channel, "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"},
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
            else:
                delay = _RETRY_INITIAL_S

    async def _publish(self) -> None:
        while not self._stopping:
            message = await self._queue.get()
            await self._redis.publish(self._channel, message)
            self.counts["published"] += 1

    async def _subscribe(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.subscribed.set()
            while not self._stopping:
                # A bounded wait (not None): the client's short socket timeout would
                # otherwise turn a quiet channel into a read error and a reconnect.
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self._apply(message["data"])
        finally:
            await pubsub.aclose()

    def _apply(self, data: bytes) -> None:
        try:
            decision = decode(data)
        except BadDecision as exc:
            self.counts["skipped"] += 1
            logger.info("skipped a message on the tree sync channel", extra={"channel": self._channel, "reason": str(exc)})
            return
        if decision.replica == self.replica_id:
            return
        if isinstance(decision.key, tuple) != self._tokenized:
            # One replica tokenizes, another does not: its keys cannot match this tree.
            self.counts["skipped"] += 1
            return
        try:
            role = Role(decision.role)
        except ValueError:
            self.counts["skipped"] += 1
            return
        policy = self._policies.get(role)
        worker = self._registry.find(decision.url, role)
        if policy is None or worker is None:
            self.counts["unknown_worker"] += 1
            return
        policy.observe(decision.key, worker)
        self.counts["applied"] += 1

