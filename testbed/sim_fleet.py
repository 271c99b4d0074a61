"""Start a simulated engine fleet (`python -m engine_sim`) as a real process on free ports.

The fleet writes its description (worker URLs, roles, protocols, bootstrap ports, KV
event endpoints) to `--fleet-file` once every worker listens; `start_fleet` returns when
that file is there, so callers can point a router at the workers at once. The admin API
(`/sim/stats`, `/sim/workers/{i}/faults`) is on its own port.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.ports import free_port
from testbed.processes import EngineStartError, ManagedProcess


@dataclass
class SimFleet:
    """A running simulated fleet: its process, admin URL and worker descriptions."""

    proc: ManagedProcess
    admin_url: str
    workers: list[dict[str, Any]]

    def urls(self, role: str = "regular") -> list[str]:
        return [w["url"] for w in self.workers if w["role"] == role]

    def prefill_endpoints(self) -> list[tuple[str, int | None]]:
        """(url, bootstrap port) of each prefill worker, as a router's `--prefill` takes them."""
        return [(w["url"], w["bootstrap_port"]) for w in self.workers if w["role"] == "prefill"]

    @property
    def pd_protocol(self) -> str | None:
        """The P/D protocol its prefill/decode workers speak; None for a co-located fleet."""
        return next((w["protocol"] for w in self.workers if w["role"] != "regular"), None)

    def index(self, url: str) -> int:
        return next(w["index"] for w in self.workers if w["url"] == url)

    def set_faults(self, index: int, **knobs: Any) -> None:
        """Change worker `index`'s fault knobs (the `FaultConfig` fields) at run time."""
        self._admin("POST", f"/sim/workers/{index}/faults", knobs)

    def clear_faults(self) -> None:
        for w in self.workers:
            self.set_faults(
                w["index"],
                error_rate=0.0,
                hang_rate=0.0,
                spike_rate=0.0,
                die_after_tokens=None,
                unhealthy=False,
                listening=True,
                paused=False,
            )

    def stats(self) -> dict[str, Any]:
        """Fleet totals and per-worker counters (`GET /sim/stats`)."""
        return self._admin("GET", "/sim/stats")

    def stop(self) -> None:
        self.proc.stop(grace=5.0)

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        """One admin call; an error status raises `urllib.error.HTTPError`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)


def start_fleet(fleet_dir: Path, *sim_args: str, timeout: float = 60.0) -> SimFleet:
    """Start a fleet (`sim_args` are engine_sim flags, e.g. "--regular", "2") and read its
    description, which is written into `fleet_dir`. Raises `EngineStartError` (with the
    fleet's log tail) if it exits or is not ready within `timeout` seconds."""
    admin_port = free_port()
    fleet_file = Path(fleet_dir) / f"fleet-{admin_port}.json"
    cmd = [sys.executable, "-m", "engine_sim", "--admin-port", str(admin_port), "--fleet-file", str(fleet_file), *sim_args]
    deadline = time.monotonic() + timeout
    proc = ManagedProcess(cmd, name="engine-sim", port=admin_port)
    try:
        proc.wait_http_ready("/health", timeout=timeout)
        # The admin API answers a moment before the file is written (os.replace: whole or absent).
        while not fleet_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EngineStartError(f"engine_sim never wrote {fleet_file}.\nlog {proc.log_path} (tail):\n{proc.log_tail()}")
            time.sleep(0.05)
        description = json.loads(fleet_file.read_text())
    except BaseException:
        proc.stop()
        raise
    return SimFleet(proc, description["admin_url"], description["workers"])
