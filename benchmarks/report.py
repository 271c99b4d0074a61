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
    for ax, (workload, runs) in zip(axes[0], panels):
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
        "| router | TTFT p50 | TTFT p90 | TTFT p99 | E2E p50 | E2E p99 | req/s | cache hit | TTFT p50 / p99 vs baseline | E2E p50 vs baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if "summary" not in run:
            rows.append(f"| {run['router']} | skipped: {run.get('skipped', '')} | | | | | | | | |")
            continue
        s, b = run["summary"], base["summary"] if base else None
        ttft_ratio = f"{_ratio(s['ttft_ms']['p50'], b and b['ttft_ms']['p50'])} / {_ratio(s['ttft_ms']['p99'], b and b['ttft_ms']['p99'])}"
        rows.append(
            f"| {run['router']} | {_num(s['ttft_ms']['p50'])} | {_num(s['ttft_ms']['p90'])} | {_num(s['ttft_ms']['p99'])} "
            f"| {_num(s['e2e_ms']['p50'])} | {_num(s['e2e_ms']['p99'])} | {_num(s['throughput_rps'], 1)} "
            f"| {_num(run['fleet']['cache_hit_rate'] * 100)}% | {ttft_ratio} | {_ratio(s['e2e_ms']['p50'], b and b['e2e_ms']['p50'])} |"
        )
    return "\n".join(rows)
