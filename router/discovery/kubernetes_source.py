"""Workers from Kubernetes pods (`--service-discovery`), with kubernetes_asyncio.

One list + watch per selector (`pods.pod_rules`): the list gives every matching pod and
a resourceVersion, the watch continues from it (bookmarks move it on), and a watch that
ends normally resumes from the last resourceVersion it saw. A watch whose version has
expired (410 Gone) or whose connection dropped is relisted: the fresh list replaces what
the router knew, so a pod deleted while the watch was down is drained all the same.
After every change the combined view of all selectors is published.

Credentials: the pod's service account when running in a cluster, else the kubeconfig
(`KUBECONFIG`, or ~/.kube/config). RBAC: get, list and watch on pods.

Import-guarded: `router.cli` refuses `--service-discovery` without the library, and this
module is imported only when discovery is on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from router.config import DiscoveryConfig, WorkerSpec
from router.discovery.pods import PodRule, pod_name, pod_rules, view_from_pods
from router.discovery.reconcile import WorkerKey

logger = logging.getLogger("atom_mesh.discovery")

Publish = Callable[[Mapping[WorkerKey, WorkerSpec]], Awaitable[None]]

# The API server ends each watch after this long (and the watch is resumed); a watch still
# open this long plus the grace is ended by the client (a dead connection) and relisted.
WATCH_TIMEOUT_SECS = 300
_READ_GRACE_SECS = 30
_LIST_TIMEOUT_SECS = 30
_BACKOFF_SECS = (0.5, 30.0)  # first retry after an error, and the most it doubles to


async def api_client() -> client.ApiClient:
    """A client with in-cluster credentials, or the kubeconfig's outside a cluster
    (`KUBECONFIG` read now: the library reads it once, at import)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        await config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration, persist_config=False
        )
    return client.ApiClient(configuration)


class KubernetesSource:
    """Publishes the workers the matching pods make, after every pod change."""

    name = "kubernetes"

    def __init__(self, cfg: DiscoveryConfig, pd_disaggregation: bool) -> None:
        self._cfg = cfg
        self._rules = pod_rules(cfg, pd_disaggregation)
        self._pods: dict[PodRule, dict[str, dict[str, Any]]] = {rule: {} for rule in self._rules}
        self._skipped: dict[str, str] = {}
        self._publish_lock = asyncio.Lock()

    async def run(self, publish: Publish) -> None:
        api = await self._connect()
        try:
            core = client.CoreV1Api(api)
            await asyncio.gather(*(self._follow(api, core, rule, publish) for rule in self._rules))
        finally:
            await api.close()

    async def _connect(self) -> client.ApiClient:
        """A client, once credentials load; until then a clear error, retried (a kubeconfig
        or service account token may be mounted after the router starts)."""
        backoff = _BACKOFF_SECS[0]
        last = ""
        while True:
            try:
                return await api_client()
            except (ConfigException, OSError) as exc:
                if str(exc) != last:
                    last = str(exc)
                    logger.error(
                        "cannot load Kubernetes credentials (in-cluster service account, or KUBECONFIG / "
                        "~/.kube/config); retrying",
                        extra={"error": last},
                    )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_SECS[1])

    def _list_call(self, core: client.CoreV1Api) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if self._cfg.namespace:
            return core.list_namespaced_pod, (self._cfg.namespace,)
        return core.list_pod_for_all_namespaces, ()

    async def _follow(self, api: client.ApiClient, core: client.CoreV1Api, rule: PodRule, publish: Publish) -> None:
        """List, then watch, for ever; relist after a 410 or a dropped connection."""
        func, args = self._list_call(core)
        pods = self._pods[rule]
        backoff = _BACKOFF_SECS[0]
        where = {"selector": rule.label_selector, "role": rule.role, "namespace": self._cfg.namespace or "(all)"}
        while True:
            try:
                listed = await func(*args, label_selector=rule.label_selector, _request_timeout=_LIST_TIMEOUT_SECS)
                pods.clear()
                for pod in listed.items:
                    raw = api.sanitize_for_serialization(pod)
                    pods[pod_name(raw)] = raw
                version = listed.metadata.resource_version
                logger.info("pods listed", extra={**where, "pods": len(pods), "resource_version": version})
                await self._publish(publish)
                while True:  # one watch per pass; a normal end resumes from the last version
                    async with watch.Watch() as w:
                        stream = w.stream(
                            func,
                            *args,
                            label_selector=rule.label_selector,
                            resource_version=version,
                            allow_watch_bookmarks=True,
                            timeout_seconds=WATCH_TIMEOUT_SECS,
                            _request_timeout=WATCH_TIMEOUT_SECS + _READ_GRACE_SECS,
                        )
                        async for event in stream:
                            backoff = _BACKOFF_SECS[0]
                            if self._apply_event(pods, event["type"], event["raw_object"]):
                                await self._publish(publish)
                        version = w.resource_version or version
            except ApiException as exc:
                if exc.status == 410:
                    logger.info("pod watch expired (410 Gone); relisting", extra=where)
                    continue
                hint = " (the router's service account needs get, list and watch on pods)" if exc.status in (401, 403) else ""
                logger.warning(
                    f"pod list/watch refused{hint}; retrying",
                    extra={**where, "status": exc.status, "reason": exc.reason, "retry_in_secs": backoff},
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning(
                    "pod list/watch connection lost; relisting",
                    extra={**where, "error": f"{exc.__class__.__name__}: {exc}", "retry_in_secs": backoff},
                )
            except Exception as exc:  # a malformed answer: the library raises plain exceptions for those
                logger.warning(
                    "pod list/watch answer not understood; relisting",
                    extra={**where, "error": f"{exc.__class__.__name__}: {exc}", "retry_in_secs": backoff},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_SECS[1])

    @staticmethod
    def _apply_event(pods: dict[str, dict[str, Any]], kind: str, pod: dict[str, Any]) -> bool:
        """Fold one watch event into `pods`; True if the view may have changed."""
        if kind in ("ADDED", "MODIFIED"):
            pods[pod_name(pod)] = pod
            return True
        if kind == "DELETED":
            return pods.pop(pod_name(pod), None) is not None
        return False  # BOOKMARK: only the resourceVersion moved (the Watch keeps it)

    async def _publish(self, publish: Publish) -> None:
        async with self._publish_lock:
            view, skipped = view_from_pods(
                ((rule, self._pods[rule].values()) for rule in self._rules),
                self._cfg.port,
                self._cfg.bootstrap_port_annotation,
                self._cfg.protocol,
            )
            for name, reason in skipped.items():
                if self._skipped.get(name) != reason:
                    logger.info("pod is not a worker (now)", extra={"pod": name, "reason": reason})
            self._skipped = skipped
            await publish(view)
