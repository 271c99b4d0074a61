"""The coordinator <-> relay link: its frames, its messages, and how each value crosses it.

One schema for both ends (as `router.kv_event_wire` is for KV events): the coordinator
(`coordinator_link`) and the relays (`relay_link`) import these names and codecs and
nothing else of each other.

A frame is a 4-byte big-endian length, then an orjson array whose first item is the
message's op. The link is a Unix socket between processes of one router, started
together from one build, so the schema carries a version only in the hello.

Relay -> coordinator:
    [HELLO, version, relay_index]
    [ADMIT, seq]                  -> [ADMITTED, seq, slot_id] or [REFUSED, seq, error]
    [CANCEL, seq]                 the admit `seq` is no longer wanted (client gone)
    [RELEASE_SLOT, slot_id]
    [PLACE, seq, descriptor]      -> [PLACED, seq, plan, hold_id] or [REFUSED, seq, error]
    [RELEASE_LOAD, hold_id]
    [SUCCEEDED, worker_id] / [FAILED, worker_id]    breaker outcomes of one leg
    [METRICS, seq, samples]       the answer to a METRICS_PLEASE
Coordinator -> relay:
    [WORKERS, [worker, ...]]      the whole worker table, before any plan that names a
                                  worker the relay has not been sent yet
    [METRICS_PLEASE, seq]
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from router import errors
from router.errors import ApiError, TypedError
from router.placement.types import DisaggDecision, Pair, PlacementPlan, RequestDescriptor, Single
from router.workers.worker import Role, Worker

VERSION = 1

HELLO = "hello"
ADMIT = "admit"
ADMITTED = "admitted"
REFUSED = "refused"
CANCEL = "cancel"
RELEASE_SLOT = "release_slot"
PLACE = "place"
PLACED = "placed"
RELEASE_LOAD = "release_load"
SUCCEEDED = "succeeded"
FAILED = "failed"
WORKERS = "workers"
METRICS_PLEASE = "metrics_please"
METRICS = "metrics"

_LENGTH = struct.Struct(">I")


def frame(message: list[Any]) -> bytes:
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into messages; feed it what `data_received` gets."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if end - start - 4 < length:
                break
            yield orjson.loads(memoryview(buffer)[start + 4 : start + 4 + length])
            start += 4 + length
        if start:
            del buffer[:start]


# -- values ------------------------------------------------------------------------------


def encode_descriptor(d: RequestDescriptor) -> list[Any]:
    return [
        d.request_id,
        d.model,
        d.routing_text,
        d.stream,
        d.routing_tokens,
        d.session_key,
        d.estimated_tokens,
        d.prompt_tokens,
        sorted(d.excluded),
        d.failed_decision,
    ]


def decode_descriptor(v: list[Any]) -> RequestDescriptor:
    return RequestDescriptor(
        request_id=v[0],
        model=v[1],
        routing_text=v[2],
        stream=v[3],
        routing_tokens=v[4],
        session_key=v[5],
        estimated_tokens=v[6],
        prompt_tokens=v[7],
        excluded=set(v[8]),
        failed_decision=v[9],
    )


def _encode_disagg(d: DisaggDecision | None) -> list[Any] | None:
    return None if d is None else [d.decision, d.reason, d.prompt_tokens, d.cached_tokens]


def _decode_disagg(v: list[Any] | None) -> DisaggDecision | None:
    return None if v is None else DisaggDecision(v[0], v[1], v[2], v[3])


def encode_plan(plan: PlacementPlan) -> list[Any]:
    if isinstance(plan, Single):
        return ["single", plan.worker.worker_id, plan.reason, _encode_disagg(plan.disagg)]
    return [
        "pair",
        plan.prefill.worker_id,
        plan.decode.worker_id,
        plan.prefill_reason,
        plan.decode_reason,
        _encode_disagg(plan.disagg),
    ]


def decode_plan(v: list[Any], worker: Callable[[str], Worker]) -> PlacementPlan:
    """The plan over the relay's copies of the workers, looked up by id with `worker`
    (whose `KeyError` would mean the link broke its ordering promise: the table always
    arrives before a plan naming a worker)."""
    if v[0] == "single":
        return Single(worker(v[1]), v[2], _decode_disagg(v[3]))
    return Pair(worker(v[1]), worker(v[2]), v[3], v[4], _decode_disagg(v[5]))


def encode_worker(w: Worker) -> dict[str, Any]:
    """What a relay needs of a worker to run legs on it (placement state stays home)."""
    return {
        "id": w.worker_id,
        "url": w.url,
        "role": w.role.value,
        "models": sorted(w.models),
        "bootstrap_port": w.bootstrap_port,
        "labels": w.labels,
        "kv_events_endpoint": w.kv_events_endpoint,
        "engine_info": w.engine_info,
    }


def update_worker(found: Worker | None, v: dict[str, Any]) -> Worker:
    """`found` brought up to date with `v` (in place, so requests holding it see the
    same object), or a new copy."""
    if found is None:
        return Worker(
            url=v["url"],
            role=Role(v["role"]),
            models=frozenset(v["models"]),
            bootstrap_port=v["bootstrap_port"],
            labels=dict(v["labels"]),
            kv_events_endpoint=v["kv_events_endpoint"],
            worker_id=v["id"],
            engine_info=dict(v["engine_info"]),
        )
    found.models = frozenset(v["models"])
    found.engine_info.update(v["engine_info"])
    found.labels = dict(v["labels"])
    return found


def _typed_errors() -> dict[str, type[TypedError]]:
    """Every `TypedError` class by name, from the one error tree (router.errors)."""
    found: dict[str, type[TypedError]] = {}
    pending: list[type[TypedError]] = [TypedError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


_TYPED = _typed_errors()
assert all(getattr(errors, name, None) is cls for name, cls in _TYPED.items()), "typed errors live in router.errors"


def encode_error(err: ApiError) -> list[Any]:
    name = type(err).__name__ if isinstance(err, TypedError) else None
    return [name, err.status, err.message, err.type, err.param, err.code, err.retry_after]


def decode_error(v: list[Any]) -> ApiError:
    """The same error class on the relay, so `except PlacementError` still catches it."""
    name, status, message, type_, param, code, retry_after = v
    cls = _TYPED.get(name) if name else None
    if cls is not None:
        return cls(message, param=param, retry_after=retry_after)
    return ApiError(status, message, type=type_, param=param, code=code, retry_after=retry_after)
