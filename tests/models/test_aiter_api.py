"""Every AITER call in `atom_models/ops/aiter_ops.py` exists in amd-aiter's source and binds to it.

AITER cannot be imported without ROCm, so the check reads the wheel (`pip download
--no-deps`, cached in `.cache/vendor-wheels/`) and never imports it. The list of calls
is derived from our module with `ast` (`tests.support.vendor_api`), so a new call is
checked without editing this file. amd-aiter's only release on PyPI is
0.1.7.post2.dev18; a ROCm image with a newer AITER build may differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.vendor_api import (
    Compiled,
    Opaque,
    ResolveError,
    SourceIndex,
    VendorWheel,
    check_call,
    vendor_uses,
    vendor_wheel,
    wheel_member,
    wheel_sources,
)

pytestmark = pytest.mark.slow  # a 40 MB download on the first run

AITER = VendorWheel("amd-aiter==0.1.7.post2.dev18")
OURS = Path(__file__).resolve().parents[2] / "plugins" / "atom_models" / "ops" / "aiter_ops.py"
# pybind11 enums AITER builds at import time (`ActivationType = type(_ActivationType(0))`):
# their members are read from the C++ binding that the wheel ships for its JIT build.
ENUM_BINDINGS = "aiter_meta/csrc/include/rocm_ops.hpp"


@pytest.fixture(scope="module")
def aiter_source() -> tuple[SourceIndex, str]:
    wheel = vendor_wheel(AITER)
    return SourceIndex(wheel_sources(wheel, ["aiter"])), wheel_member(wheel, ENUM_BINDINGS).decode()


def _enum_members(bindings: str, enum: str) -> set[str]:
    block = re.search(rf'enum_<{enum}>\(m, "{enum}"\)(.*?)\.export_values\(\)', bindings, re.S)
    assert block, f"{enum} is not bound in {ENUM_BINDINGS}"
    return set(re.findall(r'\.value\("(\w+)"', block.group(1)))


def _problems(source: str, index: SourceIndex, bindings: str) -> list[str]:
    problems = []
    for use in vendor_uses(source, ["aiter"]):
        try:
            found = index.resolve(use.target)
        except ResolveError as e:
            problems.append(f"{use}: {e}")
            continue
        if isinstance(found, Opaque):
            enum = found.where.rsplit(".", 1)[-1]
            members = _enum_members(bindings, enum)
            if found.rest and found.rest[0] not in members:
                problems.append(f"{use}: {enum} has no member {found.rest[0]!r} (has {sorted(members)})")
            if use.call:
                problems.append(f"{use}: {found.where} is an enum, not callable")
            continue
        assert not isinstance(found, Compiled), found
        if use.call is not None:
            why = check_call(index.signature(found), use.call)
            if why:
                problems.append(f"{use}: {why}")
    return problems


def test_every_aiter_call_exists_with_a_signature_our_call_fits(aiter_source) -> None:
    index, bindings = aiter_source
    source = OURS.read_text()
    called = {u.target for u in vendor_uses(source, ["aiter"]) if u.call}
    assert {"aiter.rms_norm", "aiter.tuned_gemm.tgemm.mm", "aiter.fused_moe.fused_moe"} <= called, called
    problems = _problems(source, index, bindings)
    assert not problems, "AITER calls that do not fit amd-aiter 0.1.7.post2.dev18:\n" + "\n".join(problems)


def test_the_check_rejects_calls_that_do_not_fit(aiter_source) -> None:
    """Each kind of mistake the check exists for, including the rope import we used to have."""
    index, bindings = aiter_source
    wrong = """
import aiter
from aiter import ActivationType
from aiter.ops.triton.rope.rope import rope_cached_thd_positions_2c_fwd
from aiter.tuned_gemm import tgemm
aiter.rms_norm(x, w)
aiter.silu_and_mul(out, x, extra)
aiter.topk_softmax(w, i, t, g, renormalize=True)
aiter.rmsnorm_everything(x)
tgemm.mm(x, w, bias, dtype=None)
ActivationType.Relu
"""
    problems = _problems(wrong, index, bindings)
    expected = ["rope.rope", "rms_norm", "silu_and_mul", "topk_softmax", "rmsnorm_everything", "tgemm.mm", "Relu"]
    for word in expected:
        assert any(word in p for p in problems), (word, problems)
    assert len(problems) == len(expected), problems
