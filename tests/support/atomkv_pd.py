"""The AtomKVConnector P/D engines (real vLLM CPU, Mooncake TCP on loopback) that
`tests/kv_connector/test_vllm_pd.py` and `tests/router/test_engine_conditional_pd.py`
share: a producer and a consumer, plus a second producer that only the kill test uses
(and kills). The three start together (their start-ups overlap) and stop as one, so one
`SharedEngine` in tests/conftest.py (`atomkv_pd`) hands them out, and the modules using
them run one after the other. Both producers' KV pushes go through the test-only fault
wrapper (tests/support/kv_faults.py), which passes pushes through unless a test sets a
flag; each start gets fresh flag directories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.vllm_engine import atom_kv_transfer_config, start_vllm
from tests.support.kv_faults import KVFaults

TRANSFER_TIMEOUT_S = 90  # generous: the shared 2-core CI machine stalls transfers under load


def connector(role: str, port: int) -> dict[str, Any]:
    """The P/D tests' connector config: a generous transfer deadline, and producers that
    hold a request's KV for 240 s (decode legs that the tests make fail never pull it)."""
    return atom_kv_transfer_config(role, port, transfer_timeout_s=TRANSFER_TIMEOUT_S, hold_timeout_s=240)


def start_producer(model_dir: Path, faults: KVFaults, name: str, extra_args: Sequence[str] = ()) -> ManagedProcess:
    """A kv_producer engine whose KV pushes go through the fault wrapper (not ready yet)."""
    config = connector("kv_producer", free_port())
    return start_vllm(model_dir, kv_transfer_config=config, extra_args=extra_args, env=faults.engine_env(), wait=False, name=name)


@dataclass(frozen=True)
class AtomKVEngines:
    """The pair (`p`, `d`) and the doomed producer, with each producer's fault switches."""

    p: ManagedProcess
    d: ManagedProcess
    p_faults: KVFaults
    doomed: ManagedProcess
    doomed_faults: KVFaults

    def stop(self) -> None:
        for proc in (self.p, self.d, self.doomed):
            proc.stop()


def start_atomkv_engines(model_dir: Path, fault_dir: Callable[[str], Path]) -> AtomKVEngines:
    """Start the three engines together and wait until all serve; `fault_dir(name)` makes
    a fresh, empty flag directory (a restart must not see the last run's flags)."""
    p_faults, doomed_faults = KVFaults(fault_dir("p-faults")), KVFaults(fault_dir("doomed-faults"))
    procs: list[ManagedProcess] = []
    try:
        procs.append(start_producer(model_dir, p_faults, "atomkv-p"))
        procs.append(start_vllm(model_dir, kv_transfer_config=connector("kv_consumer", free_port()), wait=False, name="atomkv-d"))
        procs.append(start_producer(model_dir, doomed_faults, "atomkv-p-doomed"))
        for proc in procs:
            proc.wait_http_ready("/health", timeout=900)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return AtomKVEngines(procs[0], procs[1], p_faults, procs[2], doomed_faults)
