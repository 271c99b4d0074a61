"""vLLM KV cache tensors -> the core's `KVLayout` (and memory registration).

Handles the layouts a connector sees in `register_kv_caches`:
- `[num_blocks, ...]` per layer (CPU: `[num_blocks, kv_heads, block_size, 2*head_dim]`,
  K transposed then V inside a page; MLA): one region per layer.
- `[2, num_blocks, ...]` per layer (FlashAttention-style K and V arrays): two regions.
Each distinct storage is registered once (on CPU all layers are views of one storage).
Pages are moved as opaque bytes, so the page format never has to be understood here.
"""

from __future__ import annotations

import math

import torch

from kv_connector.layout import KVLayout, Region
from kv_connector.transport import Transport


def _block_arrays(name: str, t: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
    if t.shape[0] == num_blocks:
        arrays = [t]
    elif t.dim() >= 2 and t.shape[0] == 2 and t.shape[1] == num_blocks:
        arrays = [t[0], t[1]]
    else:
        raise ValueError(
            f"KV cache of layer {name} has shape {tuple(t.shape)}; AtomKVConnector expects "
            f"[num_blocks={num_blocks}, ...] or [2, num_blocks, ...]"
        )
    for a in arrays:
        if not a[0].is_contiguous():
            raise ValueError(f"KV pages of layer {name} are not contiguous (strides {a.stride()}); unsupported layout")
    return arrays


def build_layout(kv_caches: dict[str, torch.Tensor], num_blocks: int, transport: Transport) -> KVLayout:
    """Register the KV memory with `transport` and describe every page array, in layer-name order."""
    storages: dict[int, int] = {}  # storage base ptr -> index in memory
    memory: list[bytes] = []
    regions: list[Region] = []
    for name in sorted(kv_caches):
        t = kv_caches[name]
        storage = t.untyped_storage()
        base = storage.data_ptr()
        if base not in storages:
            device_id = t.device.index if t.device.index is not None else -1
            memory.append(transport.register_memory(base, storage.nbytes(), device=t.device.type, device_id=device_id))
            storages[base] = len(memory) - 1
        for a in _block_arrays(name, t, num_blocks):
            elem = a.element_size()
            regions.append(
                Region(
                    mem=storages[base],
                    offset=a.data_ptr() - base,
                    block_stride=a.stride(0) * elem,
                    block_bytes=math.prod(a.shape[1:]) * elem,
                    num_blocks=a.shape[0],
                )
            )
    return KVLayout(regions=tuple(regions), memory=tuple(memory))
