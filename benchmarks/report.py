"""Turning benchmark runs into a table (with ratios to a baseline router), JSON and a plot."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

BASELINE = "sglang-router:cache_aware"


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def _ratio(value: float, base: float | None) -> str:
    if base is None or base == 0 or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:.2f}x"


def _num(value: float, digits: int = 0) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(workload: str, runs: list[dict[str, Any]], baseline: str = BASELINE) -> str:
    """One workload's runs as a fixed-width table; ratios are router / baseline."""
    base = next((r for r in runs if r["router"] == baseline and "summary" in r), None)
    header = (
        f"{'router':<28}{'ok/total':>10}{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'E2E p50':>9}{'p99':>8}"
        f"{'req/s':>7}{'tok/s':>8}{'hit%':>6}  | vs {baseline}: TTFT p50, p99, E2E p50, req/s, hit"
    )
    lines = [f"== {workload} ==", header, "-" * len(header)]
    for run in runs:
        if "summary" not in run:
            lines.append(f"{run['router']:<28} skipped: {run.get('skipped', 'unknown reason')}")
            continue
        s, hit = run["summary"], run["fleet"]["cache_hit_rate"]
        b = base["summary"] if base else None
        bh = base["fleet"]["cache_hit_rate"] if base else None
        ratios = ", ".join(
            [
                _ratio(s["ttft_ms"]["p50"], b and b["ttft_ms"]["p50"]),
                _ratio(s["ttft_ms"]["p99"], b and b["ttft_ms"]["p99"]),
                _ratio(s["e2e_ms"]["p50"], b and b["e2e_ms"]["p50"]),
                _ratio(s["throughput_rps"], b and b["throughput_rps"]),
                _ratio(hit, bh),
            ]
        )
        lines.append(
            f"{run['router']:<28}{s['completed']:>5}/{s['requests']:<4}"
            f"{_num(s['ttft_ms']['p50']):>10}{_num(s['ttft_ms']['p90']):>8}{_num(s['ttft_ms']['p99']):>8}"
            f"{_num(s['e2e_ms']['p50']):>9}{_num(s['e2e_ms']['p99']):>8}"
            f"{_num(s['throughput_rps'], 1):>7}{_num(s['output_tok_per_s']):>8}{_num(hit * 100):>6}  | {ratios}"
        )
    lines.append("(latencies in ms; hit% = the fleet's prefix-cache hit rate over prompt tokens)")
    return "\n".join(lines)


def write_json(result: dict[str, Any], out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    return path


def plot_ttft(result: dict[str, Any], out_dir: Path, stem: str, workloads: tuple[str, ...]) -> Path | None:
    """Grouped bars of TTFT p50/p90/p99 per router, one panel per workload; None if nothing to plot."""
    panels = [(w, result["workloads"][w]["runs"]) for w in workloads if w in result["workloads"]]
    panels = [(w, [r for r in runs if "summary" in r]) for w, runs in panels]
    panels = [(w, runs) for w, runs in panels if runs]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (workload, runs) in zip(axes[0], panels, strict=True):
        labels = [r["router"] for r in runs]
        width = 0.27
        for i, q in enumerate(("p50", "p90", "p99")):
            values = [r["summary"]["ttft_ms"][q] for r in runs]
            ax.bar([x + (i - 1) * width for x in range(len(runs))], values, width, label=f"TTFT {q}")
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(workload)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-ttft.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(runs: list[dict[str, Any]], baseline: str = BASELINE) -> str:
    """One workload's runs as a Markdown table (for the README), with TTFT and E2E ratios to the baseline."""
    base = next((r for r in runs if r["router"] == baseline and "summary" in r), None)
    rows = [
        "| router | TTFT p50 | TTFT p90 | TTFT p99 | E2E p50 | E2E p99 | req/s | cache hit "
        "| TTFT p50 / p99 vs baseline | E2E p50 vs baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if "summary" not in run:
            rows.append(f"| {run['router']} | skipped: {run.get('skipped', '')} | | | | | | | | |")
            continue
        s, b = run["summary"], base["summary"] if base else None
        ttft_p50 = _ratio(s["ttft_ms"]["p50"], b and b["ttft_ms"]["p50"])
        ttft_ratio = f"{ttft_p50} / {_ratio(s['ttft_ms']['p99'], b and b['ttft_ms']['p99'])}"
        rows.append(
            f"| {run['router']} | {_num(s['ttft_ms']['p50'])} | {_num(s['ttft_ms']['p90'])} | {_num(s['ttft_ms']['p99'])} "
            f"| {_num(s['e2e_ms']['p50'])} | {_num(s['e2e_ms']['p99'])} | {_num(s['throughput_rps'], 1)} "
            f"| {_num(run['fleet']['cache_hit_rate'] * 100)}% | {ttft_ratio} "
            f"| {_ratio(s['e2e_ms']['p50'], b and b['e2e_ms']['p50'])} |"
        )
    return "\n".join(rows)


# -- one trace run several ways (conditional disaggregation's three-way comparison) -------------
# (label, summary path, lower is better): what "best of the modes" is taken over.
MODE_METRICS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("TTFT p50", ("ttft_ms", "p50"), True),
    ("TTFT p90", ("ttft_ms", "p90"), True),
    ("E2E p50", ("e2e_ms", "p50"), True),
    ("req/s", ("throughput_rps",), False),
)


def _at(summary: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = summary
    for key in path:
        value = value[key]
    return float(value)


def ratios_to_best(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each run (by label), each `MODE_METRICS` value divided by the best run's value.

    1.00 marks the best; for latencies a ratio above 1 is worse, for throughput one below 1."""
    done = [r for r in runs if "summary" in r]
    out: dict[str, dict[str, float]] = {r["router"]: {} for r in done}
    for label, path, lower in MODE_METRICS:
        values = [v for v in (_at(r["summary"], path) for r in done) if not math.isnan(v)]
        best = (min if lower else max)(values) if values else math.nan
        for r in done:
            value = _at(r["summary"], path)
            out[r["router"]][label] = value / best if best and not math.isnan(best) else math.nan
    return out


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.0f}%"


def format_modes_table(workload: str, runs: list[dict[str, Any]]) -> str:
    """One trace run several ways: latencies, throughput, decode-only share, ratios to the best run."""
    ratios = ratios_to_best(runs)
    header = (
        f"{'run':<34}{'ok/total':>10}{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'E2E p50':>9}{'p90':>8}"
        f"{'req/s':>7}{'tok/s':>8}{'d-only':>8}{'hit%':>6}  | vs best: " + ", ".join(m[0] for m in MODE_METRICS)
    )
    lines = [f"== {workload} ==", header, "-" * len(header)]
    for run in runs:
        if "summary" not in run:
            lines.append(f"{run['router']:<34} skipped: {run.get('skipped', 'unknown reason')}")
            continue
        s = run["summary"]
        vs = ", ".join(_ratio(ratios[run["router"]][m[0]], 1.0) for m in MODE_METRICS)
        lines.append(
            f"{run['router']:<34}{s['completed']:>5}/{s['requests']:<4}"
            f"{_num(s['ttft_ms']['p50']):>10}{_num(s['ttft_ms']['p90']):>8}{_num(s['ttft_ms']['p99']):>8}"
            f"{_num(s['e2e_ms']['p50']):>9}{_num(s['e2e_ms']['p90']):>8}{_num(s['throughput_rps'], 1):>7}"
            f"{_num(s['output_tok_per_s']):>8}{_share(s['decode_only_share']):>8}"
            f"{_num(run['fleet']['cache_hit_rate'] * 100):>6}  | {vs}"
        )
    kinds = sorted({k for run in runs for k in run.get("by_kind", {})})
    if kinds:
        lines.append("TTFT p50 / E2E p50 per kind of request (ms), and the share of each kind sent decode-only:")
        for run in runs:
            if "by_kind" not in run:
                continue
            cells = []
            for kind in kinds:
                k = run["by_kind"].get(kind)
                if k:
                    latency = f"{_num(k['ttft_ms']['p50'])}/{_num(k['e2e_ms']['p50'])}"
                    cells.append(f"{kind} {latency} ({_share(k['decode_only_share'])})")
            lines.append(f"  {run['router']:<32}" + "   ".join(cells))
    lines.append(
        "(latencies in ms; d-only = share of answers the router sent decode-only, from its x-atom-* headers; "
        "hit% = the fleet's prefix-cache hit rate over locally prefilled prompt tokens)"
    )
    return "\n".join(lines)


def markdown_modes_table(runs: list[dict[str, Any]]) -> str:
    """`format_modes_table` as Markdown (for the docs)."""
    ratios = ratios_to_best(runs)
    rows = [
        "| run | TTFT p50 | TTFT p90 | TTFT p99 | E2E p50 | E2E p90 | req/s | decode-only | "
        + " | ".join(f"{m[0]} vs best" for m in MODE_METRICS)
        + " |",
        "| --- |" + " ---: |" * (8 + len(MODE_METRICS)),
    ]
    for run in runs:
        if "summary" not in run:
            rows.append(f"| {run['router']} | skipped: {run.get('skipped', '')} |" + " |" * (7 + len(MODE_METRICS)))
            continue
        s = run["summary"]
        vs = " | ".join(_ratio(ratios[run["router"]][m[0]], 1.0) for m in MODE_METRICS)
        rows.append(
            f"| {run['router']} | {_num(s['ttft_ms']['p50'])} | {_num(s['ttft_ms']['p90'])} | {_num(s['ttft_ms']['p99'])} "
            f"| {_num(s['e2e_ms']['p50'])} | {_num(s['e2e_ms']['p90'])} | {_num(s['throughput_rps'], 1)} "
            f"| {_share(s['decode_only_share'])} | {vs} |"
        )
    return "\n".join(rows)
