"""SGLang P/D on CPU with `--disaggregation-transfer-backend atom`: real servers, real
Mooncake TCP transfer through the kv_connector core, real routers.

The reference answers are a co-located SGLang server's, recorded by
`record_pd_references.py` (`data/pd_references.json`) for this SGLang version and model
build, so this module starts no reference server; one prefill + decode pair serves every
test of this module (engines are expensive on 2 cores). The prefill-failure test runs
last: it kills the prefill and restarts it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.sglang_engine import SGLANG_PYTHON, sglang_available, sglang_env, sglang_version, start_sglang
from tests.sglang.record_pd_references import OUT, PROMPTS
from tests.support.completions import Generation, assert_same_generation, complete

pytestmark = [pytest.mark.engine, pytest.mark.slow]

RERECORD = "re-record: flock /tmp/atom-heavy.lock timeout 900 .venv/bin/python -m tests.sglang.record_pd_references"


@pytest.fixture(scope="module", autouse=True)
def _needs_sglang() -> None:
    reason = sglang_available()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def model_name(tiny_llama: Path) -> str:
    return str(tiny_llama)  # SGLang serves the model under its path


@pytest.fixture(scope="module")
def reference(tiny_llama: Path) -> dict[tuple[str, bool], Generation]:
    """Greedy answers of a co-located SGLang server per (prompt name, stream), recorded by
    `record_pd_references.py` for this SGLang version, model build and these prompts."""
    data = json.loads(OUT.read_text())
    here = (sglang_version(), tiny_llama.name)
    if (data["sglang"], data["model"]) != here:
        pytest.fail(f"{OUT.name} was recorded with SGLang {data['sglang']} for {data['model']}, not {here}; {RERECORD}")
    answers = {(a["name"], a["stream"]): a for a in data["answers"]}
    wanted = {(name, stream): prompt for name, prompt in PROMPTS.items() for stream in (False, True)}
    if {key: a["prompt"] for key, a in answers.items()} != wanted:
        pytest.fail(f"{OUT.name} was recorded for other prompts; {RERECORD}")
    return {key: Generation(tuple(a["token_ids"]), tuple(a["logprobs"]), a["text"]) for key, a in answers.items()}


@dataclass
class PDPair:
    prefill: ManagedProcess
    decode: ManagedProcess
    bootstrap_port: int
    tamper_flag: Path
    model_dir: Path


def _start_prefill(model_dir: Path, *, port: int | None, bootstrap_port: int, tamper_flag: Path, wait: bool) -> ManagedProcess:
    return start_sglang(
        model_dir,
        mode="prefill",
        bootstrap_port=bootstrap_port,
        port=port,
        env={"ATOM_MESH_TEST_TAMPER_KV_FLAG": str(tamper_flag)},
        wait=wait,
        name="sglang-prefill",
    )


@pytest.fixture(scope="module")
def pd_pair(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PDPair]:
    tamper_flag = tmp_path_factory.mktemp("tamper") / "corrupt-kv"
    bootstrap_port = free_port()
    prefill = _start_prefill(tiny_llama, port=None, bootstrap_port=bootstrap_port, tamper_flag=tamper_flag, wait=False)
    decode = start_sglang(tiny_llama, mode="decode", wait=False, name="sglang-decode")
    pair = PDPair(prefill, decode, bootstrap_port, tamper_flag, tiny_llama)
    try:
        prefill.wait_http_ready(timeout=900)
        decode.wait_http_ready(timeout=900)
        yield pair
    finally:
        pair.prefill.stop()
        pair.decode.stop()


def _atom_router(pair: PDPair) -> ManagedProcess:
    router = start_router(
        "--backend", "sglang", "--pd-disaggregation",
        "--prefill", pair.prefill.url, str(pair.bootstrap_port),
        "--decode", pair.decode.url,
        "--request-timeout-secs", "120",
        "--worker-startup-check-interval", "1",
    )  # fmt: skip
    try:
        router.wait_http_ready("/readiness", timeout=120)
    except BaseException:
        router.stop()
        raise
    return router


@pytest.fixture(scope="module")
def atom_router(pd_pair: PDPair) -> Iterator[ManagedProcess]:
    with _atom_router(pd_pair) as router:
        yield router


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_pd_through_atom_router_equals_colocated(
    atom_router: ManagedProcess, model_name: str, reference: dict, stream: bool
) -> None:
    for name, prompt in PROMPTS.items():
        got = complete(atom_router.url, model_name, prompt, stream=stream)
        assert_same_generation(got, reference[(name, stream)], f"{name} prompt via atom-router")


def test_tampered_kv_changes_decode_output(
    atom_router: ManagedProcess, pd_pair: PDPair, model_name: str, reference: dict
) -> None:
    """Decode's answer depends on the bytes the transfer moved: corrupt them, the answer changes."""
    want = reference[("long", False)]
    pd_pair.tamper_flag.touch()
    try:
        tampered = complete(atom_router.url, model_name, PROMPTS["long"])
    finally:
        pd_pair.tamper_flag.unlink()
    # And with honest transfers again, the same pair answers like co-located.
    honest = complete(atom_router.url, model_name, PROMPTS["long"])
    assert_same_generation(honest, want, "after tampering stopped")
    # The first token is sampled on the prefill (untouched); every later one reads decode's
    # KV. Compared with the honest answer of this machine, not the recording (another
    # machine's logprobs differ by more than this).
    assert tampered.token_ids[0] == honest.token_ids[0]
    assert tampered.logprobs[1:] != pytest.approx(honest.logprobs[1:], abs=1e-3)


def test_sglang_router_drop_in(pd_pair: PDPair, model_name: str, reference: dict) -> None:
    """SGLang's own router drives the same servers unchanged (drop-in compatibility)."""
    port = free_port()
    cmd = [
        str(SGLANG_PYTHON), "-m", "sglang_router.launch_router",
        "--pd-disaggregation",
        "--prefill", pd_pair.prefill.url, str(pd_pair.bootstrap_port),
        "--decode", pd_pair.decode.url,
        "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    with ManagedProcess(cmd, name="sglang-router", port=port, env=sglang_env()) as router:
        router.wait_http_ready("/readiness", timeout=180)
        for name, prompt in PROMPTS.items():
            for stream in (False, True):
                got = complete(router.url, model_name, prompt, stream=stream)
                assert_same_generation(got, reference[(name, stream)], f"{name} prompt via sglang-router")


def _wait_until_in_flight(router_url: str, timeout: float = 120) -> None:
    """Block until the router reports a request in flight (it has dispatched the legs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(f"{router_url}/metrics", timeout=10).text.splitlines():
            if line.startswith("atom_mesh_worker_in_flight_requests{") and float(line.rsplit(" ", 1)[1]) > 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the router never reported the request in flight within {timeout:.0f}s")


def test_prefill_killed_mid_request(pd_pair: PDPair, model_name: str, reference: dict) -> None:
    """The client gets a clear error in time; decode survives and serves a new prefill."""
    pgid = pd_pair.prefill.pgid
    result: dict[str, object] = {}

    def client() -> None:
        body = {"model": model_name, "prompt": PROMPTS["medium"], "max_tokens": 8, "temperature": 0}
        started = time.monotonic()
        try:
            resp = httpx.post(f"{router.url}/v1/completions", json=body, timeout=180)
            result["status"], result["body"] = resp.status_code, resp.json()
        except httpx.HTTPError as e:
            result["exception"] = repr(e)
        result["seconds"] = time.monotonic() - started

    with _atom_router(pd_pair) as router:
        os.killpg(pgid, signal.SIGSTOP)  # freeze the prefill so the request is surely in flight on it
        thread = threading.Thread(target=client)
        thread.start()
        _wait_until_in_flight(router.url)
        pd_pair.prefill.stop(grace=0)
        thread.join(timeout=240)
        assert not thread.is_alive(), "the client got no answer at all after the prefill died"
    print(f"prefill death -> client error in {result['seconds']:.1f} s: {result.get('status')} {result.get('body')}")
    assert "exception" not in result, f"connection-level failure instead of an HTTP error: {result}"
    assert result["status"] >= 500
    assert result["body"]["error"]["message"]

    # Decode is alive and healthy, and serves as soon as a prefill is back.
    assert pd_pair.decode.poll() is None
    assert httpx.get(f"{pd_pair.decode.url}/health", timeout=30).status_code == 200
    pd_pair.prefill = _start_prefill(
        pd_pair.model_dir, port=pd_pair.prefill.port, bootstrap_port=pd_pair.bootstrap_port,
        tamper_flag=pd_pair.tamper_flag, wait=True,
    )  # fmt: skip
    with _atom_router(pd_pair) as router:
        got = complete(router.url, model_name, PROMPTS["medium"])
    assert_same_generation(got, reference[("medium", False)], "after the prefill restarted")
