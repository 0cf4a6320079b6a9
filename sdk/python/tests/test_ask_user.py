"""ask_user with the official SDK (MCPServer over streamable HTTP, uvicorn), the boundary,
an identity provider and a real Mandate: a tool refused for lack of a grant answers a
client that declared URL-mode elicitation with the -32042 error naming Mandate's consent
page, and any other client with a tool error whose text carries the link; once an admin
approves the request, the same call succeeds."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from mcp.client import ClientRequestContext
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp.types import (
    URL_ELICITATION_REQUIRED,
    ClientCapabilities,
    ElicitationCapability,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    FormElicitationCapability,
)

from mandate import AsyncDelegator, ClientError, Delegator, GrantRequiredError, Signer
from mandate.mcp import (
    Boundary,
    ConsentRequiredError,
    ask_user,
    require_identity,
    supports_url_elicitation,
    tool_errors,
)
from support import IdP, Mandate, free_port, grant, provision, serve

pytestmark = pytest.mark.integration

AGENT = "support-agent"
PURPOSE = "Summarise your documents"


@dataclass
class Stack:
    mcp_url: str
    tenant: str
    docs: str
    orders: str
    idp: IdP
    delegator: Delegator
    """For the test's own calls: the tools' AsyncDelegator belongs to the server's loop."""
    answers: list[BaseException] = field(default_factory=list)


@pytest.fixture(scope="module")
def stack(mandate: Mandate, idp: IdP) -> Iterator[Stack]:
    s = provision(mandate, audiences={"docs": ["docs:read"], "orders": ["orders:read"]})
    docs, orders = s.audiences["docs"][0], s.audiences["orders"][0]
    mandate.admin("PATCH", f"/audiences/{docs}", {"user_consent": "allowed"})
    grant(s, "bob", [orders], ["orders:read"], agent_id=AGENT)
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    boundary = Boundary(issuer=idp.issuer, audience=mcp_url, client_id=s.client_id, agent_id=AGENT)
    server = MCPServer(
        "docs",
        token_verifier=boundary.token_verifier,
        auth=boundary.auth_settings(),
        middleware=[boundary.middleware],
    )
    adelegator = AsyncDelegator(
        issuer=mandate.issuer, client_id=s.client_id, signer=Signer(s.key), client_secret=s.secret
    )
    sdelegator = Delegator(
        issuer=mandate.issuer, client_id=s.client_id, signer=Signer(s.key), client_secret=s.secret
    )
    st = Stack(mcp_url, s.tenant, docs, orders, idp, sdelegator)

    async def read(ctx: Context, audience: str, scope: str, d: AsyncDelegator | Delegator) -> str:
        with tool_errors():
            try:
                tok = await adelegator.token(require_identity(), audience, [scope])
            except GrantRequiredError as e:
                try:
                    await ask_user(d, ctx, e, audiences=[audience], scopes=[scope], purpose=PURPOSE)
                except BaseException as answer:
                    st.answers.append(answer)  # for the test to inspect
                    raise
        return f"read as {require_identity().actor.sub} with {tok.scope}"

    @server.tool()
    async def read_docs(ctx: Context) -> str:
        return await read(ctx, docs, "docs:read", adelegator)

    @server.tool()
    async def read_docs_sync_delegator(ctx: Context) -> str:
        return await read(ctx, docs, "docs:read", sdelegator)

    @server.tool()
    async def read_orders(ctx: Context) -> str:
        return await read(ctx, orders, "orders:read", adelegator)

    with serve(boundary.streamable_http_app(server), port=port):
        yield st
    sdelegator.close()


async def accept(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
    return ElicitResult(action="accept")


@contextlib.asynccontextmanager
async def connect(st: Stack, user: str, *, elicitation: bool) -> AsyncIterator[ClientSession]:
    token = st.idp.mint(user, st.tenant, st.mcp_url, "docs:read orders:read")
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer " + token}, timeout=30) as hc,
        streamable_http_client(st.mcp_url, http_client=hc) as (read, write),
        ClientSession(read, write, elicitation_callback=accept if elicitation else None) as session,
    ):
        await session.initialize()
        yield session


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def link_id(st: Stack, s: str) -> str:
    m = re.search(re.escape(st.delegator._core.issuer) + r"/consent/(gr_[A-Za-z0-9_-]+)", s)
    assert m, s
    return m.group(1)


async def test_a_client_with_url_elicitation_is_asked_through_it(stack: Stack, mandate: Mandate) -> None:
    async with connect(stack, "carol", elicitation=True) as s:
        stack.answers.clear()
        with pytest.raises(MCPError) as e:
            await s.call_tool("read_docs", {})
        assert e.value.code == URL_ELICITATION_REQUIRED == -32042
        [el] = UrlElicitationRequiredError.from_error(e.value.error).elicitations
        rid = link_id(stack, el.url)
        assert el.url == f"{mandate.issuer}/consent/{rid}"
        assert el.message == f"{PURPOSE}. Approve access in your browser: {el.url}"
        assert el.elicitation_id == rid  # the request id identifies the elicitation
        assert isinstance(stack.answers[0], UrlElicitationRequiredError)
        assert stack.answers[0].elicitations[0].elicitation_id == rid

        stored = mandate.admin("GET", f"/grant-requests/{rid}")
        assert (stored["subject"], stored["agent_id"], stored["audiences"], stored["purpose"]) == (
            "carol",
            AGENT,
            [stack.docs],
            PURPOSE,
        )
        mandate.admin("POST", f"/grant-requests/{rid}/approve")
        assert stack.delegator.grant_request_status(rid).status == "approved"
        result = await s.call_tool("read_docs", {})
        assert not result.is_error, text(result)
        assert "read as carol with docs:read" in text(result)


@pytest.mark.parametrize("tool", ["read_docs", "read_docs_sync_delegator"])
async def test_other_clients_get_a_tool_error_with_the_link(
    stack: Stack, mandate: Mandate, tool: str
) -> None:
    async with connect(stack, f"dave-{tool}", elicitation=False) as s:
        stack.answers.clear()
        result = await s.call_tool(tool, {})
    assert result.is_error
    rid = link_id(stack, text(result))
    assert "no_active_grant" in text(result)
    assert text(result).endswith(f"{PURPOSE}. Approve access in your browser: {mandate.issuer}/consent/{rid}")
    answer = stack.answers[0]
    assert isinstance(answer, ConsentRequiredError)
    assert answer.link.request_id == rid
    assert isinstance(answer.__cause__, GrantRequiredError)
    assert stack.delegator.grant_request_status(rid).status == "pending"


async def test_what_ask_user_leaves_alone(stack: Stack, mandate: Mandate) -> None:
    async with connect(stack, "erin", elicitation=True) as s:
        stack.answers.clear()
        # The orders are admin_only: nothing to ask the user; the refusal is the tool error.
        result = await s.call_tool("read_orders", {})
    assert result.is_error
    assert "no_active_grant" in text(result) and stack.orders in text(result)
    assert isinstance(stack.answers[0], GrantRequiredError)
    assert mandate.admin("GET", "/grant-requests?subject=erin")["items"] == []
    # Outside a request that passed the boundary there is nobody to ask.
    err = GrantRequiredError(
        code="invalid_request",
        reason="no_active_grant",
        status=400,
        audience=stack.docs,
        grant_request_endpoint=mandate.issuer + "/oauth2/grant-requests",
    )
    with pytest.raises(GrantRequiredError) as got:
        await ask_user(stack.delegator, None, err, audiences=[stack.docs], scopes=["docs:read"], purpose="")
    assert got.value is err
    other = ValueError("boom")
    with pytest.raises(ValueError, match="boom") as raised:
        await ask_user(stack.delegator, None, other, audiences=[], scopes=[], purpose="")
    assert raised.value is other
    caps = ClientCapabilities(elicitation=ElicitationCapability(form=FormElicitationCapability()))
    assert not supports_url_elicitation(caps)
    assert not supports_url_elicitation(None)


async def test_a_refused_grant_request_is_the_answer(stack: Stack, mandate: Mandate) -> None:
    from mandate.envelope import Actor, Agent, Session
    from mandate.identity import Identity, use_identity

    identity = Identity(Actor("user", "fay", stack.tenant), Agent(AGENT), Session("s"), ("docs:read",))
    with pytest.raises(GrantRequiredError) as refused:
        stack.delegator.token(identity, stack.docs)
    with use_identity(identity), pytest.raises(ClientError) as answer:
        await ask_user(
            stack.delegator,
            None,
            refused.value,
            audiences=[stack.docs],
            scopes=["docs:read"],
            purpose="too long",
            duration=365 * 86400,
        )
    assert answer.value.reason == "consent_duration_too_long"
    assert answer.value.__cause__ is refused.value
    # Without a context (or on a client without URL elicitation): the link in a tool error.
    with use_identity(identity), pytest.raises(ConsentRequiredError) as asked:
        await ask_user(
            stack.delegator, None, refused.value, audiences=[stack.docs], scopes=["docs:read"], purpose=""
        )
    assert asked.value.__cause__ is refused.value
    assert str(asked.value).endswith("Approve access in your browser: " + asked.value.link.url)
