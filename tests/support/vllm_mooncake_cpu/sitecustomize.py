"""Test-only shim: let vLLM's in-tree MooncakeConnector start on a CPU-only machine.

`MooncakeConnectorWorker.__init__` asks `torch.accelerator.current_device_index()`,
which raises when there is no accelerator. With that one call answering device 0, the
connector does real P/D over Mooncake TCP on CPU (see docs/engines-on-cpu.md).
Put this directory on an engine's PYTHONPATH (only for engines, never the router);
`sitecustomize` runs in every Python process the engine spawns. Torch is imported only
when the process imports it anyway: the patch waits for it with an import hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence


def _patch(torch: types.ModuleType) -> None:
    accel = getattr(torch, "accelerator", None)
    if accel is not None and not accel.is_available():
        accel.current_device_index = lambda: 0


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Patches torch right after it is first executed, then steps aside.

    Packages probe for torch with `importlib.util.find_spec("torch")` without importing
    it, so the finder stays until the module is really executed.
    """

    _busy = False

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "torch" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module: types.ModuleType) -> None:
            exec_module(module)
            _patch(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


if "torch" in sys.modules:
    _patch(sys.modules["torch"])
else:
    sys.meta_path.insert(0, _AfterTorch())
