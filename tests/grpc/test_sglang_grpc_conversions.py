"""SGLang's `SglangScheduler` protocol: router.generation types <-> the published proto
messages, and which engine a gRPC server is (against a real grpc.health.v1 server). No
SGLang here: the engine tests are in test_sglang_grpc_engine.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2

from router.adapters.grpc_generation import chunk_from_proto, complete_from_proto
from router.adapters.sglang_grpc import (
    SERVICE,
    ModelFacts,
    check_input_ids,
    generate_request,
    model_facts,
    parse_sampling_defaults,
    sampling_to_proto,
)
from router.errors import ApiError, InvalidGenerationRequest
from router.generation.types import GenerationRequest, SamplingParams, TokenLogprob
from router.transports.grpc_channel import GrpcChannels
from router.transports.grpc_engines import ENGINE_INFO_KEY, ENGINES, detect_engine, engine_client, engine_of
from router.transports.grpc_worker import GrpcWorkerProbe
from router.workers.worker import Worker


def test_unset_sampling_fields_get_the_models_default_or_sglangs_not_proto3_zeros() -> None:
    # proto3 zeros would be a greedy temperature 0.0 and "keep only the top token" top_p 0.0
    msg = sampling_to_proto(SamplingParams(max_tokens=5), {"temperature": 0.6, "top_k": 20})
    assert msg.temperature == pytest.approx(0.6) and msg.top_k == 20  # the model's generation_config
    assert msg.top_p == 1.0 and msg.min_p == 0.0 and msg.repetition_penalty == 1.0  # SGLang's neutral values
    assert msg.HasField("max_new_tokens") and msg.max_new_tokens == 5
    assert msg.n == 1 and msg.skip_special_tokens and msg.spaces_between_special_tokens
    no_defaults = sampling_to_proto(SamplingParams(), {})
    assert no_defaults.temperature == 1.0 and no_defaults.top_k == -1
    assert not no_defaults.HasField("max_new_tokens")  # the engine's own limit (the context left)


def test_the_clients_sampling_fields_win_and_are_carried() -> None:
    s = SamplingParams(
        temperature=0.0,
        top_p=0.5,
        top_k=7,
        min_p=0.1,
        frequency_penalty=0.25,
        presence_penalty=-0.5,
        repetition_penalty=1.2,
        min_tokens=2,
        stop=("x", "y"),
        stop_token_ids=(3,),
        include_stop_str_in_output=True,
        ignore_eos=True,
        skip_special_tokens=False,
        logit_bias={5: -1.5},
    )
    msg = sampling_to_proto(s, {"temperature": 0.6})
    assert msg.temperature == 0.0  # greedy, as asked, not the model's 0.6
    assert (msg.top_p, msg.top_k, msg.min_p) == (0.5, 7, pytest.approx(0.1))
    assert (msg.frequency_penalty, msg.presence_penalty, msg.repetition_penalty) == (0.25, -0.5, pytest.approx(1.2))
    assert msg.min_new_tokens == 2 and msg.ignore_eos and not msg.skip_special_tokens
    assert list(msg.stop) == ["x", "y"] and list(msg.stop_token_ids) == [3]
    assert msg.no_stop_trim  # SGLang's name for keeping the matched stop string
    assert dict(msg.logit_bias) == {"5": -1.5}  # the proto's map is keyed by strings


def test_seed_and_prompt_logprobs_are_refused_not_dropped() -> None:
    with pytest.raises(InvalidGenerationRequest) as info:
        sampling_to_proto(SamplingParams(seed=3), {})
    assert info.value.param == "seed" and info.value.status == 400
    with pytest.raises(InvalidGenerationRequest) as info:
        sampling_to_proto(SamplingParams(prompt_logprobs=1), {})
    assert info.value.param == "prompt_logprobs"


def test_generate_request_carries_ids_logprobs_and_stream() -> None:
    req = GenerationRequest("r1", (1, 2, 3), SamplingParams(max_tokens=4, logprobs=2), stream=True, text="abc")
    msg = generate_request(req, {})
    assert msg.request_id == "r1" and msg.stream
    assert list(msg.tokenized.input_ids) == [1, 2, 3] and msg.tokenized.original_text == "abc"
    assert msg.return_logprob and msg.top_logprobs_num == 2
    assert msg.logprob_start_len == -1  # 0 would make the scheduler compute prompt logprobs
    assert not msg.HasField("disaggregated_params")
    plain = generate_request(GenerationRequest("r2", (1,), SamplingParams(), stream=False), {})
    assert not plain.return_logprob and plain.top_logprobs_num == 0 and not plain.stream
    # only the sampled token's logprob (OpenAI logprobs=0 / top_logprobs=0)
    sampled_only = generate_request(GenerationRequest("r3", (1,), SamplingParams(logprobs=0), stream=False), {})
    assert sampled_only.return_logprob and sampled_only.top_logprobs_num == 0


def test_kv_transfer_params_are_refused() -> None:
    req = GenerationRequest("r1", (1,), SamplingParams(), stream=False, kv_transfer_params={"do_remote_decode": True})
    with pytest.raises(ApiError) as info:
        generate_request(req, {})
    assert info.value.status == 501


def test_model_facts_are_read_from_model_info() -> None:
    defaults = '{"temperature":0.6,"top_p":0.9}'
    info = sglang_scheduler_pb2.GetModelInfoResponse(vocab_size=643, default_sampling_params_json=defaults)
    assert model_facts(info) == ModelFacts(vocab_size=643, sampling_defaults={"temperature": 0.6, "top_p": 0.9})
    assert parse_sampling_defaults("") == {}
    assert parse_sampling_defaults('{"temperature": 0.7, "max_new_tokens": 9}') == {"temperature": 0.7}


def test_prompt_ids_outside_the_vocabulary_are_a_400_not_a_dead_scheduler() -> None:
    check_input_ids([0, 5, 642], 643)
    with pytest.raises(InvalidGenerationRequest) as info:
        check_input_ids([5, 643, 7], 643)
    assert info.value.param == "prompt" and "643" in info.value.message
    check_input_ids([10**6], 0)  # an engine that did not say: nothing to check against


def _logprobs(ids: list[int]) -> sglang_scheduler_pb2.OutputLogProbs:
    return sglang_scheduler_pb2.OutputLogProbs(
        token_ids=ids,
        token_logprobs=[-0.5 * (i + 1) for i in range(len(ids))],
        top_logprobs=[
            sglang_scheduler_pb2.TopLogProbs(token_ids=[t, 9], values=[-0.5 * (i + 1), -3.0]) for i, t in enumerate(ids)
        ],
    )


def test_stream_chunk_with_top_logprobs() -> None:
    msg = sglang_scheduler_pb2.GenerateStreamChunk(
        token_ids=[4, 5], prompt_tokens=10, completion_tokens=2, cached_tokens=3, output_logprobs=_logprobs([4, 5])
    )
    chunk = chunk_from_proto(msg, want_logprobs=True)
    assert chunk.token_ids == (4, 5) and chunk.prompt_tokens == 10 and chunk.cached_tokens == 3
    assert chunk.logprobs == (TokenLogprob(4, -0.5, ((4, -0.5), (9, -3.0))), TokenLogprob(5, -1.0, ((5, -1.0), (9, -3.0))))
    assert not chunk.finished
    assert chunk_from_proto(msg, want_logprobs=False).logprobs is None
    # top_logprobs_num 0: positions without alternatives
    bare = sglang_scheduler_pb2.GenerateStreamChunk(
        token_ids=[4], output_logprobs=sglang_scheduler_pb2.OutputLogProbs(token_ids=[4], token_logprobs=[-0.25])
    )
    assert chunk_from_proto(bare, want_logprobs=True).logprobs == (TokenLogprob(4, -0.25, ()),)


def test_complete_non_streamed_has_every_token_and_the_eos_it_stopped_on() -> None:
    msg = sglang_scheduler_pb2.GenerateComplete(
        output_ids=[4, 5, 1],
        finish_reason="stop",
        prompt_tokens=10,
        completion_tokens=3,
        cached_tokens=8,
        output_logprobs=_logprobs([4, 5, 1]),
        matched_token_id=1,
    )
    chunk = complete_from_proto(msg, streamed=False, want_logprobs=True)
    assert chunk.token_ids == (4, 5, 1) and chunk.finish_reason == "stop" and chunk.matched_stop == 1
    assert (chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens) == (10, 3, 8)
    assert chunk.logprobs is not None and [e.token_id for e in chunk.logprobs] == [4, 5, 1]
    assert chunk.kv_transfer_params is None


def test_complete_of_a_stream_drops_the_repeated_last_delta() -> None:
    msg = sglang_scheduler_pb2.GenerateComplete(output_ids=[6], finish_reason="length", matched_stop_str="END")
    chunk = complete_from_proto(msg, streamed=True, want_logprobs=True)
    assert chunk.token_ids == () and chunk.logprobs == () and chunk.finish_reason == "length"
    assert chunk.matched_stop == "END"


def test_abort_and_unknown_finish_reasons() -> None:
    def finish(reason: str) -> str | None:
        msg = sglang_scheduler_pb2.GenerateComplete(finish_reason=reason)
        return complete_from_proto(msg, streamed=False, want_logprobs=False).finish_reason

    assert finish("abort") == "abort"
    assert finish("weird") == "error"


def test_engine_services_are_the_published_ones() -> None:
    assert SERVICE == "sglang.grpc.scheduler.SglangScheduler"
    assert [(e.name, e.service) for e in ENGINES] == [
        ("sglang", "sglang.grpc.scheduler.SglangScheduler"),
        ("vllm", "vllm.grpc.engine.VllmEngine"),
    ]


# -- engine detection against a real grpc.health.v1 server --------------------------------

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _health_server(statuses: dict[str, int]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    for service, status in statuses.items():
        await servicer.set(service, status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def channels() -> AsyncIterator[GrpcChannels]:
    out = GrpcChannels()
    yield out
    await out.close_all()


@pytest.mark.parametrize(("service", "kind"), [(SERVICE, "sglang"), ("vllm.grpc.engine.VllmEngine", "vllm")])
async def test_the_first_probe_learns_the_engine_from_the_service_it_serves(
    service: str, kind: str, channels: GrpcChannels
) -> None:
    # Loading: the engine's service is known but NOT_SERVING; the kind is learnt anyway.
    server, port = await _health_server({"": SERVING, service: health_pb2.HealthCheckResponse.NOT_SERVING})
    try:
        worker = Worker(f"grpc://127.0.0.1:{port}")
        assert engine_of(worker).name == "vllm"  # never probed: what grpc:// meant before
        probe = GrpcWorkerProbe(channels)
        reason = await probe.health(worker, 5)
        assert worker.engine_info[ENGINE_INFO_KEY] == kind
        assert engine_of(worker).name == kind
        assert type(engine_client(worker, channels.channel(worker))).__name__ == (
            "SglangGrpcClient" if kind == "sglang" else "VllmGrpcClient"
        )
        if kind == "sglang":  # SGLang's client asks for its own service: not ready yet
            assert "NOT_SERVING" in reason
    finally:
        await server.stop(None)


async def test_a_server_with_no_known_engine_service_is_not_ready_and_says_why(channels: GrpcChannels) -> None:
    server, port = await _health_server({"": SERVING, "other.Service": SERVING})
    try:
        worker = Worker(f"grpc://127.0.0.1:{port}")
        found = await detect_engine(channels.channel(worker), 5)
        assert isinstance(found, str) and SERVICE in found and "--smg-grpc-mode" in found
        reason = await GrpcWorkerProbe(channels).health(worker, 5)
        assert reason and ENGINE_INFO_KEY not in worker.engine_info
    finally:
        await server.stop(None)


async def test_an_unreachable_server_is_probed_again_later(channels: GrpcChannels) -> None:
    server, port = await _health_server({})
    await server.stop(None)
    worker = Worker(f"grpc://127.0.0.1:{port}")
    reason = await GrpcWorkerProbe(channels).health(worker, 2)
    assert "UNAVAILABLE" in reason and ENGINE_INFO_KEY not in worker.engine_info


async def test_a_pair_of_sglang_grpc_workers_is_refused_before_any_leg(channels: GrpcChannels) -> None:
    from router.placement.types import Pair
    from router.transports.completions_codec import CompletionsCodec
    from router.transports.grpc_leg import GrpcLeg

    prefill, decode = Worker("grpc://127.0.0.1:1"), Worker("grpc://127.0.0.1:2")
    for worker in (prefill, decode):
        worker.engine_info[ENGINE_INFO_KEY] = "sglang"
    with pytest.raises(ApiError) as info:
        await GrpcLeg(channels, CompletionsCodec()).answering_request(Pair(prefill, decode), prepared=None)  # type: ignore[arg-type]
    assert info.value.status == 501 and "http://" in info.value.message
