"""Bad-input suite: every malformed request gets the right status and an OpenAI error body.

A real router process (with an API key and a small payload limit) in front of one
`engine_sim` worker. After all of it the router still serves a good request and its
in-flight counters are zero: bad input never crashes, hangs or leaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.fault_harness import MODEL, Router, launch_router

KEY = "sekret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PAYLOAD_LIMIT = 4096
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[Router]:
    fleet: SimFleet = start_fleet(tmp_path_factory.mktemp("bad"), "--regular", "1")
    try:
        r = launch_router(
            "--worker-urls", *fleet.urls(),
            "--api-key", KEY,
            "--max-payload-size", str(PAYLOAD_LIMIT),
            "--worker-startup-check-interval", "0.1",
            admin_key=KEY,
        )  # fmt: skip
        try:
            r.wait_all_ready()
            yield r
        finally:
            r.stop()
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def client(router: Router) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=30) as c:
        yield c


def _chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def _assert_openai_error(resp: httpx.Response, status: int, *, mentions: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert "param" in err and "code" in err, err
    if mentions:
        assert mentions in err["message"] or mentions == err.get("param"), err
    return err


@pytest.mark.parametrize(
    "route,raw,mentions",
    [
        (CHAT, b'{"model": "sim-model", "messages": [', "not valid JSON"),
        (CHAT, b"", "not valid JSON"),
        (CHAT, b"[1, 2]", "JSON object"),
        (COMPLETIONS, b'"just a string"', "JSON object"),
    ],
)
def test_malformed_json(client, route, raw, mentions):
    resp = client.post(route, content=raw, headers={**AUTH, "content-type": "application/json"})
    _assert_openai_error(resp, 400, mentions=mentions)


@pytest.mark.parametrize(
    "body,param",
    [
        (_chat(model=5), "model"),
        (_chat(messages="hi"), "messages"),
        (_chat(messages=[{"content": "no role"}]), "messages.0.role"),
        (_chat(stream="yes"), "stream"),
        (_chat(max_tokens="10"), "max_tokens"),
        (_chat(max_tokens=2.5), "max_tokens"),
        (_chat(n=0), "n"),
    ],
)
def test_wrong_types(client, body, param):
    err = _assert_openai_error(client.post(CHAT, json=body, headers=AUTH), 400)
    assert err["param"] == param, err


@pytest.mark.parametrize(
    "route,body,param",
    [
        (CHAT, _chat(messages=_DROP), "messages"),
        (CHAT, _chat(messages=[]), "messages"),
        (COMPLETIONS, {"model": MODEL, "max_tokens": 4}, "prompt"),
        (COMPLETIONS, {"model": MODEL, "prompt": [], "max_tokens": 4}, "prompt"),
    ],
)
def test_missing_fields(client, route, body, param):
    err = _assert_openai_error(client.post(route, json=body, headers=AUTH), 400)
    assert err["param"] == param, err


@pytest.mark.parametrize("max_tokens", [-1, 0, 10**9, 2**63])
def test_negative_zero_or_huge_max_tokens(client, max_tokens):
    err = _assert_openai_error(client.post(CHAT, json=_chat(max_tokens=max_tokens), headers=AUTH), 400)
    assert err["param"] == "max_tokens", err
    body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens}
    _assert_openai_error(client.post(COMPLETIONS, json=body, headers=AUTH), 400)


def test_unknown_model_is_404(client):
    err = _assert_openai_error(client.post(CHAT, json=_chat(model="no-such-model"), headers=AUTH), 404)
    assert err["code"] == "model_not_found", err


def test_oversized_payload_is_413(client):
    big = _chat(messages=[{"role": "user", "content": "x" * (PAYLOAD_LIMIT * 2)}])
    err = _assert_openai_error(client.post(CHAT, json=big, headers=AUTH), 413, mentions="--max-payload-size")
    assert err["code"] == "payload_too_large"


def test_oversized_chunked_payload_is_413(client):
    """No Content-Length: the limit must hold while the body streams in."""

    def chunks():
        for _ in range(8):
            yield b" " * PAYLOAD_LIMIT

    resp = client.post(CHAT, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    _assert_openai_error(resp, 413)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}],
)
@pytest.mark.parametrize("route", [CHAT, COMPLETIONS, "/v1/models", "/workers"])
def test_wrong_or_missing_api_key_is_401(client, headers, route):
    if route in (CHAT, COMPLETIONS):
        resp = client.post(route, json=_chat() if route == CHAT else {"model": MODEL, "prompt": "hi"}, headers=headers)
    else:
        resp = client.get(route, headers=headers)
    err = _assert_openai_error(resp, 401)
    assert err["code"] == "invalid_api_key" and resp.headers["www-authenticate"] == "Bearer"


def test_public_endpoints_need_no_key(client):
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_bad_admin_input(client):
    _assert_openai_error(client.post("/workers", content=b"{", headers=AUTH), 400, mentions="not valid JSON")
    _assert_openai_error(client.post("/workers", json={"url": "nope"}, headers=AUTH), 400, mentions="http://host:port")
    _assert_openai_error(client.get("/workers/w999", headers=AUTH), 404)
    _assert_openai_error(client.post("/workers/w999/drain", headers=AUTH), 404)


def test_router_still_serves_after_bad_input(client, router):
    resp = client.post(CHAT, json=_chat(), headers=AUTH)
    assert resp.status_code == 200 and resp.json()["choices"], resp.text
    router.wait_idle()
