# The two commands of the README. Both set themselves up first (idempotent, fast on re-runs).
PY := .venv/bin/python

.PHONY: setup setup-sglang demo lint test test-fast clean

setup:
	@bash scripts/setup.sh

# SGLang lives in its own venv (.venv-sglang); only the test suite needs it.
# ATOM_MESH_SKIP_SGLANG=1 skips it (the SGLang tests then report themselves skipped).
setup-sglang:
	@bash scripts/setup_sglang.sh

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# The shipped packages: linted (ruff) and type-checked (mypy); findings fail the build.
SHIPPED := router kv_connector engine_sim plugins/vllm_atom plugins/sglang_atom plugins/atom_models

lint: setup
	.venv/bin/ruff check $(SHIPPED) benchmarks testbed scripts tests
	.venv/bin/mypy $(SHIPPED)

# --durations=30: every CI log ends with the 30 slowest tests, setups and teardowns (engine
# start-ups show as setups), so the log says where the suite's time went.
test: setup setup-sglang lint
	$(PY) -m pytest -q -rs --durations=30 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not engine and not slow" $(PYTEST_ARGS)

clean:
	rm -rf .venv .venv-sglang build *.egg-info .pytest_cache .mypy_cache .ruff_cache
