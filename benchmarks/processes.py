"""The processes a benchmark run starts: a fresh simulated fleet and the router under test.

Process lifetime (own process group, log file, cleanup on exit and signals) and the
fleet launcher are `testbed`'s, shared with the tests and the demo.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.workloads import vocabulary
from engine_sim.tokenizer import tokenizer_json
from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.sim_fleet import start_fleet


class Upstreams(Protocol):
    """The workers a router is pointed at (a simulated fleet, or a plain backend like nginx)."""

    pd_protocol: str | None

    def urls(self, role: str) -> list[str]: ...

    def prefill_endpoints(self) -> list[tuple[str, int | None]]: ...


@dataclass
class StaticUpstreams:
    """Workers at fixed URLs: co-located (`regular`), or with `pd_protocol` prefill and decode ones."""

    regular: list[str] = field(default_factory=list)
    pd_protocol: str | None = None
    prefill: list[str] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)

    def urls(self, role: str) -> list[str]:
        return list({"regular": self.regular, "prefill": self.prefill, "decode": self.decode}.get(role, []))

    def prefill_endpoints(self) -> list[tuple[str, int | None]]:
        return [(url, None) for url in self.prefill]


class SimFleetProcess:
    """A fresh simulated fleet for one run: `num_workers` regular workers, or with
    `pd_protocol` half prefill and half decode (the launcher is `testbed.sim_fleet`)."""

    def __init__(
        self, num_workers: int, sim_args: list[str], *, pd_protocol: str | None = None, startup_timeout: float = 60.0
    ) -> None:
        if pd_protocol is None:
            shape = ["--regular", str(num_workers)]
        else:
            prefill = max(1, num_workers // 2)
            shape = ["--prefill", str(prefill), "--decode", str(max(1, num_workers - prefill)), "--protocol", pd_protocol]
        self._dir = tempfile.TemporaryDirectory(prefix="atom-bench-fleet-")
        try:
            self.fleet = start_fleet(Path(self._dir.name), *shape, *sim_args, timeout=startup_timeout)
        except BaseException:
            self._dir.cleanup()
            raise
        self.pd_protocol = pd_protocol

    def urls(self, role: str) -> list[str]:
        return self.fleet.urls(role)

    def prefill_endpoints(self) -> list[tuple[str, int | None]]:
        return self.fleet.prefill_endpoints()

    def stats(self) -> dict[str, Any]:
        return self.fleet.stats()

    def stop(self) -> None:
        self.fleet.stop()
        self._dir.cleanup()


@dataclass(frozen=True)
class RouterUnderTest:
    """One router configuration: which implementation and which policy."""

    kind: str  # "atom" | "smg" | "sglang-router" | "vllm-router"
    policy: str
    # More flags for our router (e.g. --always-pair); the Rust peers take none.
    extra_args: tuple[str, ...] = ()
    # Give our router the simulator's tokenizer: exact prompt token counts (the P/D decider's input).
    tokenize: bool = False
    # Our router from another checkout (its root goes first on PYTHONPATH), to compare two
    # builds in one run: `atom@/path/to/checkout:POLICY`. None: the router this Python imports.
    source: Path | None = None

    @property
    def label(self) -> str:
        if self.source is not None:
            return f"{self.kind}@{self.source.name}:{self.policy}"
        return f"{self.kind}:{self.policy}"

    def unavailable_reason(self, pd_protocol: str | None = None) -> str | None:
        """Why this router cannot run here, or cannot speak `pd_protocol` (None when it can)."""
        if self.kind == "atom":
            if self.source is not None:
                return None if (self.source / "router" / "__main__.py").exists() else f"{self.source} has no router package"
            return None if importlib.util.find_spec("router") else "the atom-mesh router package is not importable"
        if self.kind in _SGLANG_GATEWAY_MODULES:
            if importlib.util.find_spec(_SGLANG_GATEWAY_MODULES[self.kind].partition(".")[0]) is None:
                return f"{self.kind} is not installed (pip install -e .[bench])"
            if pd_protocol not in (None, "sglang"):
                return f"{self.kind} does not speak the {pd_protocol} P/D protocol"
            return None
        if self.kind == "vllm-router":
            if not _vllm_router_binary():
                return "vllm-router is not installed (pip install -e .[bench])"
            if pd_protocol not in (None, "vllm", "vllm-mooncake"):
                return f"vllm-router does not speak the {pd_protocol} P/D protocol"
            return None
        return f"unknown router kind {self.kind!r}"

    @property
    def native_pd_protocol(self) -> str:
        """The P/D protocol this router speaks to workers that accept any (benchmark backends):
        our router and vllm-router the sequential vLLM one, the SGLang gateways their own."""
        return "sglang" if self.kind in _SGLANG_GATEWAY_MODULES else "vllm"

    @property
    def reads_kv_events(self) -> bool:
        """Our kv_aware policy: the fleet must publish KV events (`--kv-events`)."""
        return self.kind == "atom" and self.policy == "kv_aware"

    def command(self, port: int, fleet: Upstreams, prometheus_port: int) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(port), "--policy", self.policy]
        common += self._worker_flags(fleet)
        if self.kind == "atom":
            # kv_aware matches the engines' blocks by token ids: tokenize as the simulator does.
            tokenizer = ["--tokenizer-path", str(_sim_tokenizer_file())] if self.reads_kv_events or self.tokenize else []
            return [sys.executable, "-m", "router", *common, *tokenizer, *self.extra_args, "--log-level", "warning"]
        # Each Rust router gets its own metrics port: the default 29000 clashes between them.
        prom = ["--prometheus-port", str(prometheus_port), "--prometheus-host", "127.0.0.1"]
        if self.kind in _SGLANG_GATEWAY_MODULES:
            return [sys.executable, "-m", _SGLANG_GATEWAY_MODULES[self.kind], *common, *prom, "--log-level", "warn"]
        return [_vllm_router_binary() or "vllm-router", *common, *prom, "--log-level", "warning"]

    def _worker_flags(self, fleet: Upstreams) -> list[str]:
        protocol = fleet.pd_protocol
        if protocol is None:
            return ["--worker-urls", *fleet.urls("regular")]
        flags = {
            "atom": ["--pd-disaggregation", "--backend", protocol],
            "sglang-router": ["--pd-disaggregation"],
            "smg": ["--pd-disaggregation"],
            "vllm-router": ["--vllm-pd-disaggregation"] + (["--kv-connector", "mooncake"] if protocol == "vllm-mooncake" else []),
        }[self.kind]
        for url, bootstrap in fleet.prefill_endpoints():
            flags += ["--prefill", url] + ([str(bootstrap)] if bootstrap else [])
        for url in fleet.urls("decode"):
            flags += ["--decode", url]
        return flags

    def start(self, fleet: Upstreams, *, startup_timeout: float = 60.0) -> ManagedProcess:
        port = free_port()
        # `python -m` puts the working directory first on sys.path: run another checkout from its root.
        env = {"PYTHONPATH": str(self.source)} if self.source is not None else None
        name = self.label.replace(":", "-").replace("@", "-")
        proc = ManagedProcess(self.command(port, fleet, free_port()), name=name, port=port, env=env, cwd=self.source)
        try:
            proc.wait_http_ready("/health", timeout=startup_timeout)
        except BaseException:
            proc.stop(grace=5.0)
            raise
        return proc


# The SGLang Model Gateway, as `smg` (its current name) and as the older `sglang-router`: the same
# flags, each launched by its Python package's module.
_SGLANG_GATEWAY_MODULES = {"smg": "smg.launch_router", "sglang-router": "sglang_router.launch_router"}


@functools.cache
def _sim_tokenizer_file() -> Path:
    """A tokenizer.json equivalent to the simulator's tokenizer over the workloads' words
    (written once per run; the directory goes when the process exits)."""
    directory = tempfile.TemporaryDirectory(prefix="atom-mesh-sim-tokenizer-")
    _keep.append(directory)
    path = Path(directory.name) / "tokenizer.json"
    path.write_text(json.dumps(tokenizer_json(vocabulary())))
    return path


_keep: list[tempfile.TemporaryDirectory[str]] = []


def _vllm_router_binary() -> str | None:
    beside = Path(sys.executable).with_name("vllm-router")
    return str(beside) if beside.exists() else shutil.which("vllm-router")


def parse_router(text: str) -> RouterUnderTest:
    """`kind:policy`, e.g. `atom:cache_aware` or `sglang-router:round_robin`; our router from
    another checkout as `atom@/path/to/checkout:policy`."""
    kind, sep, policy = text.rpartition(":")
    if not sep or not policy or not kind:
        raise ValueError(f"router {text!r}: expected KIND:POLICY, e.g. atom:cache_aware")
    kind, at, source = kind.partition("@")
    if at and kind != "atom":
        raise ValueError(f"router {text!r}: only our router (atom@PATH:POLICY) runs from another checkout")
    return RouterUnderTest(kind, policy, source=Path(source).resolve() if at else None)
