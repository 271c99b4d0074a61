"""Pods as worker specs (pure): which pods are workers, their URL, role and bootstrap port,
and the selector flags."""

from __future__ import annotations

import pytest

from router.config import DiscoveryConfig, WorkerSpec
from router.discovery.pods import PodRule, SelectorError, parse_selector, pod_rules, pod_worker, view_from_pods
from tests.support.fake_kube_api import pod

ANNOTATION = "sglang.ai/bootstrap-port"


def verdict(obj: dict, role: str = "regular", port: int = 8000):
    return pod_worker(obj, role, port, ANNOTATION)


def test_running_ready_pod_is_a_worker_at_its_ip_and_the_discovery_port():
    v = verdict(pod("vllm-0", "10.244.1.17", {"app": "vllm"}, namespace="serving"))
    assert v.spec == WorkerSpec(url="http://10.244.1.17:8000", labels={"pod": "vllm-0", "namespace": "serving"})


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (pod("p", None, {}, phase="Pending"), "phase Pending"),
        (pod("p", "10.0.0.1", {}, phase="Succeeded"), "phase Succeeded"),
        (pod("p", None, {}), "no pod IP yet"),
        (pod("p", "10.0.0.1", {}, ready=False), "not Ready"),
    ],
)
def test_pods_that_cannot_serve_are_not_workers(obj, reason):
    assert verdict(obj).spec is None and verdict(obj).reason == reason


def test_a_terminating_pod_is_not_a_worker():
    obj = pod("p", "10.0.0.1", {})
    obj["metadata"]["deletionTimestamp"] = "2026-12-01T10:00:00Z"
    assert verdict(obj).reason == "terminating"


def test_pod_without_conditions_is_not_ready():
    obj = pod("p", "10.0.0.1", {})
    del obj["status"]["conditions"]
    assert verdict(obj).reason == "not Ready"


def test_ipv6_pod_ip_is_bracketed():
    assert verdict(pod("p", "fd00::17", {})).spec.url == "http://[fd00::17]:8000"


def test_prefill_bootstrap_port_comes_from_the_annotation():
    obj = pod("p", "10.0.0.1", {}, annotations={ANNOTATION: "8998"})
    assert verdict(obj, "prefill").spec.bootstrap_port == 8998
    assert verdict(obj, "decode").spec.bootstrap_port is None  # only prefill workers have one
    assert verdict(pod("p", "10.0.0.1", {}), "prefill").spec.bootstrap_port is None


@pytest.mark.parametrize("value", ["x", "0", "70000", ""])
def test_a_bootstrap_annotation_that_is_no_port_keeps_the_pod_out(value):
    v = verdict(pod("p", "10.0.0.1", {}, annotations={ANNOTATION: value}), "prefill")
    assert v.spec is None and ANNOTATION in v.reason


def test_view_combines_rules_and_one_worker_per_url():
    prefill = PodRule("prefill", (("role", "prefill"),))
    decode = PodRule("decode", (("role", "decode"),))
    pods_p = [pod("p-1", "10.0.0.9", {}), pod("p-0", "10.0.0.9", {}), pod("p-2", None, {})]  # p-0, p-1 share an IP
    pods_d = [pod("d-0", "10.0.0.9", {})]
    view, skipped = view_from_pods([(prefill, pods_p), (decode, pods_d)], 8000, ANNOTATION)
    assert sorted(view) == [("http://10.0.0.9:8000", "decode"), ("http://10.0.0.9:8000", "prefill")]
    assert view[("http://10.0.0.9:8000", "prefill")].labels["pod"] == "p-0"  # first by name
    assert "already pod default/p-0" in skipped["default/p-1 (prefill)"]
    assert skipped["default/p-2 (prefill)"] == "no pod IP yet"


def test_selector_pairs():
    assert parse_selector(["app=vllm", "tier=gpu"], "--selector") == {"app": "vllm", "tier": "gpu"}
    assert PodRule("regular", (("app", "vllm"), ("tier", "gpu"))).label_selector == "app=vllm,tier=gpu"
    for bad in ("app", "=x", "a=b,c=d", "a=b=c"):
        with pytest.raises(SelectorError, match="--selector: .* is not key=value"):
            parse_selector([bad], "--selector")


def test_rules_by_mode():
    assert pod_rules(DiscoveryConfig(selector=["app=x"]), False) == [PodRule("regular", (("app", "x"),))]
    pd = DiscoveryConfig(prefill_selector=["r=p"], decode_selector=["r=d"])
    assert [r.role for r in pod_rules(pd, True)] == ["prefill", "decode"]
    with pytest.raises(SelectorError, match="needs --selector"):
        pod_rules(DiscoveryConfig(), False)
    with pytest.raises(SelectorError, match="need --pd-disaggregation"):
        pod_rules(DiscoveryConfig(selector=["a=b"], decode_selector=["r=d"]), False)
    with pytest.raises(SelectorError, match="needs --prefill-selector and --decode-selector"):
        pod_rules(DiscoveryConfig(prefill_selector=["r=p"]), True)
    with pytest.raises(SelectorError, match="--selector finds regular workers"):
        pod_rules(DiscoveryConfig(selector=["a=b"], prefill_selector=["r=p"], decode_selector=["r=d"]), True)


def test_grpc_protocol_makes_grpc_worker_urls():
    """--service-discovery-protocol grpc (smg's flag): the pods are grpc:// workers."""
    obj = pod("vllm-0", "10.244.1.17", {"app": "vllm"}, namespace="serving")
    view, _ = view_from_pods([(PodRule("regular", (("app", "vllm"),)), [obj])], 50051, ANNOTATION, "grpc")
    assert [spec.url for spec in view.values()] == ["grpc://10.244.1.17:50051"]
