"""AtomKVConnector: atom-mesh's push-mode P/D KV connector for vLLM (KVConnectorBase_V1).

Enable with
  --kv-transfer-config '{"kv_connector": "AtomKVConnector", "kv_role": "kv_producer"|"kv_consumer",
                          "kv_connector_extra_config": {"transport": "mooncake", "protocol": "tcp"}}'
(registered by the `vllm.general_plugins` entry point). The wire protocol to the router
is vLLM's serial one (prefill returns kv_transfer_params, decode receives them); the
prefill engine then writes its KV straight into the decode engine's blocks.
This class only routes calls to the scheduler side (`kv_scheduler`) or the worker side
(`kv_worker`); the transfer machinery is the engine-neutral `kv_connector` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from vllm_atom.kv_identity import kv_fingerprint
from vllm_atom.kv_metadata import AtomKVMetadata
from vllm_atom.kv_scheduler import AtomKVScheduler
from vllm_atom.kv_settings import AtomKVSettings
from vllm_atom.kv_worker import AtomKVWorker

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request


def _side_channel_host(settings: AtomKVSettings) -> str:
    if settings.side_channel_host:
        return settings.side_channel_host
    from vllm.utils.network_utils import get_ip

    return get_ip()


class AtomKVConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.P2P

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config, role, kv_cache_config)
        ktc = vllm_config.kv_transfer_config
        assert ktc is not None  # vLLM builds connectors only from a kv_transfer_config
        settings = AtomKVSettings.from_extra_config(dict(ktc.kv_connector_extra_config or {}))
        engine_id = str(ktc.engine_id)
        fingerprint = kv_fingerprint(vllm_config, kv_cache_config)
        host = _side_channel_host(settings)
        self._scheduler: AtomKVScheduler | None = None
        self._worker: AtomKVWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = AtomKVScheduler(vllm_config, engine_id, fingerprint, settings, host)
        else:
            self._worker = AtomKVWorker(vllm_config, kv_cache_config, engine_id, fingerprint, settings, host)

    # -- scheduler side --------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta()

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._scheduler is not None
        return self._scheduler.request_finished(request, block_ids)

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        assert self._scheduler is not None
        self._scheduler.update_connector_output(connector_output)

    def has_pending_push_work(self) -> bool:
        return self._scheduler is not None and self._scheduler.has_pending_push_work()

    # -- worker side -------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, AtomKVMetadata)
        self._worker.start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Loads are asynchronous and whole-request: the scheduler runs a request only after its KV landed."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        """Nothing to save: the producer pushes straight from its KV cache once decode names its blocks."""

    def wait_for_save(self) -> None:
        """Nothing to wait for (see save_kv_layer)."""

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        assert self._worker is not None
        return self._worker.get_transfer_results()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        if self._scheduler is not None:
            self._scheduler.shutdown()
