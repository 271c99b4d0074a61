"""Test-only start-up hook for SGLang processes on a CPU-only machine (see README.md).

Patches are applied right after their target module executes (a meta-path hook), so
nothing is imported early and nothing changes for modules the process never loads:
- `sgl_kernel.load_utils`: `sgl_kernel/__init__.py` calls `_load_architecture_specific_ops()`,
  which raises ImportError when the CUDA op library cannot load (no libnvrtc here). A
  failed load yields an empty ops namespace instead; the CPU paths never call those ops.
- `sglang_atom.transfer_backend`, only when `ATOM_MESH_TEST_TAMPER_KV_FLAG` names a file:
  while that file exists, the prefill sends the first prompt page's KV into every
  destination page. The tamper test uses it to prove decode's output depends on the
  transferred KV (reordering pages would not: attention over a prompt is order-free).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types


def _tolerate_missing_cuda_ops(module: types.ModuleType) -> None:
    load = module._load_architecture_specific_ops

    def load_ops():
        try:
            return load()
        except ImportError:
            return types.ModuleType("sgl_kernel.common_ops (unavailable: CPU-only test shim)")

    module._load_architecture_specific_ops = load_ops


def _tamper_kv_when_flagged(module: types.ModuleType) -> None:
    flag = os.environ["ATOM_MESH_TEST_TAMPER_KV_FLAG"]
    manager = module.AtomKVManager
    send_kvcache = manager.send_kvcache

    def tampered(self, mooncake_session_id, prefill_kv_indices, *args, **kwargs):
        if os.path.exists(flag) and len(prefill_kv_indices):
            prefill_kv_indices = prefill_kv_indices.copy()
            prefill_kv_indices[:] = prefill_kv_indices[0]
        return send_kvcache(self, mooncake_session_id, prefill_kv_indices, *args, **kwargs)

    manager.send_kvcache = tampered


_PATCHES = {"sgl_kernel.load_utils": _tolerate_missing_cuda_ops}
if os.environ.get("ATOM_MESH_TEST_TAMPER_KV_FLAG"):
    _PATCHES["sglang_atom.transfer_backend"] = _tamper_kv_when_flagged


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader, patch) -> None:
        self._wrapped = wrapped
        self._patch = patch

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self._wrapped.exec_module(module)
        self._patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


sys.meta_path.insert(0, _Finder())
