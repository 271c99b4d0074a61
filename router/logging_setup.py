"""Structured, quiet-by-default logs: `key=value` lines, or one JSON object per line.

Why: router logs are read by people grepping for one request and by log shippers; both
want one line per event with the request id on it. Code logs through
`logging.getLogger("atom_mesh.<area>")` with a short constant message and the variable
parts in `extra={...}`; every non-standard record attribute becomes a field.

Wiring (router/server.py or app start):
- Once at start: `configure_logging(config.log_level, json=config.log_json)`.
- Per request, as soon as the request id is known (prepare): `token =
  request_id_var.set(request_id)`, and `request_id_var.reset(token)` when the request
  ends (a middleware wrapping the whole request does both). Each line logged meanwhile
  carries `request_id=...`, including lines from worker/dispatch code it calls.
- Nothing at shutdown.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("atom_mesh_request_id", default=None)

# Attributes every LogRecord has; anything else came from `extra=` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "atom_mesh"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ordered fields of one line: time, level, logger, message, request id, extras."""
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    request_id = request_id_var.get()
    if request_id is not None:
        fields["request_id"] = request_id
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _kv_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=warning logger=atom_mesh.x msg="..." request_id=r1 worker=w2`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in record_fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that are not JSON become strings."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), default=str)


def configure_logging(level: str = "warning", *, json: bool = False, stream: TextIO | None = None) -> None:
    """Send `atom_mesh.*` logs to `stream` (stderr) at `level`. Idempotent: re-running
    replaces the handler, so tests and re-configuration never double lines."""
    logger = logging.getLogger("atom_mesh")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json else KeyValueFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
