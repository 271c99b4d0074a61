"""The router as a real process: TLS, the separate metrics listener, clean shutdown."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from tests.support.tls import self_signed_cert


def _get(url: str, **kwargs) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5, **kwargs) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_tls_metrics_listener_and_clean_sigterm(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "router", "--host", "127.0.0.1", "--port", str(port),
           "--tls-cert-path", str(cert), "--tls-key-path", str(key), "--prometheus-port", str(metrics_port)]
    proc = ManagedProcess(cmd, name="router-tls", port=port)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(600):
            try:
                if _get(f"https://127.0.0.1:{port}/health", context=ctx)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert proc.poll() is None, proc.log_tail()
            time.sleep(0.1)
        status, body = _get(f"https://127.0.0.1:{port}/readiness", context=ctx)
        assert status == 503 and "not ready" in body  # no workers configured
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "atom_mesh_admission" in text
    finally:
        proc.stop()
    # SIGTERM stops both listeners after the (here empty) drain, and the router exits 0.
    assert proc.poll() == 0, proc.log_tail()
    assert "Traceback" not in proc.log_text(), proc.log_tail()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "router", "--port", str(free_port()), "--tls-cert-path", str(tmp_path / "c.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--tls-key-path" in out.stdout + out.stderr


def test_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    """The real entry point: a bad --config-file entry is one line on stderr, no traceback."""
    config = tmp_path / "workers.json"
    config.write_text('{"workers": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2", "bootstrap_port": "x"}]}')
    out = subprocess.run(
        [sys.executable, "-m", "router", "--port", str(free_port()), "--config-file", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"atom-router: error: --config-file {config}: workers[1]: field 'bootstrap_port' must be an integer or null"
    )
