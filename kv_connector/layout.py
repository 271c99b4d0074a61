"""Where KV blocks live in memory, and which byte copies move a set of blocks.

Engine-neutral: an engine binding describes its KV cache as `Region`s (one per layer,
or one per layer and K/V when K and V are separate arrays); each region is an array of
`num_blocks` pages, page `b` at `offset + b * block_stride` inside registered memory
`mem`. Pages move as raw bytes, so both sides need the same dtype, block size and page
format; `check_compatible` refuses anything else rather than load garbage.

Pure code: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kv_connector.transport import MemoryRef, TransferOp


class LayoutMismatch(ValueError):
    """Producer and consumer pages are not byte-compatible (model, dtype, block size or layout differ)."""


class Region(msgspec.Struct, frozen=True, array_like=True):
    mem: int  # index into KVLayout.memory
    offset: int  # bytes from the start of that memory to page 0
    block_stride: int  # bytes between consecutive pages
    block_bytes: int  # bytes of one page (<= block_stride)
    num_blocks: int


class KVLayout(msgspec.Struct, frozen=True):
    regions: tuple[Region, ...]
    memory: tuple[bytes, ...]  # transport memory descriptors, indexed by Region.mem

    def page_signature(self) -> tuple[int, ...]:
        """Bytes per page of each region: what must match across peers."""
        return tuple(r.block_bytes for r in self.regions)


def check_compatible(src: KVLayout, dst: KVLayout) -> None:
    if src.page_signature() != dst.page_signature():
        raise LayoutMismatch(
            f"KV page layouts differ (producer {len(src.regions)} regions {src.page_signature()[:4]}..., "
            f"consumer {len(dst.regions)} regions {dst.page_signature()[:4]}...): "
            "run prefill and decode with the same model, dtype, block size and CPU ISA/GPU backend"
        )


def _check_blocks(layout: KVLayout, blocks: Sequence[int], side: str) -> None:
    limit = min(r.num_blocks for r in layout.regions)
    bad = [b for b in blocks if not 0 <= b < limit]
    if bad:
        raise LayoutMismatch(f"{side} block ids {bad[:4]} are outside [0, {limit})")


def _runs(src_blocks: Sequence[int], dst_blocks: Sequence[int]) -> list[tuple[int, int, int]]:
    """Split block pairs into maximal runs (src_start, dst_start, count) consecutive on both sides."""
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src_blocks, dst_blocks, strict=True):
        if runs:
            s0, d0, n = runs[-1]
            if s == s0 + n and d == d0 + n:
                runs[-1] = (s0, d0, n + 1)
                continue
        runs.append((s, d, 1))
    return runs


def plan_copies(
    src: KVLayout,
    src_blocks: Sequence[int],
    dst: KVLayout,
    dst_blocks: Sequence[int],
) -> list[list[TransferOp]]:
    """Byte copies that put page `src_blocks[i]` of every region into `dst_blocks[i]`.

    Returns one op list per destination region (so callers can pipeline by layer).
    Consecutive pages are merged into one op when pages are densely packed.
    """
    if len(src_blocks) != len(dst_blocks):
        raise LayoutMismatch(f"{len(src_blocks)} source blocks for {len(dst_blocks)} destination blocks")
    check_compatible(src, dst)
    _check_blocks(src, src_blocks, "producer")
    _check_blocks(dst, dst_blocks, "consumer")
    runs = _runs(src_blocks, dst_blocks)
    plan: list[list[TransferOp]] = []
    for s, d in zip(src.regions, dst.regions, strict=True):  # check_compatible: as many
        dense = s.block_stride == s.block_bytes and d.block_stride == d.block_bytes
        ops: list[TransferOp] = []
        for s0, d0, n in runs:
            pieces = [(s0, d0, n)] if dense else [(s0 + i, d0 + i, 1) for i in range(n)]
            for sb, db, count in pieces:
                ops.append(
                    TransferOp(
                        local=MemoryRef(src.memory[s.mem], s.offset + sb * s.block_stride),
                        remote=MemoryRef(dst.memory[d.mem], d.offset + db * d.block_stride),
                        length=count * d.block_bytes,
                    )
                )
        plan.append(ops)
    return plan
