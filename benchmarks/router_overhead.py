"""A router's own capacity: each router in front of a backend far faster than it, and the backend directly.

    python -m benchmarks.router_overhead [--modes json sse streams] [--duration 10]
        [--connections 32] [--streams 2000] [--pd]

Modes (chat completions, loopback only):
- `json`: wrk, non-streaming chat; nginx answers a fixed body at once. req/s and latency.
- `sse`: wrk, streaming chat; nginx answers 64 token events then `data: [DONE]`.
- `streams`: `--streams` clients at once, each a streaming chat that the trickle backend
  answers over about 2 s; errors, timeouts, p50/p99 end to end.
With `--pd` every router runs in its P/D mode (two legs: a prefill backend answering the
one-token JSON with `kv_transfer_params`, then the mode's backend as decode); a router
without a P/D mode is skipped. Each row also has the router's peak RSS (VmHWM) and its
ratios against the best peer (not against direct). wrk and nginx come from Debian; when
missing they are installed with apt-get (needs root). Everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.capacity_bodies import (
    FIXED_CHAT_BODY,
    MODELS_BODY,
    PREFILL_BODY,
    SSE_DONE,
    SSE_EVENTS,
    chat_request,
    sse_event_bodies,
)
from benchmarks.processes import RouterUnderTest, StaticUpstreams, parse_router
from benchmarks.report import machine_info, write_json
from benchmarks.stream_load import report_row, run_streams
from testbed.ports import free_port
from testbed.processes import EngineStartError, ManagedProcess

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("json", "sse", "streams")
DEFAULT_ROUTERS = ("atom:round_robin", "smg:round_robin", "sglang-router:round_robin", "vllm-router:round_robin")
CHAT_PATH = "/v1/chat/completions"
TRICKLE_SECONDS = 2.0
TRICKLE_EVENTS = 8  # token events per trickled answer: one every 250 ms
STREAM_TIMEOUT_S = 60.0  # a stream not done by then counts as a timeout
COLUMNS = (
    "target",
    "rps",
    "p50_ms",
    "p99_ms",
    "errors",
    "timeouts",
    "peak_rss_mib",
    "rps_vs_best_peer",
    "p50_vs_best_peer",
    "p99_vs_best_peer",
)


def ensure_tools() -> None:
    """Install wrk and nginx from Debian when either is missing."""
    if shutil.which("wrk") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        return
    subprocess.run(["apt-get", "install", "-y", "wrk", "nginx"], check=True)


def tools_missing() -> str | None:
    """Why the wrk/nginx modes cannot run here without installing anything (None when they can)."""
    if not shutil.which("wrk"):
        return "wrk is not installed (apt-get install -y wrk nginx)"
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        return "nginx is not installed (apt-get install -y wrk nginx)"
    return None


@dataclass(frozen=True)
class Backends:
    """The backends' base URLs: nginx's three servers and the trickle backend."""

    json: str
    sse: str
    prefill: str
    trickle: str | None

    def decode_url(self, mode: str) -> str:
        url = {"json": self.json, "sse": self.sse, "streams": self.trickle}[mode]
        if url is None:
            raise ValueError(f"no backend for mode {mode!r}")
        return url


def _nginx_string(body: bytes) -> str:
    return "'" + body.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"


def _nginx_answer(parts: list[bytes]) -> str:
    """`set` one variable per distinct part and `return` their concatenation (each config string
    is limited to 4 KiB, a 64-event answer is not)."""
    names = {part: f"$part{i}" for i, part in enumerate(dict.fromkeys(parts))}
    sets = "".join(f"            set {name} {_nginx_string(part)};\n" for part, name in names.items())
    return f'{sets}            return 200 "{"".join(names[p] for p in parts)}";'


def start_nginx(workdir: Path) -> tuple[ManagedProcess, dict[str, str]]:
    """One nginx, three servers: fixed JSON chat, the 64-event SSE answer, and a P/D prefill leg."""
    bodies = {
        "json": ("application/json", [FIXED_CHAT_BODY]),
        "sse": ("text/event-stream", [*sse_event_bodies(SSE_EVENTS), SSE_DONE]),
        "prefill": ("application/json", [PREFILL_BODY]),
    }
    ports = {name: free_port() for name in bodies}
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir(exist_ok=True)
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{ports[name]};
        location / {{
            default_type {ctype};
{_nginx_answer(parts)}
        }}
        location = /v1/models {{
            default_type application/json;
{_nginx_answer([MODELS_BODY])}
        }}
    }}"""
        for name, (ctype, parts) in bodies.items()
    )
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    keepalive_requests 1000000;
{servers}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = ManagedProcess([nginx, "-c", str(conf), "-p", str(workdir)], name="nginx", port=ports["json"])
    proc.wait_http_ready("/health", timeout=30)
    return proc, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def start_trickle_backend() -> ManagedProcess:
    port = free_port()
    cmd = [
        sys.executable, "-m", "benchmarks.trickle_backend", "--port", str(port),
        "--seconds", str(TRICKLE_SECONDS), "--events", str(TRICKLE_EVENTS),
    ]  # fmt: skip
    proc = ManagedProcess(cmd, name="trickle-backend", port=port)
    proc.wait_http_ready("/health", timeout=30)
    return proc


@contextmanager
def running_backends(modes: Sequence[str], workdir: Path) -> Iterator[Backends]:
    nginx, urls = start_nginx(workdir)
    trickle = start_trickle_backend() if "streams" in modes else None
    try:
        yield Backends(urls["json"], urls["sse"], urls["prefill"], trickle.url if trickle else None)
    finally:
        if trickle is not None:
            trickle.stop(grace=5.0)
        nginx.stop(grace=5.0)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    num = text.strip().rstrip("usm")
    unit = text.strip()[len(num) :]
    if unit not in _UNITS:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(num) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 latency (ms), errors and timeouts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise ValueError(f"could not parse wrk output:\n{output}")
    done = re.search(r"^\s+(\d+) requests in", output, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    connect, read, write, timeout = (int(x) for x in socket.groups()) if socket else (0, 0, 0, 0)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + connect + read + write,
        "timeouts": timeout,
        "requests": int(done.group(1)) if done else 0,
    }


def run_wrk(url: str, *, stream: bool, duration_s: int, connections: int, workdir: Path) -> dict[str, Any]:
    script = workdir / f"post-{'sse' if stream else 'json'}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{chat_request(stream).decode()}]]\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url + CHAT_PATH]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return parse_wrk(out.stdout)


def check_answer(url: str, mode: str) -> None:
    """One request through the target before the load: the load tools count status codes,
    not content, so a router that answers 200 with the wrong body must fail here."""
    stream = mode != "json"
    req = urllib.request.Request(url + CHAT_PATH, data=chat_request(stream), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=STREAM_TIMEOUT_S) as resp:
        body = resp.read()
    if not stream:
        if b'"chat.completion"' not in body or b"fixed answer" not in body:
            raise ValueError(f"not the backend's chat completion: {body[:200]!r}")
        return
    events = SSE_EVENTS if mode == "sse" else TRICKLE_EVENTS
    if body.count(b'"chat.completion.chunk"') != events or b"data: [DONE]" not in body:
        raise ValueError(f"expected {events} token events then [DONE], got {body[:200]!r}...")


def wait_serving(url: str, mode: str, timeout_s: float = 30.0) -> None:
    """Until one request gets the backend's answer through `url`. A router may say healthy
    before it has registered its workers (smg registers them in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_answer(url, mode)
            return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _process_tree(pid: int) -> Iterator[int]:
    """`pid` and its descendants alive now (a router may fork workers)."""
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        yield current


def peak_rss_mib(pid: int) -> float:
    """VmHWM of `pid` and its descendants, in MiB."""
    total_kib = 0
    for current in _process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants so far. Per request, it is the
    figure a shared machine disturbs least: req/s moves with what else runs on the cores,
    the CPU a router spends on one request much less."""
    ticks = 0
    for current in _process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_target(url: str, mode: str, *, duration_s: int, connections: int, streams: int, workdir: Path) -> dict[str, Any]:
    wait_serving(url, mode)
    if mode == "streams":
        report = asyncio.run(run_streams(url, streams=streams, events=TRICKLE_EVENTS, timeout_s=STREAM_TIMEOUT_S, path=CHAT_PATH))
        return report_row(report)
    return run_wrk(url, stream=mode == "sse", duration_s=duration_s, connections=connections, workdir=workdir)


def upstreams_for(router: RouterUnderTest, backends: Backends, mode: str, pd: bool) -> StaticUpstreams:
    decode = backends.decode_url(mode)
    if not pd:
        return StaticUpstreams(regular=[decode])
    return StaticUpstreams(pd_protocol=router.native_pd_protocol, prefill=[backends.prefill], decode=[decode])


def measure(
    routers: Sequence[RouterUnderTest],
    *,
    modes: Sequence[str] = MODES,
    duration_s: int = 10,
    connections: int = 32,
    streams: int = 2000,
    pd: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Rows per mode: the backend directly, then each router (skipped or failed with the reason)."""
    ensure_tools()  # nginx serves every mode's prefill leg, wrk loads json and sse
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="atom-bench-capacity-") as tmp, running_backends(modes, Path(tmp)) as backends:
        workdir = Path(tmp)
        load = functools.partial(measure_target, duration_s=duration_s, connections=connections, streams=streams, workdir=workdir)
        for mode in modes:
            direct = f"direct ({'trickle backend' if mode == 'streams' else 'nginx'})"
            rows = [{"target": direct, **load(backends.decode_url(mode), mode), "peak_rss_mib": None}]
            for router in routers:
                reason = router.unavailable_reason(router.native_pd_protocol if pd else None)
                if reason:
                    rows.append({"target": router.label, "skipped": reason})
                    continue
                if pd and router.kind == "atom":
                    # Two legs per request, as the peers run P/D: the backend's short prompts would
                    # otherwise go decode-only under conditional disaggregation.
                    router = dataclasses.replace(router, extra_args=(*router.extra_args, "--always-pair"))
                try:
                    proc = router.start(upstreams_for(router, backends, mode, pd))
                except EngineStartError as exc:
                    rows.append({"target": router.label, "failed": f"did not start: {exc}"[:300]})
                    continue
                try:
                    wait_serving(proc.url, mode)
                    cpu_before = cpu_seconds(proc.pid)
                    row = {"target": router.label, **load(proc.url, mode)}
                    row["cpu_us_per_request"] = (
                        (cpu_seconds(proc.pid) - cpu_before) / row["requests"] * 1e6 if row.get("requests") else None
                    )
                    row["peak_rss_mib"] = peak_rss_mib(proc.pid)
                except (OSError, ValueError, subprocess.SubprocessError) as exc:
                    row = {"target": router.label, "failed": f"{type(exc).__name__}: {exc}"[:300]}
                finally:
                    proc.stop(grace=5.0)
                rows.append(row)
            results[mode] = with_peer_ratios(rows)
    return results


def _is_peer(row: dict[str, Any]) -> bool:
    return not row["target"].startswith(("direct", "atom:", "atom@")) and "rps" in row


def with_peer_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured row's req/s, p50 and p99 as a ratio to the best peer's (highest req/s,
    lowest latencies; each metric's best may be another peer). NaN when no peer ran."""
    peers = [r for r in rows if _is_peer(r)]
    best = {
        "rps": max((r["rps"] for r in peers), default=math.nan),
        "p50_ms": min((r["p50_ms"] for r in peers), default=math.nan),
        "p99_ms": min((r["p99_ms"] for r in peers), default=math.nan),
    }
    out = []
    for r in rows:
        if "rps" in r:
            r = {
                **r,
                "rps_vs_best_peer": r["rps"] / best["rps"] if best["rps"] else math.nan,
                "p50_vs_best_peer": r["p50_ms"] / best["p50_ms"] if best["p50_ms"] else math.nan,
                "p99_vs_best_peer": r["p99_ms"] / best["p99_ms"] if best["p99_ms"] else math.nan,
            }
        out.append(r)
    return out


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def format_rows(mode: str, rows: list[dict[str, Any]], pd: bool = False) -> str:
    header = (
        f"{'target':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'timeouts':>9}{'RSS MiB':>9}{'CPU us/req':>11}"
        "  vs best peer: req/s, p50, p99"
    )
    lines = [f"== {mode}{' (P/D)' if pd else ''} ==", header, "-" * len(header)]
    for r in rows:
        if "rps" not in r:
            lines.append(f"{r['target']:<28} {'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('failed')}")
            continue
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        cpu = "-" if r.get("cpu_us_per_request") is None else f"{r['cpu_us_per_request']:.0f}"
        ratios = ", ".join(_ratio(r[f"{k}_vs_best_peer"]) for k in ("rps", "p50", "p99"))
        numbers = f"{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}{r['timeouts']:>9}{rss:>9}{cpu:>11}"
        lines.append(f"{r['target']:<28}{numbers}  {ratios}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--routers",
        nargs="*",
        default=list(DEFAULT_ROUTERS),
        help="KIND:POLICY entries (kinds: atom, smg, sglang-router, vllm-router); atom@CHECKOUT:POLICY runs "
        "our router from another checkout (e.g. main, to measure before and after in one run).",
    )
    p.add_argument("--duration", type=int, default=10, help="Seconds of wrk load per target (json, sse).")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (json, sse).")
    p.add_argument("--streams", type=int, default=2000, help="Concurrent streaming clients (streams).")
    p.add_argument("--pd", action="store_true", help="Every router in its P/D mode (prefill leg, then decode).")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    try:
        routers = [parse_router(r) for r in args.routers]
    except ValueError as exc:
        raise SystemExit(f"router_overhead: {exc}") from None
    meta = {
        **machine_info(),
        "duration_s": args.duration,
        "connections": args.connections,
        "streams": args.streams,
        "pd": args.pd,
    }
    results = measure(
        routers, modes=args.modes, duration_s=args.duration, connections=args.connections, streams=args.streams, pd=args.pd
    )
    meta["load_average_after"] = list(os.getloadavg())
    for mode, rows in results.items():
        print(format_rows(mode, rows, args.pd) + "\n")
    stem = f"capacity{'-pd' if args.pd else ''}-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    print(f"results: {write_json({'meta': meta, 'modes': results}, args.out_dir, stem)}")


if __name__ == "__main__":
    main()
