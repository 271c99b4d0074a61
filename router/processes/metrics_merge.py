"""One /metrics from several processes: every sample summed across them (pure).

Why not prometheus_client's multiprocess mode: it needs an environment variable set
before the library is imported and a shared directory of mmap files, and it cannot carry
the custom collectors (workers, admission, KV events) that live only in the
coordinator. Here each relay sends its own registry's samples over the link when the
coordinator is scraped (`encode_families`), and the coordinator adds them to its own:
counters, histogram buckets, sums and counts add up; a `_created` timestamp takes the
earliest. The coordinator's collectors appear once, as they exist only there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def encode_families(collector: Collector) -> list[list[Any]]:
    """`collector`'s metric families as plain lists (JSON-able)."""
    return [
        [family.name, family.type, family.documentation, family.unit, [[s.name, s.labels, s.value] for s in family.samples]]
        for family in collector.collect()
    ]


def merge(snapshots: Iterable[list[list[Any]]]) -> list[Metric]:
    """The families of every snapshot, with samples of the same name and labels summed."""
    heads: dict[str, tuple[str, str, str]] = {}
    values: dict[str, Samples] = {}
    for snapshot in snapshots:
        for name, typ, documentation, unit, samples in snapshot:
            if name not in heads:
                heads[name] = (typ, documentation, unit)
                values[name] = {}
            merged = values[name]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in merged:
                    merged[key] = value
                elif sample_name.endswith("_created"):
                    merged[key] = min(merged[key], value)
                else:
                    merged[key] += value
    families = []
    for name, (typ, documentation, unit) in heads.items():
        family = Metric(name, documentation, typ, unit)
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        families.append(family)
    return families


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: list[Metric]) -> bytes:
    """The Prometheus text exposition of `families`."""
    return generate_latest(_Families(families))
