# The two commands of the README. Both set themselves up first (idempotent, fast on re-runs).
PY := .venv/bin/python

.PHONY: setup setup-sglang demo test test-fast clean

setup:
	@bash scripts/setup.sh

# SGLang lives in its own venv (.venv-sglang); only the test suite needs it.
# ATOM_MESH_SKIP_SGLANG=1 skips it (the SGLang tests then report themselves skipped).
setup-sglang:
	@bash scripts/setup_sglang.sh

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: setup setup-sglang
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not engine and not slow" $(PYTEST_ARGS)

clean:
	rm -rf .venv .venv-sglang build *.egg-info .pytest_cache
