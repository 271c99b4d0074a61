"""Which implementation each op uses: AITER on ROCm when it is importable, torch otherwise.

The decision is pure (`choose_backends`) so it is unit-tested without a GPU; `resolve`
makes it once per process from the environment and logs it, because a kernel choice
that silently differs between prefill and decode workers is a debugging nightmare.

Override with `ATOM_MESH_OPS`: a comma-separated list where a bare word sets the default
for every op and `op=backend` sets one op, e.g. `torch`, `aiter`, or
`auto,fused_moe=torch`. Backends: `auto` (AITER if available, else torch), `torch`,
`aiter` (required: an error if AITER cannot be used, rather than a quiet fallback).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger("atom_mesh.models.ops")

ENV_VAR = "ATOM_MESH_OPS"
BACKENDS = ("auto", "torch", "aiter")


class OpSelectionError(ValueError):
    """`ATOM_MESH_OPS` is malformed or asks for a backend this machine cannot run."""


@dataclass(frozen=True)
class OpSpec:
    """Parsed `ATOM_MESH_OPS`: the default backend and per-op overrides."""

    default: str = "auto"
    per_op: tuple[tuple[str, str], ...] = ()

    def backend_for(self, op: str) -> str:
        return dict(self.per_op).get(op, self.default)


def parse_spec(text: str | None, known_ops: Iterable[str]) -> OpSpec:
    """Parse the env value; unknown ops or backends are errors that name the valid ones."""
    known = set(known_ops)
    default = "auto"
    per_op: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        op, sep, backend = item.partition("=")
        if not sep:
            op, backend = "", op
        op, backend = op.strip(), backend.strip().lower()
        if backend not in BACKENDS:
            raise OpSelectionError(
                f"{ENV_VAR}: unknown backend {backend!r} in {item!r}; use one of {', '.join(BACKENDS)}"
            )
        if not op:
            default = backend
        elif op not in known:
            raise OpSelectionError(
                f"{ENV_VAR}: unknown op {op!r} in {item!r}; known ops: {', '.join(sorted(known))}"
            )
        else:
            per_op[op] = backend
    return OpSpec(default=default, per_op=tuple(sorted(per_op.items())))


def choose_backends(spec: OpSpec, ops: Iterable[str], aiter_available: bool, why_not: str = "") -> dict[str, str]:
    """Map each op to `torch` or `aiter` (pure)."""
    chosen = {}
    for op in ops:
        want = spec.backend_for(op)
        if want == "aiter" and not aiter_available:
            raise OpSelectionError(
                f"{ENV_VAR} asks for AITER for op {op!r}, but AITER cannot be used here ({why_not}); "
                f"unset {ENV_VAR} or set it to 'torch'"
            )
        chosen[op] = "aiter" if want == "aiter" or (want == "auto" and aiter_available) else "torch"
    return chosen


def aiter_status() -> tuple[bool, str]:
    """(usable, reason): AITER needs a ROCm torch with a visible device and the package."""
    import torch

    if getattr(torch.version, "hip", None) is None:
        return False, "torch is not a ROCm build"
    if not torch.cuda.is_available():
        return False, "no ROCm device is visible"
    if importlib.util.find_spec("aiter") is None:
        return False, "the 'aiter' package is not installed"
    return True, "ROCm device and aiter present"


_resolved: dict[str, str] | None = None


def resolve(ops: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The per-process choice, made on first call and logged once."""
    global _resolved
    if _resolved is None:
        ops = tuple(ops)
        env = os.environ if env is None else env
        spec = parse_spec(env.get(ENV_VAR), ops)
        available, reason = aiter_status()
        _resolved = choose_backends(spec, ops, available, reason)
        logger.info(
            "atom ops: %s (AITER: %s; override with %s)",
            ", ".join(f"{op}={b}" for op, b in _resolved.items()),
            reason,
            ENV_VAR,
        )
    return _resolved
