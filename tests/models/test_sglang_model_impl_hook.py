"""`--model-impl atom` resolution inside a real SGLang 0.5.23 (its venv, no server).

One subprocess of `.venv-sglang`: loads plugins the way SGLang does, then asks SGLang's
own `get_model_architecture` for a real ModelConfig of the tiny Qwen3 with each impl.
"""

from __future__ import annotations

import pytest

from testbed.models import build_tiny_model
from tests.support.sglang_venv import run_in_sglang

pytestmark = pytest.mark.slow

_SNIPPET = """
import json, sys
from sglang.srt.plugins import load_plugins
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang.srt.configs.model_config import ModelConfig
load_plugins()
HookRegistry.apply_hooks()
from sglang.srt.model_loader.utils import get_model_architecture

def resolve(impl):
    cfg = ModelConfig(sys.argv[1], model_impl=impl)
    cls, arch = get_model_architecture(cfg)
    return [cls.__module__ + "." + cls.__name__, arch]

try:
    bad = ModelConfig(sys.argv[1], model_impl="atom")
    bad.hf_config.architectures = ["GPT2LMHeadModel"]
    get_model_architecture(bad)
    unsupported = "accepted"
except Exception as e:
    unsupported = str(e)
print(json.dumps({"atom": resolve("atom"), "auto": resolve("auto"), "unsupported": unsupported}))
"""


def test_model_impl_atom_resolves_to_our_class_and_others_are_untouched() -> None:
    model_dir = build_tiny_model("qwen3")
    code = f"import sys; sys.argv = ['x', {str(model_dir)!r}]\n" + _SNIPPET
    result, _ = run_in_sglang(code)
    assert result["atom"] == ["sglang_atom.model_impl.AtomForCausalLM", "AtomQwen3ForCausalLM"]
    assert result["auto"] == ["sglang.srt.models.qwen3.Qwen3ForCausalLM", "Qwen3ForCausalLM"]
    assert "GPT2LMHeadModel" in result["unsupported"] and "supported:" in result["unsupported"]
