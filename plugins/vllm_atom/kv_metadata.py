"""What AtomKVConnector's scheduler side tells its workers each step.

Only receives travel here: holds go to the producer workers straight over the side
channel (`kv_connector.messages.Hold`), because this metadata reaches a worker only
after its current forward pass, which under load delayed holds by seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclass(frozen=True)
class RecvSpec:
    """Consumer: have the producer push its KV into these blocks (or fail with `error`)."""

    transfer_id: str
    producer_address: str  # tcp://host:port of the producer's side channel (TP rank 0)
    producer_engine_id: str
    dst_block_ids: list[int]
    first_block: int
    error: str | None = None  # params were unusable: fail the request, do not wait


@dataclass
class AtomKVMetadata(KVConnectorMetadata):
    recvs: dict[str, RecvSpec] = field(default_factory=dict)  # request id -> receive
