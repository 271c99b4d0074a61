"""Pure decisions of the SGLang backend: transport settings, bootstrap-port checks, version gate."""

from __future__ import annotations

import pytest
from sglang_atom.compat import missing_internals, version_problem
from sglang_atom.settings import BackendSettings, bootstrap_port_problem


def test_defaults_need_no_flags_beyond_the_backend() -> None:
    assert BackendSettings.resolve(None, env={}) == BackendSettings("mooncake", "tcp", "")


def test_ib_device_selects_rdma_and_env_overrides() -> None:
    assert BackendSettings.resolve("mlx5_0", env={}) == BackendSettings("mooncake", "rdma", "mlx5_0")
    forced_tcp = BackendSettings.resolve("mlx5_0", env={"ATOM_MESH_KV_PROTOCOL": "tcp"})
    assert forced_tcp == BackendSettings("mooncake", "tcp", "")
    assert BackendSettings.resolve(None, env={"ATOM_MESH_KV_TRANSPORT": "MORI"}).transport == "mori"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ATOM_MESH_KV_TRANSPORT": "nixl"}, "ATOM_MESH_KV_TRANSPORT='nixl' is not a transport; use one of mooncake, mori"),
        ({"ATOM_MESH_KV_PROTOCOL": "udp"}, "ATOM_MESH_KV_PROTOCOL='udp' is not a protocol; use one of tcp, rdma"),
    ],
)
def test_bad_settings_say_what_to_use(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as err:
        BackendSettings.resolve(None, env=env)
    assert str(err.value) == message


def test_bootstrap_port_problems() -> None:
    ok = dict(api_port=30000, host="127.0.0.1", bindable=True)
    assert bootstrap_port_problem(8998, **ok) is None
    assert "not a TCP port" in bootstrap_port_problem(70000, **ok)
    assert "not a TCP port" in bootstrap_port_problem(0, **ok)
    same = bootstrap_port_problem(30000, **ok)
    assert "equals --port" in same and "--prefill URL BOOTSTRAP_PORT" in same
    busy = bootstrap_port_problem(8998, api_port=30000, host="127.0.0.1", bindable=False)
    assert "already in use on 127.0.0.1; pick a free port" in busy


@pytest.mark.parametrize("version", ["0.5.23", "0.5.24", "0.5.99rc1", "0.5.23.post2"])
def test_supported_versions(version: str) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version", ["0.5.22", "0.6.0", "0.4.9", "1.0.0", "dev"])
def test_unsupported_versions_name_the_supported_one(version: str) -> None:
    problem = version_problem(version)
    assert problem is not None and f"SGLang {version} is outside" in problem and "sglang==0.5.23" in problem


def test_missing_internals_lists_what_does_not_resolve() -> None:
    required = (("json", "dumps"), ("json", "JSONDecoder.decode"), ("json", "no_such"), ("no_such_module_x", "y"))
    assert missing_internals(required) == ["json:no_such", "no_such_module_x:y"]
