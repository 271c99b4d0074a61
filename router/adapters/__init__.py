"""Engine P/D wire protocols, one module each; `ADAPTERS` maps `--backend` to its class.

The table names each class as "module:Class" and imports it on first lookup, so reading
the backend names (`atom-router --help`, config checks) imports no adapter and no HTTP
client. Adding an engine: write one module with an `Adapter` subclass and add one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.adapters.base import Adapter


class AdapterTable(Mapping[str, "type[Adapter]"]):
    """`--backend` name -> adapter class, imported when looked up."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths

    def __getitem__(self, backend: str) -> type[Adapter]:
        try:
            module, _, name = self._paths[backend].partition(":")
        except KeyError:
            raise KeyError(f"unknown backend {backend!r}; choose one of: {', '.join(self._paths)}") from None
        cls: type[Adapter] = getattr(importlib.import_module(module), name)
        return cls

    def __contains__(self, backend: object) -> bool:
        return backend in self._paths  # a name check; Mapping's default would import the class

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


ADAPTERS = AdapterTable(
    {
        "vllm": "router.adapters.vllm:VllmAdapter",
        "vllm-mooncake": "router.adapters.vllm_mooncake:VllmMooncakeAdapter",
        "sglang": "router.adapters.sglang:SglangAdapter",
        "atom": "router.adapters.atom:AtomAdapter",
        "openai": "router.adapters.openai:OpenAIAdapter",
    }
)

__all__ = ["ADAPTERS", "AdapterTable"]
