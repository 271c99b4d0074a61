"""Shared test support: pytest-only helpers and the harnesses several test packages use.

Launchers (free ports, managed processes, the tiny model, vLLM/SGLang engines, router and
simulator processes) live in the top-level `testbed` package, which benchmarks and the
demo use too. Here: `shared_engine` (an engine several tests share), `recording_upstream`
(scripted upstreams), `inprocess_router` (the router app on a loopback port),
`fault_harness` (router process + outcome-classifying client), `engine_cases` (greedy
OpenAI SDK cases), `pd_client` (completions and the two P/D legs over aiohttp),
`completions` (greedy completions over httpx), `sglang_venv` (snippets in the SGLang venv),
`fake_kube_api` (a pods-only Kubernetes API server for the real client library),
and the test-only shims engines load by path (`sglang_shims/`, `vllm_mooncake_cpu/`).
Keep one copy of each helper here.
"""
