"""The MCP boundary on the official SDK (MCPServer over streamable HTTP, uvicorn), an
identity provider, a real Mandate and a downstream API on the ASGI middleware: tools get
an identity and never the user's token, and their downstream calls carry the user, the
agent and the trace."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mandate import AsyncDelegator, AsyncVerifier, Signer
from mandate.asgi import MandateAuthMiddleware, get_principal
from mandate.mcp import Boundary, get_identity, require_identity, tool_errors
from support import IdP, Mandate, find_secret, free_port, grant, provision, serve

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    mcp_url: str
    api_url: str
    tenant: str
    client_id: str
    audience: str
    idp: IdP
    reachable: list[tuple[str, Any]] = field(default_factory=list)
    api_seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def stack(mandate: Mandate, idp: IdP) -> Iterator[Stack]:
    s = provision(mandate, audiences={"orders": ["orders:read"]})
    audience = s.audiences["orders"][0]
    grant(s, "alice", [audience], ["orders:read"], agent_id="support-agent")
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    api_seen: list[dict[str, Any]] = []

    async def whoami(request: Request) -> JSONResponse:
        p = get_principal(request)
        seen = {
            "user": p.user,
            "actor_type": p.actor_type,
            "tenant": p.tenant,
            "agent": p.agent.sub if p.agent else None,
            "client_id": p.client_id,
            "trace_id": p.trace_id,
            "traceparent": request.headers.get("traceparent"),
            "scopes": list(p.scopes),
        }
        api_seen.append(seen)
        return JSONResponse(seen)

    api = Starlette(routes=[Route("/v1/whoami", whoami)])
    api.add_middleware(
        MandateAuthMiddleware,
        verifier=AsyncVerifier(issuer=mandate.issuer, audience=audience),
        required_scopes=["orders:read"],
    )
    with serve(api) as api_url:
        st = Stack(mcp_url, api_url, s.tenant, s.client_id, audience, idp, api_seen=api_seen)
        boundary = Boundary(
            issuer=idp.issuer, audience=mcp_url, client_id=s.client_id, agent_id="support-agent"
        )
        server = MCPServer(
            "orders",
            token_verifier=boundary.token_verifier,
            auth=boundary.auth_settings(),
            middleware=[boundary.middleware],
        )
        delegator = AsyncDelegator(
            issuer=mandate.issuer,
            client_id=s.client_id,
            signer=Signer(s.key),
            client_secret=s.secret,
            audiences={audience: [api_url + "/v1"]},
        )
        orders = delegator.client(audience, scopes=["orders:read"])

        @server.tool()
        async def identity() -> dict[str, Any]:
            i = require_identity()
            return {
                "sub": i.actor.sub,
                "tenant": i.actor.tenant,
                "agent": i.agent.id,
                "trace_id": i.session.trace_id,
                "span_id": i.span_id,
                "session": i.session.id,
                "scopes": list(i.scopes),
                "mode": i.mode,
            }

        @server.tool()
        def sync_identity() -> str:
            i = get_identity()
            return i.actor.sub if i else "none"

        @server.tool()
        async def call_api() -> dict[str, Any]:
            with tool_errors():
                r = await orders.get(api_url + "/v1/whoami")
            r.raise_for_status()
            result: dict[str, Any] = r.json()
            return result

        @server.tool()
        async def reach_everything(ctx: Context) -> str:
            rc = ctx.request_context
            request = rc.request
            st.reachable[:] = [
                ("ctx", ctx),
                ("request_context", rc),
                ("request", request),
                ("request.scope", getattr(request, "scope", None)),
                ("request.headers", dict(getattr(request, "headers", {}))),
                ("request.user", getattr(request, "user", None)),
                ("request.auth", getattr(request, "auth", None)),
                ("meta", rc.meta),
                ("params", rc.params),
                ("get_access_token()", get_access_token()),
                ("auth_context_var", auth_context_var.get()),
                ("contextvars", {v.name: val for v, val in contextvars.copy_context().items()}),
                ("identity", get_identity()),
            ]
            return "ok"

        app = boundary.streamable_http_app(server)
        with serve(app, port=port):
            yield st


@contextlib.asynccontextmanager
async def connect(
    st: Stack, token: str | None, traceparent: str | None = None
) -> AsyncIterator[ClientSession]:
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    if traceparent:
        headers["traceparent"] = traceparent
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as hc,
        streamable_http_client(st.mcp_url, http_client=hc) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(session: ClientSession, tool: str, **kw: Any) -> Any:
    result = await session.call_tool(tool, {}, **kw)
    assert not result.is_error, text(result)
    return result.structured_content or text(result)


async def test_tools_get_the_identity_and_the_trace(stack: Stack) -> None:
    token = stack.idp.mint("alice", stack.tenant, stack.mcp_url, "orders:read")
    trace = "0af7651916cd43dd8448eb211c80319c"
    async with connect(stack, token, f"00-{trace}-b7ad6b7169203331-01") as s:
        got = await call(s, "identity")
        assert (got["sub"], got["tenant"], got["agent"], got["mode"]) == (
            "alice",
            stack.tenant,
            "support-agent",
            "on_behalf_of",
        )
        assert got["scopes"] == ["orders:read"]
        assert got["trace_id"] == trace  # from the HTTP traceparent
        assert got["session"]  # the MCP session id (or a generated one)

        meta_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        got = await call(s, "identity", meta={"traceparent": f"00-{meta_trace}-00f067aa0ba902b7-01"})
        assert got["trace_id"] == meta_trace  # _meta wins over the HTTP header
        assert (await call(s, "sync_identity")) == "alice" or (await call(s, "sync_identity"))[
            "result"
        ] == "alice"


async def test_downstream_call_carries_user_agent_and_trace(stack: Stack) -> None:
    token = stack.idp.mint("alice", stack.tenant, stack.mcp_url, "orders:read")
    trace = "11111111111111111111111111111111"
    async with connect(stack, token) as s:
        seen = await call(s, "call_api", meta={"traceparent": f"00-{trace}-2222222222222222-01"})
    assert seen["user"] == "alice" and seen["actor_type"] == "user" and seen["tenant"] == stack.tenant
    assert seen["agent"] == "support-agent" and seen["client_id"] == stack.client_id
    assert seen["trace_id"] == trace and seen["traceparent"].split("-")[1] == trace
    assert seen["scopes"] == ["orders:read"]


async def test_no_grant_is_a_tool_error_naming_the_reason(stack: Stack) -> None:
    token = stack.idp.mint("carol", stack.tenant, stack.mcp_url, "orders:read")
    async with connect(stack, token) as s:
        result = await s.call_tool("call_api", {})
    assert result.is_error
    assert "no_active_grant" in text(result) and stack.audience in text(result)


async def test_tools_never_see_the_user_token(stack: Stack) -> None:
    """Token-leak regression: every place the SDK exposes the request to a tool."""
    token = stack.idp.mint("alice", stack.tenant, stack.mcp_url, "orders:read")
    secret = token.split(".")[2]  # the signature: unique to this token
    async with connect(stack, token) as s:
        assert (await call(s, "reach_everything")) in ("ok", {"result": "ok"})
    assert stack.reachable, "the tool did not run"
    names = dict(stack.reachable)
    assert names["request.headers"] and "authorization" not in names["request.headers"]
    assert names["get_access_token()"] is not None  # the SDK's own seam still works...
    assert names["get_access_token()"].subject  # ...and knows the user
    for name, obj in stack.reachable:
        assert find_secret(obj, secret) == [], f"the user's token is reachable from {name}"
        assert find_secret(obj, token[:60]) == [], f"part of the user's token is reachable from {name}"


@pytest.mark.parametrize(
    "case",
    ["no token", "other audience", "expired", "other issuer", "no tenant", "garbage"],
)
async def test_bad_inbound_tokens_are_refused(stack: Stack, case: str) -> None:
    idp = stack.idp
    token: str | None = None
    if case == "other audience":
        token = idp.mint("alice", stack.tenant, "http://127.0.0.1:1/mcp")
    elif case == "expired":
        token = idp.mint("alice", stack.tenant, stack.mcp_url, ttl=-120)
    elif case == "other issuer":
        token = idp.mint("alice", stack.tenant, stack.mcp_url, iss="http://evil")
    elif case == "no tenant":
        token = idp.mint("alice", "", stack.mcp_url)
    elif case == "garbage":
        token = "a.b.c"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = "Bearer " + token
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    r = httpx.post(stack.mcp_url, json=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "resource_metadata=" in r.headers["www-authenticate"]


async def test_leeway_on_expiry(stack: Stack) -> None:
    token = stack.idp.mint("alice", stack.tenant, stack.mcp_url, "orders:read", ttl=-10)  # within 30 s
    async with connect(stack, token) as s:
        assert (await call(s, "identity"))["sub"] == "alice"
    assert time.time() > 0
