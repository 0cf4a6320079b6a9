"""The Mandate demo in Python: a demo identity provider, Mandate (built from this
repository, SQLite in a temporary directory), an MCP server on the official SDK behind
mandate.mcp, and two downstream APIs on mandate.asgi. It calls the tools as alice, bob and
carol, revokes alice's grant, and prints what the APIs saw and Mandate's audit trail.

    ./run.sh            (creates .venv, installs ../../sdk/python, runs this)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

import stack
from mandate import AsyncDelegator, AsyncVerifier, SigningKey


async def call_tool(mcp_url: str, token: str, tool: str, args: dict[str, Any]) -> tuple[str, bool, str]:
    trace = secrets.token_hex(16)
    headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(mcp_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool(tool, args)
    text = "".join(getattr(c, "text", "") for c in result.content)
    return trace, bool(result.is_error), " ".join(text.split())[:150]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main() -> int:
    with contextlib.ExitStack() as es:
        tmp = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="mandate-py-demo-")))
        m = es.enter_context(stack.run_mandate(tmp))
        idp = stack.IdP()
        idp.issuer = es.enter_context(stack.serve(idp.app()))
        key = SigningKey.generate("ES256", "mcp-envelope-1")
        mcp_secret, api_secret, grants = stack.provision(m, key)

        orders_rec, billing_rec = stack.Recorder(), stack.Recorder()
        orders_v = AsyncVerifier(
            issuer=m.issuer, audience=stack.ORDERS, introspection=stack.introspection(api_secret)
        )
        orders_url = es.enter_context(stack.serve(stack.orders_api(orders_v, orders_rec)))
        billing_url = es.enter_context(
            stack.serve(
                stack.billing_api(AsyncVerifier(issuer=m.issuer, audience=stack.BILLING), billing_rec)
            )
        )

        port = stack.free_port()
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        delegator = AsyncDelegator(
            issuer=m.issuer,
            client_id=stack.MCP_CLIENT_ID,
            signer=stack.signer(key),
            client_secret=mcp_secret,
            audiences={stack.ORDERS: [orders_url], stack.BILLING: [billing_url]},
        )
        es.enter_context(
            stack.serve(stack.mcp_app(idp.issuer, mcp_url, delegator, orders_url, billing_url), port=port)
        )

        print(f"Mandate     {m.issuer} (admin {m.admin_url}, SQLite in {tmp})")
        print(f"demo IdP    {idp.issuer}\nMCP server  {mcp_url}\norders API  {orders_url} (introspection)")
        print(f"billing API {billing_url} (offline JWKS)\n")
        print(
            "Provisioned: audiences orders_api, billing_api; client demo-mcp;"
            " grants alice→orders_api+billing_api, bob→orders_api.\n"
        )

        def step(user: str, tool: str, order: str = "") -> None:
            args = {"order_id": order} if order else {}
            trace, is_error, text = asyncio.run(call_tool(mcp_url, idp.token(user, mcp_url), tool, args))
            label = f"{tool}({order})" if order else tool
            print(f"{user:<6} {label:<26} trace {trace[:12]}…  {'ERROR' if is_error else 'ok   '} {text}")

        for user, tool, order in (
            ("alice", "get_order_status", "A-1001"),
            ("alice", "get_balance", ""),
            ("bob", "get_order_status", "B-2001"),
            ("bob", "get_order_status", "A-1001"),
            ("bob", "get_balance", ""),
            ("carol", "get_order_status", "C-3001"),
        ):
            step(user, tool, order)
        print("\n-- admin revokes alice's grant --")
        m.admin("POST", f"/grants/{grants['alice']}/revoke", {"reason": "demo: access withdrawn"})
        step("alice", "get_order_status", "A-1002")

        print("\nWhat the downstream APIs saw (from their verified tokens):")
        rows = [["API", "USER", "AGENT", "MODE", "TOKEN TRACE", "TRACEPARENT"]]
        rows += [
            [c["api"], c["user"] or "-", c["agent"], c["mode"], c["trace_id"], c["traceparent"]]
            for c in orders_rec.calls + billing_rec.calls
        ]
        print(table(rows))

        audit = m.admin("GET", "/audit?event=token_exchange&limit=100")["items"][::-1]
        print("\nMandate audit trail (GET /admin/v1/audit?event=token_exchange):")
        rows = [["OUTCOME", "REASON", "USER", "AGENT", "MODE", "AUDIENCE", "TRACE ID"]]
        rows += [
            [
                a["outcome"],
                a.get("reason") or "-",
                f"{a.get('tenant', '')}/{a.get('actor_sub', '')}",
                a.get("agent_id") or "-",
                a.get("delegation_mode") or "-",
                a.get("audience") or "-",
                a.get("trace_id") or "-",
            ]
            for a in audit
        ]
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
