"""Apply one source's successive views through the `WorkerManager`, as the admin API would.

Why through the manager: a discovered worker then gets the same validation, bring-up
probe, registration hooks, health checks and drain as one added by `POST /workers`.

Ownership: the sync remembers the workers it registered (key -> spec and `Worker`), and
plans only against those. A key another source, a flag or the admin API already holds is
refused by the registry (409 conflict); it is logged once and tried again on the next view,
so the discovered worker takes over if the other one is deleted. A worker an operator
deletes is forgotten here and added again from the next view (the source is the truth).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from router.config import WorkerSpec
from router.discovery.reconcile import WorkerKey, plan_changes, worker_key
from router.errors import WorkerConflictError, WorkerNotFoundError, WorkerRequestError
from router.workers.lifecycle import WorkerManager
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.discovery")


class SourceSync:
    """The workers one discovery source registered, kept in step with its latest view."""

    def __init__(self, source: str, manager: WorkerManager) -> None:
        self.source = source
        self.manager = manager
        self._owned: dict[WorkerKey, tuple[WorkerSpec, Worker]] = {}
        self._desired: dict[WorkerKey, WorkerSpec] = {}
        # Keys whose old worker is draining before the changed spec is added.
        self._replacing: dict[WorkerKey, asyncio.Task[None]] = {}
        self._refused: set[WorkerKey] = set()  # logged once each

    def owned(self) -> dict[WorkerKey, Worker]:
        """The workers this source registered that are still registered."""
        self._forget_gone()
        return {key: worker for key, (_spec, worker) in self._owned.items()}

    async def apply(self, view: Mapping[WorkerKey, WorkerSpec]) -> None:
        """Make this source's workers match `view` (its whole current view)."""
        self._desired = dict(view)
        self._refused &= set(view)
        self._forget_gone()
        desired = {key: spec for key, spec in view.items() if key not in self._replacing}
        changes = plan_changes(desired, {key: spec for key, (spec, _w) in self._owned.items()})
        if changes.empty:
            return
        logger.info(
            "discovery view changed",
            extra={
                "source": self.source,
                "add": len(changes.add),
                "remove": len(changes.remove),
                "replace": len(changes.replace),
            },
        )
        for key in changes.remove:
            await self._drain(self._owned.pop(key)[1])
        for spec in changes.replace:
            key = worker_key(spec)
            old = self._owned.pop(key)[1]
            await self._drain(old)
            task = asyncio.create_task(self._replace(key, old), name=f"discovery-replace-{old.worker_id}")
            self._replacing[key] = task
        for spec in changes.add:
            await self._add(spec)

    async def stop(self) -> None:
        tasks = list(self._replacing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------

    def _forget_gone(self) -> None:
        registry = self.manager.registry
        for key, (_spec, worker) in list(self._owned.items()):
            if registry.get(worker.worker_id) is not worker:
                del self._owned[key]

    async def _add(self, spec: WorkerSpec) -> None:
        key = worker_key(spec)
        try:
            worker = await self.manager.add(spec)
        except WorkerRequestError as err:  # a conflict (409) or a spec this router refuses
            if key not in self._refused:
                self._refused.add(key)
                level = logging.INFO if isinstance(err, WorkerConflictError) else logging.WARNING
                logger.log(
                    level,
                    "discovered worker not registered",
                    extra={"source": self.source, "url": spec.url, "role": spec.role, "reason": err.message},
                )
            return
        self._refused.discard(key)
        self._owned[key] = (spec, worker)

    async def _drain(self, worker: Worker) -> None:
        try:
            await self.manager.drain(worker.worker_id)
        except WorkerNotFoundError:
            pass  # already gone (deleted by an operator)

    async def _replace(self, key: WorkerKey, old: Worker) -> None:
        """Once the old worker has left, add the key's spec as the view has it by then."""
        try:
            try:
                await self.manager.drain(old.worker_id, wait=True)
            except WorkerNotFoundError:
                pass
            spec = self._desired.get(key)
            if spec is not None:
                await self._add(spec)
        finally:
            self._replacing.pop(key, None)
