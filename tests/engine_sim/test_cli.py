"""`python -m engine_sim` as a real process: flags, the fleet file, clean shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from testbed.ports import free_port
from testbed.processes import ManagedProcess


def test_cli_serves_a_pd_fleet_and_writes_its_description(tmp_path):
    admin = free_port()
    fleet_file = tmp_path / "fleet.json"
    cmd = [
        sys.executable, "-m", "engine_sim",
        "--regular", "1", "--prefill", "1", "--decode", "1", "--protocol", "sglang",
        "--admin-port", str(admin), "--fleet-file", str(fleet_file),
        "--time-scale", "0.1", "--worker-faults", '{"0": {"error_rate": 1.0}}',
    ]  # fmt: skip
    with ManagedProcess(cmd, name="engine-sim", port=admin) as proc:
        proc.wait_http_ready("/health", timeout=60)
        described = json.loads(fleet_file.read_text())
        roles = [w["role"] for w in described["workers"]]
        assert roles == ["regular", "prefill", "decode"]
        assert described["workers"][1]["bootstrap_port"] and described["workers"][2]["bootstrap_port"] is None
        assert "READY " in proc.log_text()
        with urllib.request.urlopen(f"{proc.url}/sim/workers/0/faults") as r:
            assert json.load(r)["error_rate"] == 1.0
        with urllib.request.urlopen(f"{described['workers'][1]['url']}/sim/faults") as r:
            assert json.load(r)["error_rate"] == 0.0
    assert proc.poll() is not None


def test_cli_rejects_bad_flags_with_a_reason():
    out = subprocess.run([sys.executable, "-m", "engine_sim"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no workers" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "engine_sim", "--regular", "1", "--error-rate", "3"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "error_rate" in out.stderr
