"""Registration of the ATOM classes in vLLM's real ModelRegistry: in process, plus one
engine start that checks the environment override reaches vLLM's worker process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from atom_models.families import ARCHITECTURES
from vllm_atom.model_registration import ENV_VAR, choose_impl, register_models, registrations

from testbed.models import build_tiny_model
from testbed.processes import EngineStartError
from testbed.vllm_engine import start_vllm

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e .[vllm])")


@pytest.fixture
def model_registry() -> Iterator[object]:
    """vLLM's registry, restored afterwards: overriding built-in names must not leak."""
    from vllm import ModelRegistry

    saved = dict(ModelRegistry.models)
    try:
        yield ModelRegistry
    finally:
        ModelRegistry.models.clear()
        ModelRegistry.models.update(saved)


def test_choose_impl() -> None:
    assert choose_impl(None, aiter_usable=False) == "vllm"
    assert choose_impl("auto", aiter_usable=True) == "atom"
    assert choose_impl("vllm", aiter_usable=True) == "vllm"
    assert choose_impl(" ATOM ", aiter_usable=False) == "atom"
    with pytest.raises(ValueError, match=ENV_VAR):
        choose_impl("sglang", aiter_usable=False)


def test_default_registers_only_atom_names(model_registry) -> None:
    builtin = {f.hf_architecture: model_registry.models[f.hf_architecture] for f in ARCHITECTURES.values()}
    table = register_models(env={})
    assert set(table) == {f.atom_architecture for f in ARCHITECTURES.values()}
    for family in ARCHITECTURES.values():
        assert model_registry.models[family.hf_architecture] is builtin[family.hf_architecture]
        assert model_registry.models[family.atom_architecture].module_name == "vllm_atom.models"


def test_env_atom_overrides_builtin_names(model_registry) -> None:
    register_models(env={ENV_VAR: "atom"})
    for family in ARCHITECTURES.values():
        entry = model_registry.models[family.hf_architecture]
        assert (entry.module_name, entry.class_name) == ("vllm_atom.models", family.atom_architecture)


def test_registered_classes_exist_and_satisfy_vllms_interface() -> None:
    import vllm_atom.models
    from vllm.model_executor.models.interfaces_base import is_text_generation_model

    for arch, target in registrations("atom").items():
        name = target.partition(":")[2]
        cls = getattr(vllm_atom.models, name)
        assert is_text_generation_model(cls), arch
        assert cls.hf_architecture in ARCHITECTURES


@pytest.mark.engine
@pytest.mark.slow
def test_env_override_reaches_vllms_worker_process() -> None:
    """`ATOM_MESH_MODEL_IMPL=atom` must make vLLM's worker build our class for the built-in
    name: a bad `ATOM_MESH_OPS`, which only our class reads, then stops start-up with our
    error (a cheap failing start instead of a full server)."""
    env = {ENV_VAR: "atom", "ATOM_MESH_OPS": "bogus"}
    proc = start_vllm(build_tiny_model("qwen3"), env=env, wait=False, name="vllm-atom-env-override")
    try:
        with pytest.raises(EngineStartError):
            proc.wait_http_ready("/health", timeout=900)
        log = proc.log_text()
        assert "Resolved architecture: Qwen3ForCausalLM" in log
        assert "ATOM_MESH_OPS: unknown backend 'bogus'" in log
    finally:
        proc.stop()
