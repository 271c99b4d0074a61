"""atom-mesh test suite (a package so `tests.support` imports the same way everywhere)."""
