"""The op layer's backend choice (pure) and its environment override."""

from __future__ import annotations

import pytest
from atom_models import ops
from atom_models.ops.selection import OpSelectionError, OpSpec, aiter_status, choose_backends, parse_spec

OPS = ops.OPS


def test_default_is_auto_for_every_op() -> None:
    assert parse_spec(None, OPS) == OpSpec()
    assert parse_spec("", OPS) == OpSpec()


def test_bare_word_sets_default_and_pairs_override_ops() -> None:
    spec = parse_spec("torch, fused_moe=aiter", OPS)
    assert spec.backend_for("rms_norm") == "torch"
    assert spec.backend_for("fused_moe") == "aiter"


@pytest.mark.parametrize(
    ("text", "needle"),
    [("cuda", "unknown backend 'cuda'"), ("rmsnorm=torch", "unknown op 'rmsnorm'"), ("linear=", "unknown backend ''")],
)
def test_bad_spec_names_the_valid_choices(text: str, needle: str) -> None:
    with pytest.raises(OpSelectionError, match=needle):
        parse_spec(text, OPS)


def test_auto_picks_aiter_only_where_available() -> None:
    assert set(choose_backends(OpSpec(), OPS, aiter_available=True).values()) == {"aiter"}
    assert set(choose_backends(OpSpec(), OPS, aiter_available=False).values()) == {"torch"}


def test_torch_override_wins_over_available_aiter() -> None:
    chosen = choose_backends(parse_spec("auto,linear=torch", OPS), OPS, aiter_available=True)
    assert chosen["linear"] == "torch" and chosen["rms_norm"] == "aiter"


def test_required_aiter_without_aiter_is_an_error_not_a_fallback() -> None:
    with pytest.raises(OpSelectionError, match="no ROCm"):
        choose_backends(parse_spec("aiter", OPS), OPS, aiter_available=False, why_not="no ROCm device is visible")


def test_this_machine_resolves_to_torch() -> None:
    """No ROCm here: every op must bind to the torch implementation."""
    usable, reason = aiter_status()
    assert not usable and reason
    assert set(ops.backends().values()) == {"torch"}
    assert ops.get("rms_norm").__module__ == "atom_models.ops.torch_ops"


def test_unknown_op_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="known"):
        ops.get("softmax")
