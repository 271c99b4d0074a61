"""A router's own overhead: wrk against each router in front of nginx, and against nginx directly.

    python -m benchmarks.router_overhead [--duration 10] [--connections 32]

nginx answers every request with a fixed completion body on loopback, so it is faster than
any router and the difference between "direct" and a router is that router's cost. wrk and
nginx come from Debian; when missing they are installed with apt-get (needs root).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.processes import RouterUnderTest, StaticUpstreams, parse_router
from benchmarks.report import machine_info, write_json
from testbed.ports import free_port
from testbed.processes import ManagedProcess

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_ROUTERS = (
    "atom:round_robin",
    "atom:cache_aware",
    "sglang-router:round_robin",
    "sglang-router:cache_aware",
    "vllm-router:round_robin",
    "vllm-router:cache_aware",
)
BASELINE = "sglang-router:cache_aware"
FIXED_BODY = json.dumps(
    {
        "id": "cmpl-nginx",
        "object": "text_completion",
        "created": 0,
        "model": "sim-model",
        "choices": [{"index": 0, "text": " fixed answer", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }
)
REQUEST_BODY = json.dumps({"model": "sim-model", "prompt": "hello world", "max_tokens": 2})


def ensure_tools() -> None:
    """Install wrk and nginx from Debian when either is missing."""
    if shutil.which("wrk") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        return
    subprocess.run(["apt-get", "install", "-y", "wrk", "nginx"], check=True)


def _nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(workdir: Path) -> ManagedProcess:
    port = free_port()
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir(exist_ok=True)
    body = FIXED_BODY.replace("\\", "\\\\").replace("'", "\\'")
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    )
    proc = ManagedProcess([_nginx_binary(), "-c", str(conf), "-p", str(workdir)], name="nginx", port=port)
    proc.wait_http_ready("/health", timeout=30)
    return proc


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 latency (ms) and error counts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise ValueError(f"could not parse wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in socket.groups()) if socket else 0,
    }


def run_wrk(url: str, *, duration_s: int, connections: int, threads: int, workdir: Path) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{REQUEST_BODY}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url + "/v1/completions"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return parse_wrk(out.stdout)


def measure(
    routers: Sequence[RouterUnderTest], *, duration_s: int, connections: int, threads: int
) -> list[dict[str, Any]]:
    ensure_tools()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="atom-bench-nginx-") as tmp:
        workdir = Path(tmp)
        nginx = start_nginx(workdir)
        try:
            rows.append({"target": "direct (nginx)", **run_wrk(nginx.url, duration_s=duration_s, connections=connections, threads=threads, workdir=workdir)})
            for router in routers:
                reason = router.unavailable_reason()
                if reason:
                    rows.append({"target": router.label, "skipped": reason})
                    continue
                proc = router.start(StaticUpstreams([nginx.url]))
                try:
                    wrk = run_wrk(proc.url, duration_s=duration_s, connections=connections, threads=threads, workdir=workdir)
                finally:
                    proc.stop(grace=5.0)
                rows.append({"target": router.label, **wrk})
        finally:
            nginx.stop(grace=5.0)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["target"] == BASELINE and "rps" in r), None)
    direct = next((r for r in rows if r["target"].startswith("direct") and "rps" in r), None)
    header = f"{'target':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  {'req/s vs direct':>16}  vs {BASELINE}: req/s, p50, p99"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "rps" not in r:
            lines.append(f"{r['target']:<28} skipped: {r['skipped']}")
            continue
        vs_direct = f"{r['rps'] / direct['rps']:.2f}x" if direct else "-"
        vs_base = (
            f"{r['rps'] / base['rps']:.2f}x, {r['p50_ms'] / base['p50_ms']:.2f}x, {r['p99_ms'] / base['p99_ms']:.2f}x" if base else "-"
        )
        errors = r["non_2xx"] + r["socket_errors"]
        lines.append(f"{r['target']:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{errors:>8}  {vs_direct:>16}  {vs_base}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--routers", nargs="*", default=list(DEFAULT_ROUTERS), help="KIND:POLICY entries.")
    p.add_argument("--duration", type=int, default=10, help="Seconds of load per target.")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (the machine's cores are shared with the router).")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    try:
        routers = [parse_router(r) for r in args.routers]
    except ValueError as exc:
        raise SystemExit(f"router_overhead: {exc}")
    rows = measure(routers, duration_s=args.duration, connections=args.connections, threads=args.threads)
    print(format_rows(rows))
    result = {"meta": {**machine_info(), "duration_s": args.duration, "connections": args.connections, "threads": args.threads}, "rows": rows}
    print(f"results: {write_json(result, args.out_dir, 'overhead-' + time.strftime('%Y%m%d-%H%M%S', time.gmtime()))}")


if __name__ == "__main__":
    main()
