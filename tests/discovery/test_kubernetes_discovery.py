"""Kubernetes discovery end to end, against `tests.support.fake_kube_api` (no real API
server runs here): the real kubernetes_asyncio client lists and watches pods over HTTP,
using a kubeconfig written to tmp; each pod's IP is a loopback address (127.0.0.N) where a
simulated worker listens on the one `--service-discovery-port`, so discovered workers
really come up. Nothing here has run against a live cluster.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio")

from engine_sim.config import WorkerSpec as SimSpec
from engine_sim.fleet import Fleet
from router.config import DiscoveryConfig
from testbed.ports import free_port
from tests.discovery.conftest import FAST, SteadyClient, eventually, list_workers
from tests.support.fake_kube_api import FakeKubeApi, pod
from tests.support.inprocess_router import make_config, running_router

pytestmark = pytest.mark.timeout(60)

APP = {"app": "vllm"}


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: use the kubeconfig
    monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield api
    finally:
        await api.stop()


@contextlib.asynccontextmanager
async def workers_at(port: int, *specs: tuple[str, SimSpec]) -> AsyncIterator[list[Fleet]]:
    """One simulated worker per (loopback IP, spec), all on `port`, as pods share a port."""
    fleets = [Fleet([spec], FAST, host=ip) for ip, spec in specs]
    async with contextlib.AsyncExitStack() as stack:
        for fleet in fleets:
            await stack.enter_async_context(fleet)
        yield fleets


async def _by_url(router: Any) -> dict[str, dict[str, Any]]:
    return {w["url"]: w for w in await list_workers(router.http, router.url)}


async def test_pods_become_workers_and_watch_recovers(kube: FakeKubeApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="atom_mesh.discovery")
    port = free_port()
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    url = {ip: f"http://{ip}:{port}" for ip in ips}
    kube.put_pod(pod("vllm-0", ips[0], APP))
    kube.put_pod(pod("vllm-1", ips[1], APP))
    kube.put_pod(pod("vllm-2", None, APP, phase="Pending"))  # scheduled, no IP yet
    kube.put_pod(pod("other-0", ips[2], {"app": "other"}))  # another app's pod
    config = make_config(
        workers=[],
        discovery=DiscoveryConfig(service_discovery=True, selector=["app=vllm"], port=port, namespace="default"),
    )
    async with workers_at(port, *((ip, SimSpec(port=port)) for ip in ips)), running_router(config) as router:

        async def workers_are(*expected: str) -> bool:
            seen = await _by_url(router)
            return sorted(seen) == sorted(expected) and all(w["state"] == "ready" for w in seen.values())

        await eventually(lambda: workers_are(url[ips[0]], url[ips[1]]), "the two running, ready app pods registered")
        listed = await _by_url(router)
        assert {w["role"] for w in listed.values()} == {"regular"}
        assert listed[url[ips[0]]]["labels"] == {"pod": "vllm-0", "namespace": "default"}
        client = SteadyClient(router.http, router.url)
        await eventually(lambda: client.sent_more_than(20), "traffic flowing")

        # The pending pod gets its IP and turns Ready: registered.
        kube.put_pod(pod("vllm-2", ips[2], APP))
        await eventually(lambda: workers_are(*url.values()), "pod that became Ready registered")
        # A pod turns NotReady: drained and removed.
        kube.put_pod(pod("vllm-1", ips[1], APP, ready=False))
        await eventually(lambda: workers_are(url[ips[0]], url[ips[2]]), "NotReady pod drained and removed")
        # A pod is deleted: drained and removed.
        kube.delete_pod("default", "vllm-0")
        await eventually(lambda: workers_are(url[ips[2]]), "deleted pod drained and removed")

        # A bookmark only moves the resourceVersion; a watch that ends normally resumes from
        # it (no relist) and replays what happened in between.
        lists, watches = kube.list_calls, kube.watch_calls
        kube.bookmark()
        kube.end_watches()
        kube.put_pod(pod("vllm-1", ips[1], APP))
        await eventually(lambda: workers_are(url[ips[1]], url[ips[2]]), "change made between two watches applied")
        assert kube.list_calls == lists and kube.watch_calls > watches

        # 410 Gone: the history is compacted and the event after it never reaches the old
        # watch; the relist finds the pod gone.
        kube.expire()
        kube.delete_pod("default", "vllm-2")
        await eventually(lambda: workers_are(url[ips[1]]), "pod deleted across a 410 drained after the relist")
        assert kube.list_calls == lists + 1

        # A dropped connection: the change made while it is down is found by the relist.
        async def watching() -> bool:
            return kube.open_watches == 1

        await eventually(watching, "watch re-established")
        kube.drop_watches()
        kube.put_pod(pod("vllm-0", ips[0], APP))
        await eventually(lambda: workers_are(url[ips[0]], url[ips[1]]), "pod added while the watch was down registered")
        assert kube.list_calls == lists + 2
        assert any("410 Gone" in r.getMessage() for r in caplog.records)
        assert any("connection lost" in r.getMessage() for r in caplog.records)

        await client.stop()
        assert client.failures == [] and set(client.statuses) == {200}


async def test_pd_roles_and_bootstrap_port_annotation(kube: FakeKubeApi) -> None:
    """Roles from the selector that matched, in all namespaces; the bootstrap port from the
    annotation, and a prefill pod whose annotation is no port is not registered. (The two
    simulated workers are separate fleets, so no P/D request could transfer KV here.)"""
    port = free_port()
    prefill_ip, decode_ip, bad_ip = "127.0.0.5", "127.0.0.6", "127.0.0.7"
    specs = [
        (prefill_ip, SimSpec(port=port, role="prefill", protocol="sglang", bootstrap_port=0)),
        (decode_ip, SimSpec(port=port, role="decode", protocol="sglang")),
    ]
    async with workers_at(port, *specs) as (prefill, _decode):
        bootstrap = prefill.workers[0].bootstrap_port
        annotation = {"sglang.ai/bootstrap-port": str(bootstrap)}
        kube.put_pod(pod("prefill-0", prefill_ip, {"app": "sgl", "role": "prefill"}, annotations=annotation))
        kube.put_pod(pod("prefill-1", bad_ip, {"app": "sgl", "role": "prefill"}, annotations={"sglang.ai/bootstrap-port": "x"}))
        kube.put_pod(pod("decode-0", decode_ip, {"app": "sgl", "role": "decode"}))
        discovery = DiscoveryConfig(
            service_discovery=True,
            prefill_selector=["app=sgl", "role=prefill"],
            decode_selector=["app=sgl", "role=decode"],
            port=port,
        )
        config = make_config(workers=[], backend="sglang", discovery=discovery)
        async with running_router(config) as router:

            async def both_ready() -> dict[str, dict[str, Any]] | None:
                seen = await _by_url(router)
                return seen if len(seen) == 2 and all(w["state"] == "ready" for w in seen.values()) else None

            seen = await eventually(both_ready, "prefill and decode pods registered")
            assert seen[f"http://{prefill_ip}:{port}"]["role"] == "prefill"
            assert seen[f"http://{prefill_ip}:{port}"]["bootstrap_port"] == bootstrap
            assert seen[f"http://{decode_ip}:{port}"]["role"] == "decode"
            assert seen[f"http://{decode_ip}:{port}"]["bootstrap_port"] is None


async def test_refused_credentials_are_logged_with_what_to_grant(
    kube: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atom_mesh.discovery")
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "wrong", token="wrong")))
    kube.put_pod(pod("vllm-0", "127.0.0.2", APP))
    config = make_config(workers=[], discovery=DiscoveryConfig(service_discovery=True, selector=["app=vllm"]))
    async with running_router(config, wait_ready=False) as router:

        async def refused() -> bool:
            return any("needs get, list and watch on pods" in r.getMessage() for r in caplog.records)

        await eventually(refused, "401 logged with the RBAC hint")
        assert await list_workers(router.http, router.url) == []
