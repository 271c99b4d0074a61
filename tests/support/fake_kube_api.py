"""A Kubernetes API server that serves pods only: list and watch, over real HTTP.

Why: no API server can run on this machine (no docker, no kind), yet the router's
Kubernetes discovery should be tested with the real client library (kubernetes_asyncio)
doing real HTTP, not with a mocked client. This server answers the two calls discovery
makes, as the API server answers them:

- `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods` with `labelSelector`
  (equality terms "k=v,k2=v2"): a `PodList` whose `metadata.resourceVersion` is the
  current version;
- the same with `watch=1&resourceVersion=V`: a chunked stream of JSON lines
  `{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}`, starting with the
  recorded events after V; a V older than the compacted history gets one `ERROR` event
  with a 410 `Status` ("too old resource version"), as the API server sends it.

The test drives the cluster: `put_pod` (ADDED or MODIFIED), `delete_pod`, `bookmark`,
`expire` (compact the history and end every open watch with a 410 ERROR event),
`drop_watches` (cut every open watch's connection mid-stream) and `end_watches` (end
them normally, as the server does at `timeoutSeconds`, which this server otherwise
ignores). Pod objects are the API's JSON; `pod()` builds one from
`tests/discovery/data/pod.json`, a StatefulSet pod written to the v1 schema as
`kubectl get pod -o json` prints it (hand-written: no cluster was at hand to record one).
Requests need the bearer token of the kubeconfig `write_kubeconfig` writes.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "fake-kube-api-token"
POD_TEMPLATE = Path(__file__).resolve().parent.parent / "discovery" / "data" / "pod.json"

_END = "end"
_DROP = "drop"


def pod(
    name: str,
    ip: str | None,
    labels: Mapping[str, str],
    *,
    namespace: str = "default",
    ready: bool = True,
    phase: str = "Running",
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod object as the API serves it, from the recorded template."""
    obj: dict[str, Any] = json.loads(POD_TEMPLATE.read_text())
    meta = obj["metadata"]
    meta.update(name=name, namespace=namespace, labels=dict(labels), annotations=dict(annotations or {}))
    meta["uid"] = f"uid-{namespace}-{name}"
    status = obj["status"]
    status["phase"] = phase
    if ip is None:
        status.pop("podIP", None)
        status.pop("podIPs", None)
    else:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    for condition in status["conditions"]:
        if condition["type"] in ("Ready", "ContainersReady"):
            condition["status"] = "True" if ready else "False"
    return obj


def _matches(obj: Mapping[str, Any], selector: str, namespace: str | None) -> bool:
    meta = obj["metadata"]
    if namespace is not None and meta.get("namespace") != namespace:
        return False
    labels = meta.get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class _Watch:
    def __init__(self, selector: str, namespace: str | None) -> None:
        self.selector = selector
        self.namespace = namespace
        self.queue: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue()


class FakeKubeApi:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 1000
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.oldest = self.version  # a watch from before this version gets 410 Gone
        self.list_calls = 0
        self.watch_calls = 0
        self.url = ""
        self._watches: set[_Watch] = set()
        self._runner: web.AppRunner | None = None

    # -- server -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def write_kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        """A kubeconfig (JSON is valid YAML) that points a client at this server (with
        another `token`, every call is refused with 401)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": token}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # -- the cluster, driven by the test ----------------------------------------------

    def put_pod(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._record("MODIFIED" if key in self.pods else "ADDED", obj)
        self.pods[key] = obj

    def delete_pod(self, namespace: str, name: str) -> None:
        obj = self.pods.pop((namespace, name))
        self._record("DELETED", obj)

    def bookmark(self) -> None:
        self.version += 1
        marker = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}}
        event = {"type": "BOOKMARK", "object": marker}
        for w in self._watches:
            w.queue.put_nowait(event)

    def expire(self) -> None:
        """Compact the history: every open watch ends with a 410 ERROR event, and a watch
        resumed from any version seen so far is refused the same way."""
        self.version += 1
        self.oldest = self.version
        self.history.clear()
        for w in self._watches:
            w.queue.put_nowait(self._gone())
            w.queue.put_nowait(_END)

    def drop_watches(self) -> None:
        for w in self._watches:
            w.queue.put_nowait(_DROP)

    def end_watches(self) -> None:
        for w in self._watches:
            w.queue.put_nowait(_END)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, kind, obj))
        for w in self._watches:
            if _matches(obj, w.selector, w.namespace):
                w.queue.put_nowait({"type": kind, "object": obj})

    def _gone(self) -> dict[str, Any]:
        return {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {self.oldest - 1} ({self.oldest})",
                "reason": "Expired",
                "code": 410,
            },
        }

    # -- handlers ---------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401},
                status=401,
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("namespace")
        selector = request.query.get("labelSelector", "")
        if request.query.get("watch") in ("1", "true", "True"):
            return await self._watch(request, selector, namespace)
        self.list_calls += 1
        items = [copy.deepcopy(p) for p in self.pods.values() if _matches(p, selector, namespace)]
        for item in items:
            item["metadata"].setdefault("resourceVersion", str(self.version))
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}, "items": items}
        )

    async def _watch(self, request: web.Request, selector: str, namespace: str | None) -> web.StreamResponse:
        self.watch_calls += 1
        since = int(request.query.get("resourceVersion") or self.version)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        w = _Watch(selector, namespace)
        if since < self.oldest:
            await response.write(json.dumps(self._gone()).encode() + b"\n")
            await response.write_eof()
            return response
        for version, kind, obj in self.history:
            if version > since and _matches(obj, selector, namespace):
                w.queue.put_nowait({"type": kind, "object": obj})
        self._watches.add(w)
        try:
            while True:
                item = await w.queue.get()
                if item == _END:
                    break
                if item == _DROP:
                    assert request.transport is not None
                    request.transport.abort()  # mid-stream: no final chunk
                    return response
                await response.write(json.dumps(item).encode() + b"\n")
        finally:
            self._watches.discard(w)
        await response.write_eof()
        return response
