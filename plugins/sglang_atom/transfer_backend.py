"""The `atom` SGLang disaggregation transfer backend: SGLang's P/D protocol, our data path.

We subclass SGLang's Mooncake backend classes for everything that is *protocol* (the
bootstrap HTTP server, the ZMQ registration of decode ranks, per-room status, aborts,
heartbeats), because the router and `sglang-router` speak exactly that protocol and a
second copy of it would drift. Only the *data path* is replaced: `init_engine` builds a
`KVConnectorEngine` over the project's `kv_connector` transport (Mooncake TCP/RDMA, or
MORI-IO), the same core the vLLM connector uses.

CPU: the sender opts out of SGLang's pinned-memory/CUDA-event index path
(`supports_host_tensor_indices = False`) and marks itself as having no device events, so
the scheduler hook in `transfer_backend_registration` skips the optional early send of a
cached prefix on CPU (the final send covers those pages).

Imported lazily (only when SGLang asks `get_kv_class` for the `atom` backend) because it
imports SGLang's Mooncake backend module.
"""

from __future__ import annotations

import logging

import torch
from sglang.srt.disaggregation.mooncake.conn import (
    MooncakeKVBootstrapServer,
    MooncakeKVManager,
    MooncakeKVReceiver,
    MooncakeKVSender,
)
from sglang.srt.runtime_context import get_device, get_disagg

from kv_connector.transport import TransportUnavailable, create_transport
from sglang_atom.engine_adapter import KVConnectorEngine
from sglang_atom.settings import BackendSettings

logger = logging.getLogger("atom_mesh.sglang.backend")


def _device_kind() -> tuple[str, int]:
    """("cpu", -1) or (accelerator type, index) for memory registration."""
    device = (get_device().device or "").lower()
    if device == "cpu" or (not device and torch.accelerator.current_accelerator() is None):
        return "cpu", -1
    return device or "cuda", torch.accelerator.current_device_index()


class AtomKVManager(MooncakeKVManager):
    """Mooncake's manager with its engine swapped for our transport."""

    def init_engine(self) -> None:
        settings = BackendSettings.resolve(get_disagg().disaggregation_ib_device)
        device, device_id = _device_kind()
        try:
            transport = create_transport(settings.transport, host=self.local_ip, **settings.transport_options())
        except TransportUnavailable as e:
            raise RuntimeError(f"--disaggregation-transfer-backend atom: {e}") from e
        self.engine = KVConnectorEngine(transport, device=device, device_id=device_id)
        logger.info(
            "atom transfer backend: %s/%s endpoint for %s rank (device %s)",
            settings.transport,
            settings.protocol,
            self.disaggregation_mode.value,
            device,
        )


class AtomKVSender(MooncakeKVSender):
    # SGLang's host-tensor index path pins memory and records a torch.cuda.Event.
    supports_host_tensor_indices = False

    @property
    def atom_has_device_events(self) -> bool:
        """False on CPU: no stream events exist to order an early prefix send."""
        return _device_kind()[0] != "cpu"


class AtomKVReceiver(MooncakeKVReceiver):
    pass


class AtomKVBootstrapServer(MooncakeKVBootstrapServer):
    pass


_CLASSES = {
    "manager": AtomKVManager,
    "sender": AtomKVSender,
    "receiver": AtomKVReceiver,
    "bootstrap_server": AtomKVBootstrapServer,
}


def kv_class(class_type: str) -> type | None:
    """The class SGLang's `get_kv_class` should return for `KVClassType(class_type)`."""
    return _CLASSES.get(class_type)
