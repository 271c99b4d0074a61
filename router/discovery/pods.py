"""Kubernetes pods as worker specs: the pure part of `kubernetes_source` (no client library).

Pods are read as the API's JSON (camelCase keys: `status.podIP`), the form both the list
call (sanitized) and the watch events' `raw_object` take, so recorded API responses test
this module directly.

A pod is a worker when its phase is Running, it has a pod IP, its Ready condition is
True and it is not being deleted (a terminating pod drains, as it would behind a Service).
Its role is the role of the selector that found it; its URL is
<--service-discovery-protocol>://<podIP>:<--service-discovery-port>; a prefill pod's bootstrap port comes from the
`--bootstrap-port-annotation` annotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.config import DiscoveryConfig, WorkerSpec
from router.discovery.reconcile import WorkerKey, worker_key


class SelectorError(ValueError):
    """A selector flag the router cannot start with."""


def parse_selector(pairs: Sequence[str], flag: str) -> dict[str, str]:
    """`["app=vllm", "tier=gpu"]` (smg's `--selector app=vllm tier=gpu`) as a dict."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or "," in pair or "=" in value:
            raise SelectorError(f"{flag}: {pair!r} is not key=value (give each label as key=value, space-separated)")
        labels[key] = value
    return labels


@dataclass(frozen=True)
class PodRule:
    """Pods matching `selector` become workers of `role`."""

    role: str
    selector: tuple[tuple[str, str], ...]  # (label, value) pairs, all of which must match

    @property
    def label_selector(self) -> str:
        """The API's `labelSelector` query form, "app=vllm,tier=gpu"."""
        return ",".join(f"{k}={v}" for k, v in self.selector)


def pod_rules(cfg: DiscoveryConfig, pd_disaggregation: bool) -> list[PodRule]:
    """The selectors to watch: --selector (regular), or --prefill/--decode-selector (P/D)."""
    if pd_disaggregation:
        if cfg.selector:
            raise SelectorError(
                "--selector finds regular workers; with --pd-disaggregation give --prefill-selector and --decode-selector"
            )
        if not (cfg.prefill_selector and cfg.decode_selector):
            raise SelectorError("--service-discovery with --pd-disaggregation needs --prefill-selector and --decode-selector")
        return [
            PodRule("prefill", tuple(parse_selector(cfg.prefill_selector, "--prefill-selector").items())),
            PodRule("decode", tuple(parse_selector(cfg.decode_selector, "--decode-selector").items())),
        ]
    if cfg.prefill_selector or cfg.decode_selector:
        raise SelectorError("--prefill-selector/--decode-selector need --pd-disaggregation")
    if not cfg.selector:
        raise SelectorError("--service-discovery needs --selector key=value ... (the labels of the worker pods)")
    return [PodRule("regular", tuple(parse_selector(cfg.selector, "--selector").items()))]


def pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


@dataclass(frozen=True)
class PodVerdict:
    """A pod's worker spec, or why it is not a worker (now)."""

    spec: WorkerSpec | None
    reason: str = ""


def pod_worker(
    pod: Mapping[str, Any], role: str, port: int, bootstrap_annotation: str, protocol: str = "http"
) -> PodVerdict:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return PodVerdict(None, "terminating")
    phase = status.get("phase")
    if phase != "Running":
        return PodVerdict(None, f"phase {phase}")
    ip = status.get("podIP")
    if not ip:
        return PodVerdict(None, "no pod IP yet")
    if not _is_ready(status):
        return PodVerdict(None, "not Ready")
    bootstrap_port: int | None = None
    raw = (meta.get("annotations") or {}).get(bootstrap_annotation)
    if role == "prefill" and raw is not None:
        try:
            bootstrap_port = int(raw)
        except ValueError:
            bootstrap_port = 0
        if not 0 < bootstrap_port < 65536:
            return PodVerdict(None, f"annotation {bootstrap_annotation}={raw!r} is not a TCP port (1-65535)")
    host = f"[{ip}]" if ":" in ip else ip
    labels = {"pod": str(meta.get("name", "")), "namespace": str(meta.get("namespace", ""))}
    return PodVerdict(WorkerSpec(url=f"{protocol}://{host}:{port}", role=role, bootstrap_port=bootstrap_port, labels=labels))


def view_from_pods(
    pods_by_rule: Iterable[tuple[PodRule, Iterable[Mapping[str, Any]]]],
    port: int,
    bootstrap_annotation: str,
    protocol: str = "http",
) -> tuple[dict[WorkerKey, WorkerSpec], dict[str, str]]:
    """The workers the pods make (one per (URL, role): the first pod by name wins, e.g.
    two host-network pods on one node), and why each other pod is not one."""
    view: dict[WorkerKey, WorkerSpec] = {}
    skipped: dict[str, str] = {}
    for rule, pods in pods_by_rule:
        for pod in sorted(pods, key=pod_name):
            verdict = pod_worker(pod, rule.role, port, bootstrap_annotation, protocol)
            name = f"{pod_name(pod)} ({rule.role})"
            if verdict.spec is None:
                skipped[name] = verdict.reason
                continue
            key = worker_key(verdict.spec)
            if key in view:
                skipped[name] = f"{key[0]} is already pod {view[key].labels['namespace']}/{view[key].labels['pod']}"
                continue
            view[key] = verdict.spec
    return view, skipped
