"""AtomKVConnector, scheduler side: decides what to hold, what to receive, and the params.

Producer (kv_producer): a finished `do_remote_decode` prefill keeps its blocks
(`request_finished` returns True) under a transfer id, and its output carries the
kv_transfer_params decode needs — vLLM's serial P/D protocol, so the router forwards
them unchanged. Consumer (kv_consumer): a request with `do_remote_prefill` gets its
prompt counted as externally computed and loaded asynchronously; once blocks are
allocated, the worker asks the producer to push into them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vllm.utils.math_utils import cdiv
from vllm.v1.request import RequestStatus

from kv_connector.identity import PROTOCOL_VERSION, UNVERSIONED, version_problem
from kv_connector.messages import Hold
from kv_connector.side_channel import ReplyTo, SideChannel
from vllm_atom.kv_metadata import AtomKVMetadata, RecvSpec
from vllm_atom.kv_settings import AtomKVSettings

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = logging.getLogger("atom_mesh.vllm.kv_connector")
_REQUIRED = ("transfer_id", "remote_engine_id", "remote_host", "remote_port", "kv_fingerprint")


class AtomKVScheduler:
    def __init__(self, vllm_config: VllmConfig, engine_id: str, fingerprint: str, settings: AtomKVSettings, host: str):
        assert vllm_config.kv_transfer_config is not None  # vLLM builds connectors only from one
        role = vllm_config.kv_transfer_config.kv_role
        self.is_producer = role in ("kv_producer", "kv_both")
        self.is_consumer = role in ("kv_consumer", "kv_both")
        self.engine_id = engine_id
        self.fingerprint = fingerprint
        self.settings = settings
        self.host = host
        self.block_size = vllm_config.cache_config.block_size
        self.tp_size = vllm_config.parallel_config.tensor_parallel_size
        self._local_hits: dict[str, int] = {}
        self._held: set[str] = set()
        self._to_workers: SideChannel | None = None  # producer: sends Holds to our own workers
        self._new_recvs: dict[str, RecvSpec] = {}

    # -- consumer ------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int, bool]:
        params = request.kv_transfer_params
        if not self.is_consumer or not params or not params.get("do_remote_prefill"):
            return 0, False
        count = len(request.prompt_token_ids or ()) - num_computed_tokens
        if count <= 0:
            return 0, False
        self._local_hits[request.request_id] = num_computed_tokens
        logger.debug("request %s: %d prompt tokens to receive (%d local)", request.request_id, count, num_computed_tokens)
        return count, True

    def _params_error(self, request: Request, params: dict[str, Any]) -> str | None:
        missing = [k for k in _REQUIRED if k not in params]
        if missing:
            return f"kv_transfer_params lack {missing}: pass the prefill response's kv_transfer_params unchanged"
        problem = version_problem(params.get("kv_protocol_version", UNVERSIONED), "prefill engine")
        if problem:
            return problem
        if params["kv_fingerprint"] != self.fingerprint:
            return "the prefill engine runs another model or KV format (kv_fingerprint differs)"
        n_prompt = len(request.prompt_token_ids or ())
        if params.get("remote_num_tokens", n_prompt) != n_prompt:
            return (
                f"prefill computed {params['remote_num_tokens']} prompt tokens, this request has {n_prompt}: "
                "send decode the same prompt as prefill"
            )
        return None

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        if not self.is_consumer or not params or not params.get("do_remote_prefill"):
            return
        params["do_remote_prefill"] = False  # one transfer per request, even after preemption
        local_hit = self._local_hits.pop(request.request_id, 0)
        if num_external_tokens <= 0:
            return
        first_block = local_hit // self.block_size
        need = cdiv(len(request.prompt_token_ids or ()), self.block_size) - first_block
        (all_blocks,) = blocks.get_block_ids()
        dst = all_blocks[first_block : first_block + need]
        error = self._params_error(request, params)
        if error is None and len(dst) != need:
            error = f"decode allocated {len(dst)} blocks for {need} pages of KV"
        address = f"tcp://{params.get('remote_host')}:{params.get('remote_port')}"
        self._new_recvs[request.request_id] = RecvSpec(
            transfer_id=str(params.get("transfer_id")),
            producer_address=address,
            producer_engine_id=str(params.get("remote_engine_id")),
            dst_block_ids=dst,
            first_block=first_block,
            error=error,
        )

    # -- producer ------------------------------------------------------------

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        params = request.kv_transfer_params
        self._local_hits.pop(request.request_id, None)
        if not self.is_producer or not params or not params.get("do_remote_decode"):
            return False, None
        if request.status not in (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_STOPPED):
            return False, None  # aborted or failed: nothing for a decode engine to use
        if not block_ids:
            return False, None
        transfer_id = f"{self.engine_id}/{request.request_id}"
        self._send_hold(Hold(transfer_id, request.request_id, list(block_ids), self.engine_id))
        self._held.add(request.request_id)
        return True, {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "transfer_id": transfer_id,
            "remote_engine_id": self.engine_id,
            "remote_host": self.host,
            "remote_port": self.settings.side_channel_port,
            "remote_num_tokens": request.num_prompt_tokens,
            "remote_block_ids": list(block_ids),
            "kv_fingerprint": self.fingerprint,
            "kv_protocol_version": PROTOCOL_VERSION,
            "tp_size": self.tp_size,
        }

    def _send_hold(self, hold: Hold) -> None:
        """Tell every TP rank's worker now; ZMQ queues the message if a worker is not connected yet."""
        if self._to_workers is None:
            self._to_workers = SideChannel(lambda to, msg: None, name="atom-kv-holds")
        for rank in range(self.tp_size):
            self._to_workers.send(ReplyTo(address=f"tcp://{self.host}:{self.settings.side_channel_port + rank}"), hold)

    def update_connector_output(self, output: KVConnectorOutput) -> None:
        for req_id in output.finished_sending or ():
            self._held.discard(req_id)

    def has_pending_push_work(self) -> bool:
        """Keep the engine stepping while blocks are held, so their release is noticed."""
        return bool(self._held)

    # -- both ------------------------------------------------------------------

    def build_connector_meta(self) -> AtomKVMetadata:
        meta = AtomKVMetadata(recvs=self._new_recvs)
        if meta.recvs:
            logger.debug("step metadata: receives %s", list(meta.recvs))
        self._new_recvs = {}
        return meta

    def shutdown(self) -> None:
        if self._to_workers is not None:
            self._to_workers.close()
