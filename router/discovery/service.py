"""The discovery sources a router runs, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from router.config import RouterConfig
from router.discovery.file_source import FileSource, Publish
from router.discovery.sync import SourceSync
from router.workers.lifecycle import WorkerManager

logger = logging.getLogger("atom_mesh.discovery")


class DiscoverySource(Protocol):
    name: str

    async def run(self, publish: Publish) -> None:
        """Publish the source's whole view whenever it may have changed; never returns."""


def build_sources(config: RouterConfig) -> list[DiscoverySource]:
    cfg = config.discovery
    sources: list[DiscoverySource] = []
    if cfg.file:
        sources.append(FileSource(cfg.file, config.pd_disaggregation, cfg.check_interval_secs))
    if cfg.service_discovery:
        from router.discovery.kubernetes_source import KubernetesSource  # needs the k8s extra

        sources.append(KubernetesSource(cfg, config.pd_disaggregation))
    return sources


class DiscoveryService:
    """Runs each configured source, applying its views through `manager`."""

    def __init__(self, config: RouterConfig, manager: WorkerManager) -> None:
        self.syncs = [(source, SourceSync(source.name, manager)) for source in build_sources(config)]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for source, sync in self.syncs:
            self._tasks.append(asyncio.create_task(self._run(source, sync), name=f"discovery-{source.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for _source, sync in self.syncs:
            await sync.stop()

    @staticmethod
    async def _run(source: DiscoverySource, sync: SourceSync) -> None:
        try:
            await source.run(sync.apply)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, or credentials that cannot be loaded: say so loudly; workers stay as they are.
            logger.exception("discovery source stopped", extra={"source": source.name})
