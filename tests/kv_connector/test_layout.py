"""Block bookkeeping: which byte copies move which pages (pure, no transport)."""

from __future__ import annotations

import pytest

from kv_connector.layout import KVLayout, LayoutMismatch, Region, plan_copies

PAGE = 64


def _layout(mem: bytes, layers: int = 2, num_blocks: int = 8, stride: int = PAGE) -> KVLayout:
    regions = tuple(Region(0, i * num_blocks * stride, stride, PAGE, num_blocks) for i in range(layers))
    return KVLayout(regions=regions, memory=(mem,))


def _triples(plan):
    return [[(op.local.offset, op.remote.offset, op.length) for op in ops] for ops in plan]


def test_consecutive_blocks_merge_into_one_copy_per_run():
    src, dst = _layout(b"S"), _layout(b"D")
    plan = plan_copies(src, [0, 1, 2, 5], dst, [3, 4, 5, 0])
    layer1 = 8 * PAGE
    assert _triples(plan) == [
        [(0, 3 * PAGE, 3 * PAGE), (5 * PAGE, 0, PAGE)],
        [(layer1, layer1 + 3 * PAGE, 3 * PAGE), (layer1 + 5 * PAGE, layer1, PAGE)],
    ]
    assert all(op.local.desc == b"S" and op.remote.desc == b"D" for ops in plan for op in ops)


def test_padded_pages_are_copied_one_by_one():
    src, dst = _layout(b"S", stride=2 * PAGE), _layout(b"D")
    plan = plan_copies(src, [0, 1], dst, [0, 1])
    assert _triples(plan)[0] == [(0, 0, PAGE), (2 * PAGE, PAGE, PAGE)]


@pytest.mark.parametrize(
    ("dst", "src_blocks", "dst_blocks", "match"),
    [
        (_layout(b"D", layers=3), [0], [0], "layouts differ"),
        (_layout(b"D"), [0, 1], [0], "2 source blocks for 1"),
        (_layout(b"D"), [0], [8], "consumer block ids"),
        (_layout(b"D"), [-1], [0], "producer block ids"),
    ],
)
def test_incompatible_requests_are_refused(dst, src_blocks, dst_blocks, match):
    with pytest.raises(LayoutMismatch, match=match):
        plan_copies(_layout(b"S"), src_blocks, dst, dst_blocks)
