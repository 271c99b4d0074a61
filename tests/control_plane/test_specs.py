"""Worker spec validation, shared by `--config-file` entries and `POST /workers` (pure)."""

import dataclasses

import pytest

from router.config import WorkerSpec
from router.errors import WorkerRequestError
from router.workers.specs import parse_worker_spec, validate_spec
from router.workers.worker import Role


def test_parse_fills_the_dataclass_defaults():
    assert parse_worker_spec({"url": "http://h:1"}) == WorkerSpec(url="http://h:1")
    full = {
        "url": "http://h:1",
        "role": "prefill",
        "bootstrap_port": 8998,
        "model": "m",
        "labels": {"rack": "1"},
        "kv_events_endpoint": "tcp://h:5557",
    }
    assert parse_worker_spec(full) == WorkerSpec(**full)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(WorkerSpec)])
def test_every_field_is_type_checked_and_named(field):
    """A wrong JSON type in any WorkerSpec field is refused with `param` naming it."""
    entry = {"url": "http://h:1", field: [1]}  # a list is the wrong type for every field
    with pytest.raises(WorkerRequestError) as info:
        parse_worker_spec(entry)
    assert info.value.param == field and repr(field) in info.value.message
    assert (info.value.status, info.value.code) == (400, "invalid_worker")


@pytest.mark.parametrize(
    "entry,param,match",
    [
        ({"role": "regular"}, "url", "'url' is required"),
        ({"url": ""}, "url", "'url' must be"),
        ({"url": "http://h:1", "colour": "red"}, "colour", "unknown field"),
        ({"url": "http://h:1", "bootstrap_port": True}, "bootstrap_port", "integer or null"),
        ({"url": "http://h:1", "bootstrap_port": "8998"}, "bootstrap_port", "integer or null"),
        ({"url": "http://h:1", "labels": {"a": 1}}, "labels", "string values"),
    ],
)
def test_bad_shapes(entry, param, match):
    with pytest.raises(WorkerRequestError, match=match) as info:
        parse_worker_spec(entry)
    assert info.value.param == param


def test_not_an_object_and_extra_keys_the_caller_handles():
    with pytest.raises(WorkerRequestError, match="JSON object"):
        parse_worker_spec(["http://h:1"])
    assert parse_worker_spec({"url": "http://h:1", "wait": True}, handled=("wait",)).url == "http://h:1"
    with pytest.raises(WorkerRequestError, match=r"allowed: \[.*'wait'"):
        parse_worker_spec({"url": "http://h:1", "x": 1}, handled=("wait",))


@pytest.mark.parametrize(
    "spec,pd,param,match",
    [
        (WorkerSpec(url="localhost:8000"), False, "url", "http://host:port"),
        (WorkerSpec(url="http://h:1", role="boss"), False, "role", "one of regular, prefill, decode"),
        (WorkerSpec(url="http://h:1", role="prefill"), False, "role", "--pd-disaggregation"),
        (WorkerSpec(url="http://h:1"), True, "role", "'prefill' or 'decode'"),
        (WorkerSpec(url="http://h:1", role="prefill", bootstrap_port=70000), True, "bootstrap_port", "1-65535"),
        (WorkerSpec(url="http://h:1", kv_events_endpoint="h:5557"), False, "kv_events_endpoint", "tcp://host:5557"),
    ],
)
def test_bad_values(spec, pd, param, match):
    with pytest.raises(WorkerRequestError, match=match) as info:
        validate_spec(spec, pd)
    assert info.value.param == param


def test_good_values_give_the_role():
    assert validate_spec(WorkerSpec(url="https://h:1"), False) is Role.REGULAR
    spec = WorkerSpec(url="http://h:1", role="decode", kv_events_endpoint="ipc:///tmp/kv")
    assert validate_spec(spec, True) is Role.DECODE
