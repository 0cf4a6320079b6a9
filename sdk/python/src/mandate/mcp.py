"""The identity boundary for MCP servers built on the official ``mcp`` SDK 2.x
(``MCPServer``; in mcp 2 FastMCP *is* MCPServer).

It plugs into the SDK's own seams:

- ``MandateTokenVerifier`` is the SDK's ``TokenVerifier``: it verifies the inbound user
  token (JWKS, issuer, audience = this MCP server, algorithms, time claims with leeway),
  maps its claims (subject, tenant, agent, scopes) and returns an ``AccessToken`` whose
  ``token`` is a placeholder, never the user's token.
- ``MandateMiddleware`` is a ``ServerMiddleware``: for every message it derives the
  execution identity of that very request (trace from the OpenTelemetry span the SDK's
  middleware opened, else ``_meta.traceparent``, else the HTTP ``traceparent``, else a
  new one; the session) and makes it current while the handler runs, so tools call
  ``get_identity()`` and the delegator's clients find it.
- ``Boundary.streamable_http_app`` removes the ``Authorization`` header after the SDK's
  authentication ran, so neither ``ctx.request_context.request``, nor the transport's
  headers, nor ``get_access_token()`` hands a tool the user's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, NoReturn, cast

import httpx
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import UrlElicitationRequiredError
from mcp.types import ClientCapabilities, ElicitRequestURLParams
from opentelemetry import trace
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from . import _jose
from .delegator import AsyncDelegator, Delegator, DestinationError, GrantRequestLink, NoIdentityError
from .downstream import AsyncJWKS, InvalidTokenError, TokenVerificationError
from .envelope import ACTOR_USER, AGENT_TYPE_MCP, MODE_ON_BEHALF_OF, MODES, Actor, Agent, Session
from .errors import GrantRequiredError, MandateError, grant_required
from .identity import Identity, current_identity, new_trace_id, parse_traceparent, use_identity

__all__ = [
    "REDACTED_TOKEN",
    "Boundary",
    "ClaimMapping",
    "ConsentRequiredError",
    "IdentityRequiredError",
    "MandateMiddleware",
    "MandateTokenVerifier",
    "StripAuthorization",
    "ask_user",
    "get_identity",
    "require_identity",
    "supports_url_elicitation",
    "tool_errors",
]

log = logging.getLogger("mandate.mcp")

REDACTED_TOKEN: Final = "mandate:redacted"
"""What ``AccessToken.token`` holds instead of the user's token."""

IDENTITY_CLAIM: Final = "mandate.identity"
DEFAULT_INBOUND_ALGORITHMS: Final = ("ES256", "ES384", "EdDSA", "RS256", "PS256")


class IdentityRequiredError(RuntimeError):
    """A tool asked for the caller's identity outside an authenticated request."""


def get_identity() -> Identity | None:
    """The identity of the request this tool call belongs to (None when the request did
    not come through the boundary, e.g. on stdio)."""
    return current_identity()


def require_identity() -> Identity:
    identity = current_identity()
    if identity is None:
        raise IdentityRequiredError("no caller identity: the request did not pass the Mandate boundary")
    return identity


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Turns Mandate's refusals (``MandateError``: the audience, the reason, Mandate's
    words) and a missing identity into the SDK's ``ToolError``, whose message reaches the
    model; any other exception stays a crash whose text the SDK keeps on the server. A
    ``GrantRequiredError`` is the place to ask the user for a grant."""
    try:
        yield
    except (MandateError, NoIdentityError, IdentityRequiredError, DestinationError) as e:
        raise ToolError(str(e)) from e


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Which inbound claims become which identity members. A name may be a dotted path
    into nested objects (``"ext.tenant_id"``)."""

    subject: str = "sub"
    tenant: str = "tenant"
    default_tenant: str = ""
    """Used when the token has no tenant claim. When both are empty the token is refused:
    an identity without a tenant cannot be authorized."""
    scopes: str = "scope"
    """A space-separated string (RFC 9068 ``scope``) or an array (``scp``)."""
    session: str = "sid"
    agent_id: str = ""
    """When set, the claim naming the agent (for example ``azp``); else the boundary's
    ``agent_id``."""
    client_id: str = "client_id"
    """The MCP client the user authorized (``client_id``, else ``azp``)."""


def _lookup(claims: Mapping[str, Any], path: str) -> Any:
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _string_claim(claims: Mapping[str, Any], path: str) -> str:
    v = _lookup(claims, path)
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)  # some IdPs send numeric user ids
    raise InvalidTokenError("malformed", f"claim {path} is not a string")


def _inbound_type_ok(typ: object) -> bool:
    # What identity providers put in typ for access tokens. Other types (an ID token,
    # Mandate's own eie+jwt) are refused so one kind of token cannot stand in for another.
    return typ is None or (
        isinstance(typ, str) and typ.lower() in ("", "jwt", "at+jwt", "application/at+jwt")
    )


def _date(v: Any, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v < 0 or v > 1 << 37:
        raise InvalidTokenError("malformed", f"{name} is malformed")
    return float(v)


class MandateTokenVerifier:
    """The ``mcp`` SDK's ``TokenVerifier`` for the inbound user token. Use it through
    ``Boundary``, which also configures the rest of the boundary."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        client_id: str,
        agent_id: str = "",
        jwks_url: str | None = None,
        algorithms: Sequence[str] = DEFAULT_INBOUND_ALGORITHMS,
        leeway: float = 30.0,
        mode: str = MODE_ON_BEHALF_OF,
        claims: ClaimMapping | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience or not client_id:
            raise ValueError("issuer, audience and client_id are required")
        mapping = claims or ClaimMapping()
        if not agent_id and not mapping.agent_id:
            raise ValueError("set agent_id or claims.agent_id")
        if mode not in MODES:
            raise ValueError(f"unknown delegation mode {mode!r}")
        bad = [a for a in algorithms if a not in _jose.SUPPORTED_ALGS]
        if bad or not algorithms:
            raise ValueError(f"unsupported algorithms {bad}")
        self.issuer = issuer
        self.audience = audience
        self.client_id = client_id
        self.agent_id = agent_id
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.mode = mode
        self.claims = mapping
        self.clock = clock
        self.jwks = AsyncJWKS(
            jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json", http_client=http_client, clock=clock
        )

    def __repr__(self) -> str:
        return f"MandateTokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK's hook. None refuses the request (the SDK answers 401
        ``invalid_token``); the reason is logged, never the token."""
        try:
            claims = await self.verify(token)
            identity = self.identity(claims)
        except TokenVerificationError as e:
            log.info("inbound token refused: %s (%s)", e.reason, e.description)
            return None
        exp = float(claims["exp"])
        return AccessToken(
            token=REDACTED_TOKEN,
            client_id=identity.client_id or self.client_id,
            scopes=list(identity.scopes),
            # The SDK compares expires_at with no leeway; the boundary's leeway applies.
            expires_at=int(exp + self.leeway),
            resource=self.audience,
            # Session ownership in the SDK is (client_id, iss, subject): the tenant goes
            # into the subject so two tenants' "user_1" are different users.
            subject=json.dumps([identity.actor.tenant, identity.actor.sub], separators=(",", ":")),
            claims={
                "iss": self.issuer,
                "sub": identity.actor.sub,
                "tenant": identity.actor.tenant,
                IDENTITY_CLAIM: identity,
            },
        )

    async def verify(self, token: str) -> dict[str, Any]:
        """Verifies the token and returns its claims."""
        try:
            jws = _jose.split_compact(token, 16 << 10)
        except _jose.JOSEError:
            raise InvalidTokenError("malformed", "token is not a compact JWS") from None
        h = jws.header
        alg, kid = h.get("alg"), h.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidTokenError("alg_not_allowed", "token alg is not allowed")
        if not _inbound_type_ok(h.get("typ")):
            raise InvalidTokenError("wrong_type", "token typ is not an access token type")
        if any(m in h for m in ("jku", "x5u", "jwk", "x5c", "crit")):
            raise InvalidTokenError("malformed", "token header names its own key or critical extensions")
        if not isinstance(kid, str) or not kid:
            raise InvalidTokenError("malformed", "token header has no kid")
        key = await self.jwks.key(kid)
        if (key.alg and key.alg != alg) or not _jose.verify(alg, key.key, jws.signing_input, jws.signature):
            raise InvalidTokenError("bad_signature", "token signature does not verify")
        try:
            claims = json.loads(jws.payload)
        except ValueError:
            raise InvalidTokenError("malformed", "token claims are not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidTokenError("malformed", "token claims are not a JSON object")
        now = self.clock()
        if claims.get("iss") != self.issuer:
            raise InvalidTokenError("wrong_issuer", "wrong issuer")
        aud = claims.get("aud")
        if self.audience not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
            raise InvalidTokenError("wrong_audience", "token is not for this MCP server (audience)")
        exp = _date(claims.get("exp"), "exp")
        if exp is None:
            raise InvalidTokenError("missing_claim", "exp missing")
        if now >= exp + self.leeway:
            raise InvalidTokenError("expired", "token expired")
        for name in ("iat", "nbf"):
            t = _date(claims.get(name), name)
            if t is not None and t > now + self.leeway:
                raise InvalidTokenError("not_yet_valid", f"{name} is in the future")
        return claims

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Maps verified claims onto the base identity (no trace yet)."""
        m = self.claims
        sub = _string_claim(claims, m.subject)
        if not sub:
            raise InvalidTokenError("missing_claim", f"claim {m.subject} (the user) missing")
        tenant = _string_claim(claims, m.tenant) or m.default_tenant
        if not tenant:
            raise InvalidTokenError("missing_claim", f"claim {m.tenant} (the tenant) missing")
        scopes_raw = _lookup(claims, m.scopes)
        scopes: tuple[str, ...]
        if scopes_raw is None:
            scopes = ()
        elif isinstance(scopes_raw, str):
            scopes = tuple(scopes_raw.split())
        elif isinstance(scopes_raw, list) and all(isinstance(s, str) for s in scopes_raw):
            scopes = tuple(scopes_raw)
        else:
            raise InvalidTokenError(
                "malformed", f"claim {m.scopes} is neither a string nor an array of strings"
            )
        agent_id = (_string_claim(claims, m.agent_id) if m.agent_id else "") or self.agent_id
        if not agent_id:
            raise InvalidTokenError("missing_claim", f"claim {m.agent_id} (the agent) missing")
        client = _string_claim(claims, m.client_id) or _string_claim(claims, "azp")
        return Identity(
            actor=Actor(ACTOR_USER, sub, tenant),
            agent=Agent(id=agent_id, client_id=self.client_id, type=AGENT_TYPE_MCP),
            session=Session(_string_claim(claims, m.session)),
            scopes=scopes,
            mode=self.mode,
            issuer=self.issuer,
            expires_at=float(claims["exp"]),
            client_id=client,
        )


def _request_identity(ctx: ServerRequestContext[Any, Any]) -> Identity | None:
    request = ctx.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, Mapping) else None
    if not isinstance(user, AuthenticatedUser) or user.access_token.claims is None:
        return None
    base = user.access_token.claims.get(IDENTITY_CLAIM)
    if not isinstance(base, Identity):
        return None
    headers: Mapping[str, str] = getattr(request, "headers", {})
    session = base.session
    if not session.id:
        sid = headers.get("mcp-session-id") or ""
        session = Session(sid or "sess_" + new_trace_id()[:24])
    trace_id, span_id, flags = _trace(ctx, headers)
    return replace(base, session=Session(session.id, trace_id), span_id=span_id, trace_flags=flags)


def _trace(ctx: ServerRequestContext[Any, Any], headers: Mapping[str, str]) -> tuple[str, str, str]:
    # The span the SDK's OpenTelemetry middleware opened for this message is the best
    # parent: with an OpenTelemetry SDK installed it is this server's own span; without
    # one it still carries the caller's trace from _meta.
    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        return f"{sc.trace_id:032x}", f"{sc.span_id:016x}", f"{int(sc.trace_flags):02x}"
    meta = ctx.meta
    candidates = []
    if isinstance(meta, Mapping):
        candidates.append(meta.get("traceparent"))
    candidates.append(headers.get("traceparent"))
    for c in candidates:
        tp = parse_traceparent(c if isinstance(c, str) else None)
        if tp is not None:
            return tp.trace_id, tp.parent_id, tp.flags
    return new_trace_id(), "", "01"


class MandateMiddleware(ServerMiddleware[Any]):
    """The ``ServerMiddleware`` that makes each request's identity current while its
    handler runs. A request without an authenticated user gets no identity, even if its
    session was opened by one: an identity never outlives the request that proved it."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        with use_identity(_request_identity(ctx)):
            return await call_next(ctx)


class StripAuthorization:
    """ASGI middleware that removes the ``Authorization`` header from the scope passed
    on. Installed after the SDK's authentication, so what reaches the MCP transport (and
    through it ``ctx.request_context.request`` and the transport headers) no longer
    carries the user's token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class Boundary:
    """The identity boundary of one MCP server.

    ``issuer`` is the inbound identity provider, ``audience`` this MCP server's resource
    URL (tokens minted for anything else are refused), ``client_id`` this server's
    client at Mandate, ``agent_id`` the agent runtime (or ``claims.agent_id``)::

        boundary = Boundary(issuer=IDP, audience="https://mcp.example.com/mcp",
                            client_id="orders-mcp", agent_id="support-agent")
        server = MCPServer("orders", token_verifier=boundary.token_verifier,
                           auth=boundary.auth_settings(), middleware=[boundary.middleware])
        app = boundary.streamable_http_app(server)
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        client_id: str,
        agent_id: str = "",
        jwks_url: str | None = None,
        algorithms: Sequence[str] = DEFAULT_INBOUND_ALGORITHMS,
        leeway: float = 30.0,
        mode: str = MODE_ON_BEHALF_OF,
        claims: ClaimMapping | None = None,
        required_scopes: Sequence[str] = (),
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_verifier = MandateTokenVerifier(
            issuer=issuer,
            audience=audience,
            client_id=client_id,
            agent_id=agent_id,
            jwks_url=jwks_url,
            algorithms=algorithms,
            leeway=leeway,
            mode=mode,
            claims=claims,
            http_client=http_client,
            clock=clock,
        )
        self.middleware = MandateMiddleware()
        self.required_scopes = list(required_scopes)

    def auth_settings(self, **overrides: Any) -> AuthSettings:
        """``AuthSettings`` for ``MCPServer(auth=...)``: this server as a resource server
        of the identity provider (RFC 9728 metadata), audience checked by the verifier."""
        settings: dict[str, Any] = {
            "issuer_url": AnyHttpUrl(self.token_verifier.issuer),
            "resource_server_url": AnyHttpUrl(self.token_verifier.audience),
            "validate_token_resource": True,
            "required_scopes": self.required_scopes or None,
        }
        settings.update(overrides)
        return AuthSettings(**settings)

    def streamable_http_app(self, server: MCPServer[Any], **kwargs: Any) -> Starlette:
        """``server.streamable_http_app(**kwargs)`` with the user's token removed after
        authentication. The server must use this boundary's verifier and middleware."""
        if server._token_verifier is not self.token_verifier:  # the SDK keeps no public accessor
            raise ValueError("the server was not created with token_verifier=boundary.token_verifier")
        if self.middleware not in server.middleware:
            raise ValueError("the server was not created with middleware=[boundary.middleware]")
        app = server.streamable_http_app(**kwargs)
        return self.protect(app)

    @staticmethod
    def protect(app: Starlette) -> Starlette:
        """Installs ``StripAuthorization`` innermost in an app the SDK built: after its
        ``AuthenticationMiddleware`` and ``AuthContextMiddleware``, before any route."""
        if not any(cast(object, m.cls) is AuthContextMiddleware for m in app.user_middleware):
            raise ValueError("the app has no MCP authentication middleware (auth settings missing?)")
        if app.middleware_stack is not None:
            raise RuntimeError("the app has already started: protect it before serving")
        app.user_middleware.append(Middleware(StripAuthorization))
        return app


# ---------------------------------------------------------------------------------------
# Asking the user (docs/protocol.md#grant-requests-and-user-consent)


class ConsentRequiredError(ToolError):
    """The user was asked to grant access and has not yet: raised from a tool, the SDK
    answers a tool error whose text carries the link. ``link`` is the grant request;
    ``__cause__`` Mandate's refusal."""

    def __init__(self, refusal: GrantRequiredError, link: GrantRequestLink, purpose: str = "") -> None:
        super().__init__(f"{refusal}. {link.message(purpose)}")
        self.link = link


def supports_url_elicitation(capabilities: ClientCapabilities | Context[Any, Any] | None) -> bool:
    """Whether the MCP client declared URL-mode elicitation (``elicitation.url``)."""
    if isinstance(capabilities, Context):
        capabilities = capabilities.client_capabilities
    return (
        capabilities is not None
        and capabilities.elicitation is not None
        and capabilities.elicitation.url is not None
    )


async def ask_user(
    delegator: Delegator | AsyncDelegator,
    ctx: Context[Any, Any] | None,
    error: BaseException,
    *,
    audiences: Sequence[str],
    scopes: Sequence[str],
    purpose: str,
    modes: Sequence[str] = (),
    duration: int | None = None,
    any_agent: bool = False,
) -> NoReturn:
    """Turns "no grant" into "ask the user" in a tool (as Go's ``boundary.AskUser``, which
    returns the error; in Python it is raised, chained to ``error``).

    When ``error`` is a refusal the user can lift themselves (``grant_required``:
    ``no_active_grant`` or ``grant_does_not_cover_audience_or_mode`` on an audience that
    allows user consent), it creates a grant request for the current identity's user
    (``request_grant``) and raises:

    - to a client that declared URL-mode elicitation (``ctx.client_capabilities``), the
      SDK's ``UrlElicitationRequiredError`` (JSON-RPC error -32042) naming the consent
      page, with the request id as ``elicitation_id``: the client opens it and retries the
      call once the user is done;
    - otherwise a ``ConsentRequiredError`` (a ``ToolError``), whose text carries the link.

    Any other error is raised unchanged; when Mandate refuses the grant request itself,
    that refusal is raised. Inside ``tool_errors()`` every ``MandateError`` becomes a tool
    error that says why::

        @server.tool()
        async def summarise_docs(ctx: Context) -> str:
            with tool_errors():
                try:
                    r = await docs.get("https://docs.example.com/v1/docs")
                except GrantRequiredError as e:
                    await ask_user(delegator, ctx, e, audiences=["docs_api"],
                                   scopes=["docs:read"], purpose="Summarise your documents")
            return r.text
    """
    refusal = grant_required(error)
    identity = current_identity()
    if refusal is None or identity is None:
        raise error
    try:
        if isinstance(delegator, AsyncDelegator):
            link = await delegator.request_grant(
                identity,
                audiences=audiences,
                scopes=scopes,
                purpose=purpose,
                modes=modes,
                duration=duration,
                any_agent=any_agent,
            )
        else:
            link = await asyncio.to_thread(
                delegator.request_grant,
                identity,
                audiences=audiences,
                scopes=scopes,
                purpose=purpose,
                modes=modes,
                duration=duration,
                any_agent=any_agent,
            )
    except MandateError as e:
        raise e from refusal
    message = link.message(purpose)
    if supports_url_elicitation(ctx):
        raise UrlElicitationRequiredError(
            [ElicitRequestURLParams(message=message, url=link.url, elicitation_id=link.request_id)], message
        ) from refusal
    raise ConsentRequiredError(refusal, link, purpose) from refusal
