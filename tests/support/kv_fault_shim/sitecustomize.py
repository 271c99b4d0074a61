"""Test-only start-up hook: every KV transport an engine process creates gets the fault wrapper.

Active only when `ATOM_MESH_TEST_KV_FAULTS` names a control directory (see
`tests/support/kv_faults.py`, whose `KVFaults.engine_env()` puts this directory and the
repository root on the engine's PYTHONPATH). Right after `kv_connector.transport`
executes, its `create_transport` is replaced by one that wraps the transport it builds,
before any engine binding imports the name; nothing else in the process changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

_TARGET = "kv_connector.transport"


def _wrap_create_transport(module: types.ModuleType) -> None:
    from tests.support.kv_faults import ENV_VAR, FaultInjectingTransport, KVFaults

    faults = KVFaults(Path(os.environ[ENV_VAR]))
    namespace = vars(module)
    create = namespace["create_transport"]

    def create_with_faults(*args: Any, **kwargs: Any) -> FaultInjectingTransport:
        return FaultInjectingTransport(create(*args, **kwargs), faults)

    namespace["create_transport"] = create_with_faults


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._wrapped.exec_module(module)
        _wrap_create_transport(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


if os.environ.get("ATOM_MESH_TEST_KV_FAULTS"):
    sys.meta_path.insert(0, _Finder())
