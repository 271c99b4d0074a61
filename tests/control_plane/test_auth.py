"""API keys: scopes by path, bearer parsing, constant-time check, and the ASGI middleware."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from router.auth import Authenticator, AuthMiddleware, AuthScope, bearer_token, path_scope
from router.errors import AuthError
from router.render import error_response


@pytest.mark.parametrize(
    "path,scope",
    [
        ("/health", AuthScope.PUBLIC),
        ("/metrics", AuthScope.PUBLIC),
        ("/workers", AuthScope.ADMIN),
        ("/workers/w1/drain", AuthScope.ADMIN),
        ("/workersx", AuthScope.INFERENCE),
        ("/v1/chat/completions", AuthScope.INFERENCE),
        ("/v1/models", AuthScope.INFERENCE),
        ("/generate", AuthScope.INFERENCE),
    ],
)
def test_path_scope(path, scope):
    assert path_scope(path) is scope


@pytest.mark.parametrize(
    "header,token",
    [("Bearer k1", "k1"), ("bearer  k1 ", "k1"), ("Basic k1", None), ("Bearer", None), ("", None), (None, None)],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_keys_per_scope_and_admin_fallback():
    auth = Authenticator("inf", "adm")
    auth.check(AuthScope.INFERENCE, "Bearer inf")
    auth.check(AuthScope.ADMIN, "Bearer adm")
    auth.check(AuthScope.PUBLIC, None)
    with pytest.raises(AuthError, match="incorrect"):
        auth.check(AuthScope.ADMIN, "Bearer inf")  # the inference key is not an admin key
    with pytest.raises(AuthError, match="missing admin API key"):
        auth.check(AuthScope.ADMIN, None)
    with pytest.raises(AuthError, match="missing API key"):
        auth.check(AuthScope.INFERENCE, "Token inf")
    fallback = Authenticator("inf", None)
    fallback.check(AuthScope.ADMIN, "Bearer inf")
    with pytest.raises(AuthError):
        fallback.check(AuthScope.ADMIN, "Bearer nope")
    Authenticator(None, None).check(AuthScope.ADMIN, None)  # no keys: open


def test_non_ascii_key_does_not_crash():
    with pytest.raises(AuthError) as info:
        Authenticator("k", None).check(AuthScope.INFERENCE, "Bearer ключ")
    assert info.value.status == 401 and info.value.code == "invalid_api_key"


async def test_middleware_guards_routes_by_scope():
    async def ok(_):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in ("/health", "/v1/models", "/workers")])
    app.add_middleware(AuthMiddleware, authenticator=Authenticator("inf", "adm"), render_error=error_response)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer inf"})).status_code == 200
        assert (await c.get("/workers", headers={"Authorization": "Bearer adm"})).status_code == 200
        r = await c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {
            "error": {
                "message": "missing API key: send the header 'Authorization: Bearer <key>'",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        r = await c.post("/workers", headers={"Authorization": "Bearer inf"})
        assert r.status_code == 401 and "incorrect" in r.json()["error"]["message"]
