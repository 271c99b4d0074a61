# The two commands of the README. Both set themselves up (scripts/setup.sh) first.
PY := .venv/bin/python

.PHONY: setup demo test test-fast clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not engine and not slow" $(PYTEST_ARGS)

clean:
	rm -rf .venv build *.egg-info .pytest_cache
