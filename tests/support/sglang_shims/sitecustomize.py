"""Test-only start-up hook for SGLang processes on a CPU-only machine (see README.md).

`sgl_kernel/__init__.py` calls `load_utils._load_architecture_specific_ops()`, which raises
ImportError when the CUDA op library cannot load (no libnvrtc here). We wrap that one
function, right after `sgl_kernel.load_utils` executes, so a failed load yields an empty
ops namespace instead; the CPU code paths the tests use never call those ops.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_TARGET = "sgl_kernel.load_utils"


def _tolerant(load):
    def load_ops():
        try:
            return load()
        except ImportError:
            return types.ModuleType("sgl_kernel.common_ops (unavailable: CPU-only test shim)")

    return load_ops


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self._wrapped.exec_module(module)
        module._load_architecture_specific_ops = _tolerant(module._load_architecture_specific_ops)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
