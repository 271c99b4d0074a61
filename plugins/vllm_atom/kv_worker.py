"""AtomKVConnector, worker side: owns the transport and the core's producer/consumer.

`register_kv_caches` registers the KV memory and starts the side channel (where the
producer's scheduler sends holds); each step `start_load_kv` hands new receives
(consumer) to the core, and `get_transfer_results` reports what finished. The engine thread never waits on the
network: pushes run on the core's threads. No accelerator API is called here, so the
same code runs on CPU and GPU KV tensors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorTransferResults

from kv_connector.consumer import ConsumerConfig, KVConsumer
from kv_connector.producer import KVProducer, ProducerConfig
from kv_connector.transport import Transport, create_transport
from vllm_atom.kv_layout import build_layout
from vllm_atom.kv_metadata import AtomKVMetadata
from vllm_atom.kv_settings import AtomKVSettings

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

logger = logging.getLogger("atom_mesh.vllm.kv_connector")


def _tp_rank() -> int:
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

    try:
        return get_tensor_model_parallel_rank()
    except AssertionError:  # no TP group (single process)
        return 0


class AtomKVWorker:
    def __init__(
        self,
        vllm_config: VllmConfig,
        kv_cache_config: KVCacheConfig,
        engine_id: str,
        fingerprint: str,
        settings: AtomKVSettings,
        host: str,
    ):
        assert vllm_config.kv_transfer_config is not None  # vLLM builds connectors only from one
        role = vllm_config.kv_transfer_config.kv_role
        self._is_producer = role in ("kv_producer", "kv_both")
        self._is_consumer = role in ("kv_consumer", "kv_both")
        self._num_blocks = kv_cache_config.num_blocks
        self._engine_id = engine_id
        self._fingerprint = fingerprint
        self._settings = settings
        self._host = host
        self._tp_rank = _tp_rank()
        self.producer: KVProducer | None = None
        self.consumer: KVConsumer | None = None
        self._transport: Transport | None = None

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        s = self._settings
        self._transport = create_transport(s.transport, host=self._host, protocol=s.protocol)
        layout = build_layout(kv_caches, self._num_blocks, self._transport)
        if self._is_producer:
            self.producer = KVProducer(
                self._transport,
                layout,
                ProducerConfig(
                    engine_id=self._engine_id,
                    fingerprint=self._fingerprint,
                    hold_ttl_s=s.hold_timeout_s,
                    regions_per_batch=s.regions_per_batch,
                ),
                bind=(self._host, s.side_channel_port + self._tp_rank),
            )
        if self._is_consumer:
            self.consumer = KVConsumer(
                self._transport,
                layout,
                ConsumerConfig(engine_id=self._engine_id, fingerprint=self._fingerprint, timeout_s=s.transfer_timeout_s),
            )
        logger.info(
            "AtomKVConnector worker ready: %d KV regions, %d memory registrations, transport %s, side channel %s:%d",
            len(layout.regions),
            len(layout.memory),
            s.transport,
            self._host,
            s.side_channel_port + self._tp_rank,
        )

    def start_load_kv(self, meta: AtomKVMetadata) -> None:
        if meta.recvs:
            logger.debug("worker got receives %s", list(meta.recvs))
        if self.consumer is not None:
            for req_id, recv in meta.recvs.items():
                if recv.error is not None:
                    logger.warning("request %s cannot receive KV: %s", req_id, recv.error)
                    self.consumer.fail(req_id, recv.error)
                    continue
                address = recv.producer_address
                if self._tp_rank:
                    host, port = address.rsplit(":", 1)
                    address = f"{host}:{int(port) + self._tp_rank}"
                self.consumer.request(
                    req_id,
                    transfer_id=recv.transfer_id,
                    producer_address=address,
                    producer_engine_id=recv.producer_engine_id,
                    dst_block_ids=recv.dst_block_ids,
                    first_block=recv.first_block,
                )

    def get_transfer_results(self) -> KVConnectorTransferResults:
        results = KVConnectorTransferResults()
        if self.producer is not None:
            results.finished_sending = {str(r) for r in self.producer.take_finished()}
        if self.consumer is not None:
            done, failed = self.consumer.take_results()
            for req_id, reason in failed.items():
                logger.warning("KV transfer for request %s failed: %s", req_id, reason)
            results.failed_recving = {str(r) for r in failed}
            results.finished_recving = {str(r) for r in done} | results.failed_recving
        return results

    def shutdown(self) -> None:
        for part in (self.producer, self.consumer, self._transport):
            if part is not None:
                part.close()
