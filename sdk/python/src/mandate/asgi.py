"""ASGI middleware for downstream APIs (Starlette, FastAPI, any ASGI app): verify the
bearer token with an ``AsyncVerifier``, answer RFC 6750 errors, and hand handlers the
``Principal``.

    app.add_middleware(MandateAuthMiddleware, verifier=verifier)
    ...
    principal = get_principal(request)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from .downstream import (
    AsyncVerifier,
    InsufficientScopeError,
    Principal,
    TokenVerificationError,
    check_scopes,
)

SCOPE_KEY: Final = "mandate.principal"
"""Where the middleware puts the Principal in the ASGI scope (and ``request.state``
holds it as ``mandate_principal``)."""


def _quotable(s: str) -> str:
    # RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E inside a quoted parameter.
    return "".join(c for c in s if 0x20 <= ord(c) <= 0x7E and c not in '"\\')


def challenge(realm: str, error: str = "", description: str = "", scope: str = "") -> str:
    params = []
    if realm:
        params.append(f'realm="{_quotable(realm)}"')
    if error:
        params.append(f'error="{error}"')
        if description:
            params.append(f'error_description="{_quotable(description)}"')
        if scope:
            params.append(f'scope="{_quotable(scope)}"')
    return "Bearer" + (" " + ", ".join(params) if params else "")


def error_response_parts(
    e: TokenVerificationError, realm: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a refused or unverifiable token."""
    headers = [(b"cache-control", b"no-store"), (b"content-type", b"application/json")]
    if e.status == 503:
        headers.append((b"retry-after", b"5"))
        body = {
            "error": "temporarily_unavailable",
            "error_description": "the token cannot be verified right now",
        }
        return 503, headers, json.dumps(body).encode()
    scope = e.scope if isinstance(e, InsufficientScopeError) else ""
    headers.append((b"www-authenticate", challenge(realm, e.error, e.description, scope).encode("latin-1")))
    return e.status, headers, json.dumps({"error": e.error, "error_description": e.description}).encode()


class _BadRequest(Exception):
    def __init__(self, status: int, error: str = "", description: str = "") -> None:
        self.status, self.error, self.description = status, error, description


def bearer_token(scope: Scope) -> str:
    """The token of the Authorization header (RFC 6750 §2.1 only: a token in the URL or
    the body ends up in logs)."""
    conn = HTTPConnection(scope)
    if "access_token" in conn.query_params:
        raise _BadRequest(400, "invalid_request", "send the token in the Authorization header, not the URL")
    values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
    if not values:
        raise _BadRequest(401)
    if len(values) > 1:
        raise _BadRequest(400, "invalid_request", "more than one Authorization header")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":
        raise _BadRequest(401)  # another scheme carries no bearer token: challenge for one
    token = str(token).lstrip(" ")
    if not token or " " in token or "\t" in token:
        raise _BadRequest(400, "invalid_request", "malformed Authorization header")
    return token


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MandateAuthMiddleware:
    """Verifies the bearer token of every HTTP request (offline through the JWKS, or
    with ``online=True`` through introspection, which sees a revocation at once) and puts
    the Principal in the scope. Without a token: 401 with a bare Bearer challenge; with a
    bad one: 401 ``invalid_token``; a malformed header: 400 ``invalid_request``; missing
    ``required_scopes``: 403 ``insufficient_scope``; keys or introspection unreachable:
    503."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: AsyncVerifier,
        *,
        required_scopes: Sequence[str] = (),
        online: bool = False,
        realm: str = "",
    ) -> None:
        if online and not verifier.can_introspect:
            raise ValueError("online verification needs the verifier's introspection settings")
        self.app = app
        self.verifier = verifier
        self.required_scopes = tuple(required_scopes)
        self.online = online
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            token = bearer_token(scope)
        except _BadRequest as e:
            body = (
                json.dumps({"error": e.error, "error_description": e.description}).encode()
                if e.error
                else b""
            )
            headers = [
                (b"www-authenticate", challenge(self.realm, e.error, e.description).encode("latin-1")),
                (b"cache-control", b"no-store"),
            ]
            if e.error:
                headers.append((b"content-type", b"application/json"))
            await _send(send, e.status, headers, body)
            return
        try:
            verify = self.verifier.introspect if self.online else self.verifier.verify
            principal = await verify(token, self.required_scopes)
        except TokenVerificationError as e:
            await _send(send, *error_response_parts(e, self.realm))
            return
        state = dict(scope.get("state") or {})
        state["mandate_principal"] = principal
        await self.app({**scope, "state": state, SCOPE_KEY: principal}, receive, send)


class RequireScopes:
    """An ASGI wrapper (for one route or mount) that answers 403 ``insufficient_scope``
    unless the Principal holds every scope listed. It must run inside
    ``MandateAuthMiddleware`` (without a Principal it answers 401)."""

    def __init__(self, app: ASGIApp, scopes: Sequence[str], *, realm: str = "") -> None:
        self.app, self.scopes, self.realm = app, tuple(scopes), realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        p = scope.get(SCOPE_KEY)
        if not isinstance(p, Principal):
            await _send(send, 401, [(b"www-authenticate", challenge(self.realm).encode())], b"")
            return
        try:
            check_scopes(p, self.scopes)
        except InsufficientScopeError as e:
            await _send(send, *error_response_parts(e, self.realm))
            return
        await self.app(scope, receive, send)


def get_principal(conn: HTTPConnection | Scope) -> Principal:
    """The Principal the middleware verified for this request (a Starlette/FastAPI
    ``Request`` or an ASGI scope). Raises ``LookupError`` outside the middleware."""
    scope: Any = conn.scope if isinstance(conn, HTTPConnection) else conn
    p = scope.get(SCOPE_KEY)
    if not isinstance(p, Principal):
        raise LookupError("no Mandate principal: the request did not pass MandateAuthMiddleware")
    return p


def require_scopes(*scopes: str, realm: str = "") -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A FastAPI dependency (``Depends(require_scopes("orders:read"))``) returning the
    Principal, or answering 403 ``insufficient_scope`` (401 without a Principal)."""

    async def dependency(request: HTTPConnection) -> Principal:
        p = request.scope.get(SCOPE_KEY)
        if not isinstance(p, Principal):
            raise HTTPException(401, headers={"WWW-Authenticate": challenge(realm)})
        try:
            check_scopes(p, scopes)
        except InsufficientScopeError as e:
            raise HTTPException(
                403,
                detail=e.description,
                headers={
                    "WWW-Authenticate": challenge(realm, e.error, e.description, e.scope),
                    "Cache-Control": "no-store",
                },
            ) from None
        return p

    return dependency
