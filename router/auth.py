"""API-key checks: one key for inference endpoints, a separate admin key for `/workers*`.

Why constant-time: comparing a secret with `==` leaks, through timing, how many leading
characters matched; `hmac.compare_digest` does not. Keys are compared as UTF-8 bytes so
non-ASCII input cannot raise.

Which key a path needs (`path_scope`): `/workers...` is admin (the admin key, which
falls back to the api key); `/health`, `/liveness`, `/readiness` and `/metrics` are
public (orchestrators and Prometheus probe them without secrets); everything else is
inference. A scope with no key configured is open.

Wiring (router/app.py):
- At app start: `app.add_middleware(AuthMiddleware, authenticator=Authenticator(config.api_key,
  config.admin_api_key), render_error=router.render.error_response)` — it answers 401
  (`router.errors.AuthError`) before any route runs, for every route including ones
  added later. Nothing per request, nothing at shutdown.
"""

from __future__ import annotations

import enum
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import AuthError
from router.render import RenderError

PUBLIC_PATHS = frozenset({"/health", "/liveness", "/readiness", "/metrics"})
ADMIN_PREFIX = "/workers"


class AuthScope(enum.StrEnum):
    PUBLIC = "public"
    INFERENCE = "inference"
    ADMIN = "admin"


def path_scope(path: str) -> AuthScope:
    if path in PUBLIC_PATHS:
        return AuthScope.PUBLIC
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return AuthScope.ADMIN
    return AuthScope.INFERENCE


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Pure key check: no I/O, no framework types beyond a header value."""

    def __init__(self, api_key: str | None, admin_api_key: str | None) -> None:
        self._keys = {
            AuthScope.INFERENCE: api_key.encode() if api_key else None,
            AuthScope.ADMIN: (admin_api_key or api_key or "").encode() or None,
        }

    def check(self, scope: AuthScope, authorization: str | None) -> None:
        """Raise `AuthError` unless `authorization` carries the key `scope` needs."""
        expected = self._keys.get(scope)
        if expected is None:
            return
        token = bearer_token(authorization)
        if token is None:
            what = "admin API key" if scope is AuthScope.ADMIN else "API key"
            raise AuthError(f"missing {what}: send the header 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(token.encode(), expected):
            raise AuthError("incorrect API key provided; check the key the router was started with")

    def authorize(self, scope: Scope) -> None:
        """`check` for an ASGI HTTP scope: its path picks the key; `AuthError` if refused.

        The header is looked up only when the path's scope has a key: an open router pays
        nothing per request (the inference fast path in router/app.py calls this too).
        """
        kind = path_scope(scope["path"])
        if self._keys.get(kind) is None:
            return
        self.check(kind, _authorization(scope))


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    """ASGI middleware applying `Authenticator` to every HTTP request by its path."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, render_error: RenderError) -> None:
        self.app = app
        self.authenticator = authenticator
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.authenticator.authorize(scope)
            except AuthError as err:
                await self.render_error(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
