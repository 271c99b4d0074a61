"""Start real engines, routers and simulators on free ports for tests, benchmarks and the demo.

One copy of each launcher, so the test suite, `benchmarks/` and `scripts/demo.py` start
and stop processes the same way: `ports` (free TCP ports), `processes` (`ManagedProcess`:
own process group, log file, nothing left behind), `models` (the tiny offline model),
`vllm_engine`, `sglang_engine`, `router_process` and `sim_fleet`.

Not shipped in the wheel (like `benchmarks/`): it runs from a checkout and points engines
at the test-only shims under `tests/support/` by path.
"""

from pathlib import Path

# The checkout this package runs from (the model cache, the SGLang venv and the shims live here).
REPO_ROOT = Path(__file__).resolve().parents[1]
