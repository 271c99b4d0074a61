"""`make demo`: one real prefill/decode-disaggregated request, end to end, on this machine.

Starts two real vLLM CPU engines on a tiny offline model (prefill and decode, the prompt's
KV pushed from one to the other by the project's `AtomKVConnector` over Mooncake TCP, or
written through files by vLLM's in-tree `ExampleConnector` with `--connector example`),
the atom-mesh router in front of them, sends one streaming chat request with the OpenAI
SDK, prints the answer, the workers the router used and how many prompt tokens the decode
engine took as KV from elsewhere, then stops everything (also on Ctrl-C).

It starts everything with `testbed`, the launchers the test suite uses too: one way to
start and stop engines, so the demo and the tests cannot drift apart.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.models import build_tiny_model  # noqa: E402
from testbed.ports import free_port  # noqa: E402
from testbed.processes import EngineStartError, ManagedProcess  # noqa: E402
from testbed.router_process import start_router  # noqa: E402
from testbed.vllm_engine import atom_kv_transfer_config, external_prefix_hits, start_vllm  # noqa: E402

SERVED_NAME = "atom-mesh-tiny-llama"
WORKER_HEADERS = ("x-atom-prefill-worker", "x-atom-decode-worker", "x-atom-worker")
# Connectors move whole KV blocks (128 tokens on CPU) of the prompt, so the prompt spans a
# few blocks: decode then loads most of its KV instead of recomputing it.
PROMPT = " ".join(
    [
        "The router sends the prefill request to one worker and the decode request to another.",
        "Prefill computes the key value cache for the whole prompt in one forward pass.",
        "Decode reads the transferred cache and generates one token at a time.",
    ]
    * 8
    + ["Tell me a story about a robot that learned to route requests fairly."]
)


def _example_connector(kv_dir: Path) -> dict:
    return {
        "kv_connector": "ExampleConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"shared_storage_path": str(kv_dir)},
    }


def _external_kv_tokens(engine: ManagedProcess) -> int:
    """Prompt tokens whose KV the engine took from a connector (vLLM's own counter)."""
    import httpx

    return int(external_prefix_hits(httpx.get(f"{engine.url}/metrics", timeout=10).text))


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _ask(router: ManagedProcess, max_tokens: int) -> dict[str, str]:
    """Stream one chat completion through the router; print it; return the worker headers."""
    from openai import OpenAI

    client = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    with client.chat.completions.with_streaming_response.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    ) as response:
        headers = {h: response.headers.get(h, "") for h in WORKER_HEADERS}
        print("[demo] answer (random weights, so expect gibberish): ", end="", flush=True)
        chunks = 0
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
                chunks += 1
        print(flush=True)
    if chunks == 0:
        raise RuntimeError("the router's stream carried no content; see the router and engine logs")
    return headers


def run(max_tokens: int, connector: str) -> None:
    started: list[ManagedProcess] = []
    kv_dir: Path | None = None
    try:
        _say("building the tiny offline model (cached after the first run)")
        model = build_tiny_model("llama")
        if connector == "atom":
            configs = [atom_kv_transfer_config(role, free_port()) for role in ("kv_producer", "kv_consumer")]
            how = "AtomKVConnector, Mooncake TCP on loopback"
        else:
            # A fresh directory per run: ExampleConnector keys files by prompt tokens only, so
            # files left by another run or model could otherwise be loaded as this run's KV.
            kv_dir = Path(tempfile.mkdtemp(prefix=f"atom-mesh-demo-kv-{model.name}-"))
            configs = [_example_connector(kv_dir)] * 2
            how = f"vLLM's ExampleConnector, files in {kv_dir}"
        _say(f"starting vLLM prefill and decode engines (KV: {how}); this takes a minute or two")
        t0 = time.monotonic()
        for role, kv_config in zip(("prefill", "decode"), configs, strict=True):
            started.append(
                start_vllm(
                    model,
                    kv_transfer_config=kv_config,
                    extra_args=["--served-model-name", SERVED_NAME],
                    wait=False,
                    name=f"demo-{role}",
                )
            )
        for proc in started:
            proc.wait_http_ready("/health")
        prefill, decode = started
        _say(f"engines ready in {time.monotonic() - t0:.0f}s: prefill {prefill.url}, decode {decode.url}")

        router = start_router(
            "--pd-disaggregation", "--backend", "vllm", "--prefill", prefill.url, "--decode", decode.url,
            "--always-pair",  # the demo shows a KV handover; short prompts would otherwise go decode-only
            name="demo-router",
        )
        started.append(router)
        _say(f"router ready at {router.url}; sending one streaming chat request")
        headers = _ask(router, max_tokens)
        served_by = {name: value for name, value in headers.items() if value}
        for name, value in served_by.items():
            _say(f"{name}: {value}")
        if not served_by:
            _say(f"the router set none of {', '.join(WORKER_HEADERS)}: which workers served is unknown")
        _say(f"KV handed over: the decode engine took {_external_kv_tokens(decode)} prompt tokens' KV from prefill")
    except EngineStartError as err:
        _say(f"a server failed to start:\n{err}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        _say("interrupted")
        raise SystemExit(130) from None
    finally:
        for proc in reversed(started):
            proc.stop()
        if started:
            _say(f"stopped {len(started)} process(es); logs: {', '.join(str(p.log_path) for p in started)}")
        if kv_dir is not None:
            shutil.rmtree(kv_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=24, help="Tokens to generate (default 24).")
    parser.add_argument(
        "--connector",
        choices=("atom", "example"),
        default="atom",
        help="KV connector between the engines: atom (AtomKVConnector over Mooncake TCP, default) "
        "or example (vLLM's in-tree ExampleConnector, KV through files).",
    )
    args = parser.parse_args()
    run(args.max_tokens, args.connector)


if __name__ == "__main__":
    main()
