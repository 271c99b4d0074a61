"""One /metrics from several processes' registries (router.processes.metrics_merge)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from router.processes.metrics_merge import encode_families, merge, render


def _registry(requests: int, latencies: list[float], only_here: bool = False) -> CollectorRegistry:
    r = CollectorRegistry()
    c = Counter("reqs", "Requests", ["status"], registry=r)
    c.labels("200").inc(requests)
    c.labels("503").inc(1)
    h = Histogram("lat", "Latency", buckets=(0.1, 1.0), registry=r)
    for v in latencies:
        h.observe(v)
    if only_here:
        Gauge("workers_ready", "Ready workers", registry=r).set(3)
    return r


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_single_source_families_stay() -> None:
    a = _registry(3, [0.05, 0.5], only_here=True)
    b = _registry(4, [2.0])
    merged = _samples(render(merge([encode_families(a), encode_families(b)])))
    assert merged[("reqs_total", (("status", "200"),))] == 7
    assert merged[("reqs_total", (("status", "503"),))] == 2
    assert merged[("lat_count", ())] == 3
    assert merged[("lat_sum", ())] == 2.55
    assert merged[("lat_bucket", (("le", "0.1"),))] == 1
    assert merged[("lat_bucket", (("le", "1.0"),))] == 2
    assert merged[("lat_bucket", (("le", "+Inf"),))] == 3
    assert merged[("workers_ready", ())] == 3


def test_created_timestamps_take_the_earliest() -> None:
    a, b = _registry(1, []), _registry(1, [])
    fa, fb = encode_families(a), encode_families(b)
    created = [s for f in fa if f[0] == "reqs" for s in f[4] if s[0] == "reqs_created"]
    assert created, "prometheus_client reports _created samples"
    for f in fb:
        for s in f[4]:
            if s[0].endswith("_created"):
                s[2] += 1000.0
    merged = _samples(render(merge([fb, fa])))
    assert merged[("reqs_created", (("status", "200"),))] == created[0][2]
