"""Worker specs from untrusted JSON: one validation for `--config-file` and `POST /workers`.

Why one place: a worker reaches the router from a config file, the admin API or flags,
and each must be refused the same way, before it becomes a `Worker`, with an error that
names the field and says what to write instead. Errors are `WorkerRequestError`s (400 on
the admin API) whose `param` is the field; the CLI prints them with the file and entry.

Two steps, both pure:
- `parse_worker_spec(entry)`: the JSON object's shape (known fields, their JSON types);
- `validate_spec(spec, pd_disaggregation)`: the values (URL scheme, role for this
  router's mode, port range, ZMQ endpoint), for specs from any source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

from router.config import WorkerSpec
from router.errors import WorkerRequestError
from router.workers.worker import Role

ROLES = ", ".join(r.value for r in Role)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_optional_int(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


# Each `WorkerSpec` field: its JSON type check and how to describe a valid value.
_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "url": (_is_url, 'a string such as "http://host:port"'),
    "role": (_is_str, f"a string: {ROLES}"),
    "bootstrap_port": (_is_optional_int, "an integer or null"),
    "model": (_is_optional_str, "a string or null"),
    "labels": (_is_str_map, "an object of string values"),
    "kv_events_endpoint": (_is_optional_str, 'a string such as "tcp://host:5557" or null'),
}
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(WorkerSpec))
_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(WorkerSpec)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def parse_worker_spec(entry: Any, *, handled: Collection[str] = ()) -> WorkerSpec:
    """A `WorkerSpec` from a decoded JSON object, or `WorkerRequestError` naming the field.

    `handled`: extra keys the caller reads itself (the admin API's `wait`); they are
    allowed, listed in the unknown-field message, and otherwise ignored here.
    """
    if not isinstance(entry, dict):
        raise WorkerRequestError('a worker must be a JSON object such as {"url": "http://host:port"}')
    allowed = (*_SPEC_FIELDS, *handled)
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise WorkerRequestError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}", param=unknown[0])
    for name in _REQUIRED:
        if name not in entry:
            raise WorkerRequestError(f"field {name!r} is required: {_FIELD_TYPES[name][1]}", param=name)
    values = {name: entry[name] for name in _SPEC_FIELDS if name in entry}
    for name, value in values.items():
        check, valid = _FIELD_TYPES[name]
        if not check(value):
            raise WorkerRequestError(f"field {name!r} must be {valid}", param=name)
    return WorkerSpec(**values)


def validate_spec(spec: WorkerSpec, pd_disaggregation: bool) -> Role:
    """Check a spec's values before it becomes a worker; return its role."""
    parts = urlsplit(spec.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WorkerRequestError(f"field 'url' must look like http://host:port, got {spec.url!r}", param="url")
    try:
        role = Role(spec.role)
    except ValueError:
        raise WorkerRequestError(f"field 'role' must be one of {ROLES}, got {spec.role!r}", param="role") from None
    if pd_disaggregation and role is Role.REGULAR:
        raise WorkerRequestError(
            "field 'role': this router runs with --pd-disaggregation: give role 'prefill' or 'decode'", param="role"
        )
    if not pd_disaggregation and role is not Role.REGULAR:
        raise WorkerRequestError(
            f"field 'role': {role.value!r} needs a router started with --pd-disaggregation", param="role"
        )
    if spec.bootstrap_port is not None and not (0 < spec.bootstrap_port < 65536):
        raise WorkerRequestError(
            f"field 'bootstrap_port': {spec.bootstrap_port} is not a TCP port (1-65535)", param="bootstrap_port"
        )
    if spec.kv_events_endpoint is not None and not spec.kv_events_endpoint.startswith(("tcp://", "ipc://")):
        raise WorkerRequestError(
            f"field 'kv_events_endpoint' must be a ZMQ endpoint such as tcp://host:5557, got {spec.kv_events_endpoint!r}",
            param="kv_events_endpoint",
        )
    return role


def parse_worker_list(entries: Any, pd_disaggregation: bool) -> list[WorkerSpec]:
    """A file's list of worker entries (`--config-file`, `--discovery-file`), each parsed and
    validated as above; the `WorkerRequestError` message starts with the entry, "workers[2]: "."""
    if not isinstance(entries, list):
        raise WorkerRequestError("'workers' must be a list of worker objects", param="workers")
    specs = []
    for index, entry in enumerate(entries):
        try:
            spec = parse_worker_spec(entry)
            validate_spec(spec, pd_disaggregation)
        except WorkerRequestError as err:
            raise WorkerRequestError(f"workers[{index}]: {err.message}", param=err.param) from None
        specs.append(spec)
    return specs
