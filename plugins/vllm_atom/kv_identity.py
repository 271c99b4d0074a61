"""Engine-level identity of the KV both sides must agree on (fingerprint), from vLLM's config.

Computed identically on the scheduler (put into kv_transfer_params) and the worker
(sent with every push request), so a decode engine refuses KV from a producer running
another model, dtype, block size or layer layout instead of decoding garbage. The core
hashes its protocol version in too (`kv_connector.identity`), so builds that speak the
push protocol differently never match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kv_connector.identity import kv_fingerprint as hash_identity

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig


def kv_fingerprint(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> str:
    model = vllm_config.model_config
    payload = {
        "model": model.model,
        "revision": model.revision,
        "dtype": str(model.dtype),
        "cache_dtype": str(vllm_config.cache_config.cache_dtype),
        "block_size": vllm_config.cache_config.block_size,
        "tp_size": vllm_config.parallel_config.tensor_parallel_size,
        "groups": [
            [sorted(g.layer_names), repr(g.kv_cache_spec)] for g in kv_cache_config.kv_cache_groups
        ],
    }
    return hash_identity(payload)
