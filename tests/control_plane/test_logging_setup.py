"""Structured logs: key=value and JSON lines, request id from the context, quiet default."""

import io
import json
import logging

from router.logging_setup import configure_logging, request_id_var


def _emit(fmt_json: bool, level: str = "info") -> str:
    out = io.StringIO()
    configure_logging(level, json=fmt_json, stream=out)
    log = logging.getLogger("atom_mesh.test")
    token = request_id_var.set("req-7")
    try:
        log.info("worker state changed", extra={"worker": "w1", "to": "not ready"})
    finally:
        request_id_var.reset(token)
    log.debug("hidden below info")
    return out.getvalue()


def test_key_value_lines():
    line = _emit(False).strip()
    assert "\n" not in line
    assert 'level=info logger=atom_mesh.test msg="worker state changed" request_id=req-7 worker=w1 to="not ready"' in line


def test_json_lines():
    record = json.loads(_emit(True))
    assert record["msg"] == "worker state changed" and record["request_id"] == "req-7"
    assert (record["worker"], record["to"], record["level"]) == ("w1", "not ready", "info")


def test_quiet_by_default_and_idempotent():
    out = io.StringIO()
    configure_logging(stream=out)
    configure_logging(stream=out)  # re-configuring must not double lines
    log = logging.getLogger("atom_mesh.test")
    log.info("not shown at the default level")
    log.warning("shown once")
    assert out.getvalue().count("shown once") == 1 and "not shown" not in out.getvalue()
    assert "request_id" not in out.getvalue()  # outside a request: no id field


def test_exceptions_stay_on_one_line():
    out = io.StringIO()
    configure_logging("warning", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("atom_mesh.test").exception("failed")
    assert out.getvalue().count("\n") == 1 and "ValueError: boom" in out.getvalue()
