"""Engine P/D wire protocols, one module each; `ADAPTERS` maps `--backend` to its class.

Adding an engine: write one module with an `Adapter` subclass and add one line here.
"""

from router.adapters.atom import AtomAdapter
from router.adapters.base import Adapter, LegFailure, Upstream
from router.adapters.openai import OpenAIAdapter
from router.adapters.sglang import SglangAdapter
from router.adapters.vllm import VllmAdapter
from router.adapters.vllm_mooncake import VllmMooncakeAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "vllm": VllmAdapter,
    "vllm-mooncake": VllmMooncakeAdapter,
    "sglang": SglangAdapter,
    "atom": AtomAdapter,
}

__all__ = ["ADAPTERS", "Adapter", "LegFailure", "Upstream"]
