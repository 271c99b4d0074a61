"""Registers AtomKVConnector with vLLM's connector factory (called from `register()`).

Lazy: the factory stores a loader, so vLLM and our connector module are imported only
when an engine is configured with `"kv_connector": "AtomKVConnector"`.
"""

from __future__ import annotations

CONNECTOR_NAME = "AtomKVConnector"


def register_kv_connector() -> None:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    if CONNECTOR_NAME not in KVConnectorFactory._registry:  # register_connector raises on repeats
        KVConnectorFactory.register_connector(CONNECTOR_NAME, "vllm_atom.kv_connector", CONNECTOR_NAME)
