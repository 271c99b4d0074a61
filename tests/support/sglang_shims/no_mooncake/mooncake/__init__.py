"""Test-only: stands in for a machine where Mooncake is not installed."""

raise ImportError("No module named 'mooncake' (atom-mesh test shim: tests/support/sglang_shims/no_mooncake)")
