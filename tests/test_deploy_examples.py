"""The deploy/ examples stay true to the router they describe.

- Grafana: every metric a panel's PromQL (or a template variable's query) names is a
  series the router exports, taken from the router itself (the collectors registered on a
  real `RouterService`), with the suffixes each metric type really has (a counter's
  `_total`, a histogram's `_bucket`/`_sum`/`_count`); a made-up name is caught.
- Kubernetes: the manifests parse, and the router container's args parse with the
  router's own command line (a renamed flag breaks this test); probes, ports, the grace
  period and the RBAC for pod discovery fit together.
- Prometheus: the scrape config parses and scrapes what the router serves.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.app import RouterService
from router.cli import build_parser, config_from_args
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "atom-mesh-router.json"

# -- the router's exported series ----------------------------------------------------------

# The sample names each Prometheus metric type exposes, after its family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name a router with every collector registered can export (kv_aware
    registers the KV event feed's collector too)."""
    service = RouterService(RouterConfig(policy="kv_aware"))
    try:
        return {f.name + suffix for f in service.metrics.registry.collect() for suffix in _SUFFIXES[f.type]}
    finally:
        assert service.kv_events is not None
        asyncio.run(service.kv_events.stop())


# -- PromQL metric identifiers ---------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not inside a number (1e-9) or a Grafana variable ($__rate_interval).
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,")


def metric_names(expr: str) -> set[str]:
    """The metric identifiers a PromQL expression selects: strings, label matchers, ranges
    and label lists (`by (...)`) removed, function and aggregation names (followed by `(`)
    and keywords skipped."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        if text[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (rows' nested panels too) and template query."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = _LABEL_VALUES.match(query)
            found.append((f"variable {var['name']!r}", m.group(1) if m else query))
    return found


def unknown_metrics(dashboard: dict[str, Any], exported: set[str]) -> dict[str, set[str]]:
    problems = {}
    for where, expr in dashboard_queries(dashboard):
        names = metric_names(expr)
        if not names:
            problems[where] = {f"<no metric in {expr!r}>"}
        elif names - exported:
            problems[where] = names - exported
    return problems


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (route, status) (rate(a_total{instance=~"$instance", status=~"5.."}[$__rate_interval]))', {"a_total"}),
        ("histogram_quantile(0.99, sum by (le, route) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("sum(rate(a_total[1m])) / clamp_min(sum(rate(b_total[1m])), 1e-9)", {"a_total", "b_total"}),
        ('max by (url) (g{state!="closed"}) == 1 and on (url) h offset 5m', {"g", "h"}),
    ],
)
def test_metric_names_are_the_selected_series_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_dashboard_metric_is_one_the_router_exports(exported: set[str]) -> None:
    dashboard = _dashboard()
    assert len(dashboard_queries(dashboard)) > 20
    assert unknown_metrics(dashboard, exported) == {}


def test_a_panel_naming_a_metric_the_router_lacks_is_caught(exported: set[str]) -> None:
    dashboard = _dashboard()
    made_up = "rate(atom_mesh_made_up_total[5m])"
    wrong_suffix = "rate(atom_mesh_requests_bucket[5m])"  # a counter has no buckets
    panel = dashboard["panels"][1]
    panel["targets"] += [{"refId": "Y", "expr": made_up}, {"refId": "Z", "expr": wrong_suffix}]
    problems = unknown_metrics(dashboard, exported)
    assert problems == {
        f"panel {panel['title']!r} Y": {"atom_mesh_made_up_total"},
        f"panel {panel['title']!r} Z": {"atom_mesh_requests_bucket"},
    }


def test_the_dashboard_covers_what_operators_watch() -> None:
    used = {name for _, expr in dashboard_queries(_dashboard()) for name in metric_names(expr)}
    for series in (
        "atom_mesh_requests_total",
        "atom_mesh_request_duration_seconds_bucket",
        "atom_mesh_time_to_first_token_seconds_bucket",
        "atom_mesh_inter_event_latency_seconds_bucket",
        "atom_mesh_admission_queue_depth",
        "atom_mesh_admission_rejections_total",
        "atom_mesh_worker_in_flight_requests",
        "atom_mesh_worker_state",
        "atom_mesh_worker_breaker_state",
        "atom_mesh_placements_total",
        "atom_mesh_disagg_decisions_total",
        "atom_mesh_kv_events_total",
    ):
        assert series in used, series


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = [d for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    return docs


def _one(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _router_container(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = _one(manifests, "Deployment", "atom-mesh-router")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_every_namespaced_manifest_is_in_one_namespace(manifests: list[dict[str, Any]]) -> None:
    namespaces = {d["metadata"]["name"] for d in manifests if d["kind"] == "Namespace"}
    assert len(namespaces) == 1
    assert all(d["metadata"].get("namespace") in namespaces for d in manifests if d["kind"] != "Namespace")


def test_router_container_args_are_the_routers_own_flags(manifests: list[dict[str, Any]]) -> None:
    _, container = _router_container(manifests)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert container["command"] == ["atom-router"] and "atom-router" in scripts
    config = config_from_args(build_parser().parse_args([str(a) for a in container["args"]]))
    assert config.host == "0.0.0.0" and (config.workers or config.discovery.service_discovery)
    assert _port(container, "http") == config.port
    assert _port(container, "metrics") == config.prometheus_port


def test_router_probes_ports_and_grace_period_fit_the_router(manifests: list[dict[str, Any]]) -> None:
    deployment, container = _router_container(manifests)
    config = config_from_args(build_parser().parse_args([str(a) for a in container["args"]]))
    pod = deployment["spec"]["template"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.shutdown_grace_period_secs
    assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/liveness", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.prometheus_port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    service = _one(manifests, "Service", "atom-mesh-router")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}


def test_router_may_read_pods_for_discovery(manifests: list[dict[str, Any]]) -> None:
    deployment, _ = _router_container(manifests)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    _one(manifests, "ServiceAccount", account)
    (binding,) = [
        b for b in manifests if b["kind"] == "RoleBinding" and {"kind": "ServiceAccount", "name": account} in [
            {"kind": s["kind"], "name": s["name"]} for s in b["subjects"]
        ]
    ]
    role = _one(manifests, "Role", binding["roleRef"]["name"])
    assert any(
        "" in rule["apiGroups"] and "pods" in rule["resources"] and {"get", "list", "watch"} <= set(rule["verbs"])
        for rule in role["rules"]
    )


def test_router_discovers_the_vllm_worker_pods(manifests: list[dict[str, Any]]) -> None:
    """The router's pod selector, port and namespace match the example worker pool."""
    deployment, container = _router_container(manifests)
    config = config_from_args(build_parser().parse_args([str(a) for a in container["args"]]))
    workers = _one(manifests, "Deployment", "vllm-worker")
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    discovery = config.discovery
    assert discovery.service_discovery and discovery.selector
    assert dict(pair.split("=", 1) for pair in discovery.selector).items() <= pod_labels.items()
    worker_ports = {p["containerPort"] for c in workers["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert discovery.port in worker_ports
    assert discovery.namespace == workers["metadata"]["namespace"] == deployment["metadata"]["namespace"]


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_the_routers_metrics_path(manifests: list[dict[str, Any]]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    assert jobs and len({j["job_name"] for j in jobs}) == len(jobs)
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs)
    (k8s,) = [j for j in jobs if "kubernetes_sd_configs" in j]
    deployment, _ = _router_container(manifests)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    keep = [r for r in k8s["relabel_configs"] if r.get("action") == "keep"]
    for rule in keep:
        (source,) = rule["source_labels"]
        if source.startswith("__meta_kubernetes_pod_label_"):
            assert re.fullmatch(rule["regex"], labels[source.removeprefix("__meta_kubernetes_pod_label_")])
