"""Registration of the `atom` backend inside a real SGLang 0.5.23 (its venv, no server).

Runs in subprocesses of `.venv-sglang`; each imports SGLang (several seconds), hence slow.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.support.sglang_venv import run_in_sglang

pytestmark = pytest.mark.slow

_INSPECT = """
import argparse, json
BACKEND_MODULE = "sglang_atom.transfer_backend_registration"
from sglang.srt.arg_groups.choices import DISAGG_TRANSFER_BACKEND_CHOICES
from sglang.srt.arg_groups.resolution_hooks import _HOOKS
from sglang.srt.disaggregation.utils import KVClassType, TransferBackend, get_kv_class
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang.srt.server_args import ServerArgs

parser = argparse.ArgumentParser(exit_on_error=False)
ServerArgs.add_cli_args(parser)
try:
    parsed = parser.parse_args(["--model-path", "m", "--disaggregation-transfer-backend", "atom"])
    cli = parsed.disaggregation_transfer_backend
except (argparse.ArgumentError, SystemExit) as e:
    cli = "rejected: " + str(e)

def kv(backend, kind):
    cls = get_kv_class(backend, kind)
    return None if cls is None else cls.__module__ + "." + cls.__name__

atom = TransferBackend._value2member_map_.get("atom")
print(json.dumps({
    "members": [m.value for m in TransferBackend],
    "atom_choices": DISAGG_TRANSFER_BACKEND_CHOICES.count("atom"),
    "cli": cli,
    "atom_classes": None if atom is None else {t.value: kv(atom, t) for t in KVClassType},
    "mooncake_classes": {t.value: kv(TransferBackend.MOONCAKE, t) for t in KVClassType},
    # Hooks of the transfer backend only (other parts of the plugin may add their own).
    "hook_targets": sorted(t for t, hooks in HookRegistry._hooks.items()
                           for _, hook, _ in hooks if hook.__module__ == BACKEND_MODULE),
    "resolution_hooks": len(_HOOKS.get("handle_pd_disaggregation", [])),
    "get_kv_class_patched": hasattr(get_kv_class, "__wrapped__"),
}))
"""


def test_plugin_registers_the_backend_through_sglangs_entry_point_idempotently() -> None:
    state, _ = run_in_sglang(
        textwrap.dedent(
            """
        from sglang.srt.plugins import load_plugins
        load_plugins()  # what every SGLang process does: runs the entry point sglang_atom:register
        import sglang_atom
        from sglang_atom.transfer_backend_registration import register_transfer_backend
        sglang_atom.register()
        assert register_transfer_backend() is True  # a second call changes nothing
        """
        )
        + _INSPECT
    )
    assert state["members"] == ["mooncake", "mori", "nixl", "ascend", "fake", "atom"]
    assert state["atom_choices"] == 1 and state["cli"] == "atom"
    assert state["atom_classes"] == {
        "kvargs": "sglang.srt.disaggregation.base.conn.KVArgs",
        "manager": "sglang_atom.transfer_backend.AtomKVManager",
        "sender": "sglang_atom.transfer_backend.AtomKVSender",
        "receiver": "sglang_atom.transfer_backend.AtomKVReceiver",
        "bootstrap_server": "sglang_atom.transfer_backend.AtomKVBootstrapServer",
    }
    # Other backends still get SGLang's own classes.
    assert state["mooncake_classes"]["manager"] == "sglang.srt.disaggregation.mooncake.conn.MooncakeKVManager"
    assert state["hook_targets"] == [
        "sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk",
        "sglang.srt.disaggregation.utils.get_kv_class",
    ]
    assert state["resolution_hooks"] == 1
    assert state["get_kv_class_patched"] is True


def test_unsupported_sglang_version_is_left_untouched_with_a_clear_message() -> None:
    state, stderr = run_in_sglang(
        textwrap.dedent(
            """
        import sglang
        sglang.__version__ = "0.6.1"  # as if a newer SGLang with other internals were installed
        from sglang.srt.plugins import load_plugins
        load_plugins()
        """
        )
        + _INSPECT
    )
    assert "atom" not in state["members"] and state["atom_classes"] is None
    assert state["atom_choices"] == 0 and state["cli"].startswith("rejected: ") and "invalid choice: 'atom'" in state["cli"]
    assert state["hook_targets"] == [] and state["resolution_hooks"] == 0
    assert state["get_kv_class_patched"] is False
    assert (
        "the 'atom' transfer backend is NOT registered and SGLang is left untouched: "
        "SGLang 0.6.1 is outside the supported range >=0.5.23,<0.6.0; install sglang==0.5.23"
    ) in stderr
