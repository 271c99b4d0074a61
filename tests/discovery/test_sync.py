"""`SourceSync` against a real `WorkerManager` and simulated workers (real HTTP): a source
only touches its own workers, re-adds what an operator deleted, and replaces a changed
worker only once the old one has drained."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from engine_sim.config import WorkerSpec as SimSpec
from router.config import WorkerSpec
from router.discovery.reconcile import index_specs
from router.discovery.sync import SourceSync
from router.load_guard import LoadGuard
from router.workers.lifecycle import WorkerManager
from router.workers.registry import WorkerRegistry
from router.workers.worker import WorkerState
from tests.discovery.conftest import eventually, sim_fleet
from tests.support.inprocess_router import make_config


@pytest.fixture
async def urls() -> AsyncIterator[list[str]]:
    async with sim_fleet(SimSpec(), SimSpec()) as fleet:
        yield [w.url for w in fleet.workers]


@pytest.fixture
async def manager() -> AsyncIterator[WorkerManager]:
    m = WorkerManager(make_config(workers=[]), WorkerRegistry())
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


def states(manager: WorkerManager) -> dict[str, str]:
    return {w.url: w.state.value for w in manager.registry}


async def test_a_source_never_touches_workers_it_did_not_register(manager: WorkerManager, urls: list[str]):
    a, b = urls
    admin = await manager.add(WorkerSpec(a), wait=True)
    sync = SourceSync("file:test", manager)
    await sync.apply(index_specs([WorkerSpec(a), WorkerSpec(b)]))
    assert list(sync.owned()) == [(b, "regular")]  # a is the admin API's
    await sync.apply(index_specs([]))
    assert manager.registry.get(admin.worker_id) is admin and admin.state is WorkerState.READY

    async def b_gone() -> bool:
        return b not in states(manager)

    await eventually(b_gone, "the source's own worker drained and removed")
    manager.remove(admin.worker_id)  # the operator deletes theirs: the source may take the URL now
    await sync.apply(index_specs([WorkerSpec(a)]))
    assert list(sync.owned()) == [(a, "regular")]


async def test_a_worker_the_operator_deleted_comes_back_with_the_next_view(manager: WorkerManager, urls: list[str]):
    sync = SourceSync("file:test", manager)
    view = index_specs([WorkerSpec(urls[0])])
    await sync.apply(view)
    manager.remove(sync.owned()[(urls[0], "regular")].worker_id)
    assert sync.owned() == {}
    await sync.apply(view)
    assert list(sync.owned()) == [(urls[0], "regular")]


async def test_a_changed_worker_is_replaced_once_the_old_one_drained(manager: WorkerManager, urls: list[str]):
    url = urls[0]
    sync = SourceSync("file:test", manager)
    first = WorkerSpec(url, labels={"rev": "1"})
    await sync.apply(index_specs([first]))
    old = sync.owned()[(url, "regular")]

    async def ready(worker) -> bool:
        return worker.state is WorkerState.READY

    await eventually(lambda: ready(old), "first worker ready")
    request = LoadGuard([old])  # a request in flight on it
    await sync.apply(index_specs([dataclasses.replace(first, labels={"rev": "2"})]))
    await sync.apply(index_specs([dataclasses.replace(first, labels={"rev": "3"})]))  # changed again while draining
    assert [w.state for w in manager.registry] == [WorkerState.DRAINING]  # one worker per URL: the new one waits
    request.release()

    async def replaced() -> bool:
        workers = list(manager.registry)
        return len(workers) == 1 and workers[0] is not old and workers[0].state is WorkerState.READY

    await eventually(replaced, "replacement registered once the old worker left")
    assert next(iter(manager.registry)).labels == {"rev": "3"}  # the latest spec, not the intermediate one

    # Removed from the view while its replacement waits: nothing comes back.
    current = sync.owned()[(url, "regular")]
    request = LoadGuard([current])
    await sync.apply(index_specs([dataclasses.replace(first, labels={"rev": "4"})]))
    await sync.apply(index_specs([]))
    request.release()

    async def empty() -> bool:
        return len(manager.registry) == 0 and not sync._replacing

    await eventually(empty, "worker removed and no replacement added")
