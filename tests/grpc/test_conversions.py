"""proto <-> router.generation types, gRPC status -> router errors, KV event batches,
worker URL validation: pure, no server."""

from __future__ import annotations

import grpc
import grpc.aio
import orjson
import pytest
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2

from router.adapters.base import LegFailure
from router.adapters.grpc_generation import chunk_from_proto, rpc_failure
from router.adapters.vllm_grpc import (
    complete_from_proto,
    generate_request,
    sampling_to_proto,
)
from router.config import WorkerSpec
from router.errors import ApiError, WorkerRequestError
from router.generation.types import GenerationRequest, SamplingParams, TokenLogprob
from router.kv_event_wire import AllBlocksCleared, BlockRemoved, BlockStored
from router.kv_events import apply_events
from router.policies.kv_block_index import KVBlockIndex
from router.transports import Transport
from router.transports.grpc_channel import grpc_target
from router.transports.grpc_kv_events import events_from_batch
from router.workers.specs import validate_spec
from router.workers.worker import Worker


def test_unset_sampling_fields_stay_unset_so_the_engine_default_applies() -> None:
    msg = sampling_to_proto(SamplingParams(max_tokens=5))
    assert msg.HasField("max_tokens") and msg.max_tokens == 5
    assert not msg.HasField("temperature")  # servicer default 1.0, not a greedy 0.0
    assert not msg.HasField("logprobs") and not msg.HasField("seed")
    assert msg.skip_special_tokens  # our default True, proto3's would be False


def test_sampling_fields_are_carried() -> None:
    s = SamplingParams(
        temperature=0.0,
        top_p=0.5,
        top_k=7,
        stop=("x", "y"),
        stop_token_ids=(3,),
        ignore_eos=True,
        seed=11,
        logprobs=2,
        logit_bias={5: -1.5},
    )
    msg = sampling_to_proto(s)
    assert msg.HasField("temperature") and msg.temperature == 0.0
    assert msg.top_p == 0.5 and msg.top_k == 7
    assert list(msg.stop) == ["x", "y"] and list(msg.stop_token_ids) == [3]
    assert msg.ignore_eos and msg.seed == 11 and msg.logprobs == 2
    assert dict(msg.logit_bias) == {5: -1.5}


def test_generate_request_carries_ids_and_kv_transfer_params() -> None:
    req = GenerationRequest(
        request_id="r1",
        input_ids=(1, 2, 3),
        sampling=SamplingParams(max_tokens=1),
        stream=True,
        text="abc",
        kv_transfer_params={"do_remote_decode": True},
    )
    msg = generate_request(req)
    assert msg.request_id == "r1" and msg.stream
    assert list(msg.tokenized.input_ids) == [1, 2, 3] and msg.tokenized.original_text == "abc"
    assert orjson.loads(msg.kv_transfer_params_json) == {"do_remote_decode": True}
    assert not generate_request(GenerationRequest("r2", (1,), SamplingParams(), False)).HasField("kv_transfer_params_json")


def _logprobs(ids: list[int]) -> vllm_engine_pb2.OutputLogProbs:
    return vllm_engine_pb2.OutputLogProbs(
        token_ids=ids,
        token_logprobs=[-0.5 * (i + 1) for i in range(len(ids))],
        top_logprobs=[vllm_engine_pb2.TopLogProbs(token_ids=[t, 9], values=[-0.5 * (i + 1), -3.0]) for i, t in enumerate(ids)],
    )


def test_stream_chunk_with_top_logprobs() -> None:
    msg = vllm_engine_pb2.GenerateStreamChunk(
        token_ids=[4, 5], prompt_tokens=10, completion_tokens=2, cached_tokens=3, output_logprobs=_logprobs([4, 5])
    )
    chunk = chunk_from_proto(msg, want_logprobs=True)
    assert chunk.token_ids == (4, 5) and chunk.prompt_tokens == 10 and chunk.cached_tokens == 3
    assert chunk.logprobs == (TokenLogprob(4, -0.5, ((4, -0.5), (9, -3.0))), TokenLogprob(5, -1.0, ((5, -1.0), (9, -3.0))))
    assert not chunk.finished
    assert chunk_from_proto(msg, want_logprobs=False).logprobs is None


def test_complete_non_streamed_has_every_token_and_the_matched_stop() -> None:
    msg = vllm_engine_pb2.GenerateComplete(
        output_ids=[4, 5, 6],
        finish_reason="stop",
        prompt_tokens=10,
        completion_tokens=3,
        output_logprobs=_logprobs([4, 5, 6]),
        matched_token_id=6,
        kv_transfer_params_json='{"remote_block_ids": [1]}',
    )
    chunk = complete_from_proto(msg, streamed=False, want_logprobs=True)
    assert chunk.token_ids == (4, 5, 6) and chunk.finish_reason == "stop" and chunk.matched_stop == 6
    assert chunk.logprobs is not None and [e.token_id for e in chunk.logprobs] == [4, 5, 6]
    assert chunk.kv_transfer_params == {"remote_block_ids": [1]}


def test_complete_of_a_stream_drops_the_repeated_last_delta() -> None:
    msg = vllm_engine_pb2.GenerateComplete(output_ids=[6], finish_reason="length", matched_stop_str="END")
    chunk = complete_from_proto(msg, streamed=True, want_logprobs=True)
    assert chunk.token_ids == () and chunk.logprobs == () and chunk.finish_reason == "length"
    assert chunk.matched_stop == "END" and chunk.kv_transfer_params is None


def test_unknown_finish_reason_is_an_error() -> None:
    msg = vllm_engine_pb2.GenerateComplete(finish_reason="weird")
    assert complete_from_proto(msg, streamed=False, want_logprobs=False).finish_reason == "error"


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_unavailable_is_a_retryable_worker_failure() -> None:
    worker = Worker("grpc://127.0.0.1:1")
    failure = rpc_failure(worker, _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(failure, LegFailure) and failure.status is None and failure.worker is worker
    assert "connection refused" in failure.message


def test_invalid_argument_is_a_400_with_the_engines_message() -> None:
    message = "The decoder prompt (length 1100) is longer than the maximum model length of 1024."
    err = rpc_failure(Worker("grpc://127.0.0.1:1"), _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, message))
    assert isinstance(err, ApiError) and err.status == 400 and err.message == message
    assert err.payload()["error"]["type"] == "BadRequestError"  # as vLLM's HTTP server says it


def test_kv_event_batch_becomes_wire_events_the_index_chains() -> None:
    block = 4
    tokens = list(range(8))
    batch = common_pb2.KvEventBatch(
        sequence_number=1,
        events=[
            common_pb2.KvCacheEvent(
                stored=common_pb2.KvBlocksStored(
                    blocks=[
                        common_pb2.KvBlock(block_hash=-7, token_ids=tokens[:4], block_size=block),
                        common_pb2.KvBlock(block_hash=8, token_ids=tokens[4:], block_size=block),
                    ],
                    medium="GPU",
                )
            ),
            common_pb2.KvCacheEvent(removed=common_pb2.KvBlocksRemoved(block_hashes=[8], medium="GPU")),
            common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared()),
        ],
    )
    events = events_from_batch(batch)
    assert events[0] == BlockStored(block_hashes=[-7, 8], parent_block_hash=None, token_ids=tokens, block_size=4, medium="GPU")
    assert events[1] == BlockRemoved(block_hashes=[8], medium="GPU")
    assert isinstance(events[2], AllBlocksCleared)
    index = KVBlockIndex()
    seen = apply_events(index, "w1", events[:1])
    assert seen["BlockStored"] == 1
    assert index.matched_blocks(tokens, ["w1"])[0] == {"w1": 2}
    apply_events(index, "w1", events[1:2])
    assert index.matched_blocks(tokens, ["w1"])[0] == {"w1": 1}


def test_grpc_worker_urls() -> None:
    assert Worker("grpc://10.0.0.1:50051").transport is Transport.GRPC
    assert Worker("http://10.0.0.1:8000").transport is Transport.HTTP
    assert grpc_target("grpc://10.0.0.1:50051/") == "10.0.0.1:50051"
    validate_spec(WorkerSpec(url="grpc://10.0.0.1:50051"), False)
    for bad in ("grpc://10.0.0.1", "grpc://10.0.0.1:50051/v1", "tcp://10.0.0.1:1"):
        with pytest.raises(WorkerRequestError) as info:
            validate_spec(WorkerSpec(url=bad), False)
        assert info.value.param == "url"
