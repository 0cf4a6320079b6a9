"""The demo's pieces, in Python: Mandate (the binary built from this repository, SQLite in
a temporary directory), a demo identity provider, an orders API and a billing API
(``mandate.asgi``), and an MCP server on the official SDK behind ``mandate.mcp``. Every
piece listens on a loopback port."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mandate import AsyncDelegator, AsyncVerifier, Introspection, Signer, SigningKey
from mandate.asgi import MandateAuthMiddleware, get_principal
from mandate.envelope import sign_jws
from mandate.mcp import Boundary, require_identity, tool_errors

REPO = Path(__file__).resolve().parents[2]
MCP_CLIENT_ID, ORDERS_CLIENT_ID, AGENT_ID, TENANT = "demo-mcp", "orders-api", "support-agent", "acme"
ORDERS, BILLING = "orders_api", "billing_api"
USERS = {u: ["orders:read", "balance:read"] for u in ("alice", "bob", "carol")}
ORDER_DATA = {
    "acme/alice": {"A-1001": "shipped", "A-1002": "processing"},
    "acme/bob": {"B-2001": "delivered"},
}
BALANCES = {"acme/alice": "1250.00 EUR", "acme/bob": "-20.50 EUR", "acme/carol": "0.00 EUR"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, port: int = 0) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Mandate:
    issuer: str
    admin_url: str
    token: str = ""

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(
            method,
            f"{self.admin_url}/admin/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if r.status_code // 100 != 2:
            raise RuntimeError(f"admin {method} {path}: HTTP {r.status_code}: {r.text}")
        return r.json() if r.content else None


@contextlib.contextmanager
def run_mandate(workdir: Path) -> Iterator[Mandate]:
    """go build ./cmd/mandate (or MANDATE_BIN), SQLite in workdir, loopback ports."""
    binary = os.environ.get("MANDATE_BIN")
    if not binary:
        binary = str(workdir / "mandate")
        go = shutil.which("go") or "/usr/local/go/bin/go"
        subprocess.run([go, "build", "-o", binary, "./cmd/mandate"], cwd=REPO, check=True)
    pub, adm, secret = free_port(), free_port(), secrets.token_hex(24)
    issuer = f"http://127.0.0.1:{pub}"
    env = {
        **os.environ,
        "MANDATE_PUBLIC_ADDR": f"127.0.0.1:{pub}",
        "MANDATE_ADMIN_ADDR": f"127.0.0.1:{adm}",
        "MANDATE_ISSUER": issuer,
        "MANDATE_BOOTSTRAP_ADMIN_SECRET": secret,
        "MANDATE_LOG_LEVEL": "error",
    }
    with open(workdir / "mandate.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--database", str(workdir / "m.db")], env=env, stdout=log, stderr=log
        )
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError("mandate exited; see " + str(workdir / "mandate.log"))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(issuer + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        r = httpx.post(
            issuer + "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=("mandate-admin", secret),
        )
        r.raise_for_status()
        yield Mandate(issuer, f"http://127.0.0.1:{adm}", r.json()["access_token"])
    finally:
        proc.terminate()
        proc.wait(10)


class IdP:
    """The demo identity provider: signs user access tokens for the MCP server (no login:
    demo only) and serves its JWKS."""

    def __init__(self) -> None:
        self.key, self.issuer = SigningKey.generate("ES256"), ""

    def app(self) -> Starlette:
        async def jwks(_: Request) -> Response:
            return JSONResponse({"keys": [self.key.public_jwk()]})

        return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])

    def token(self, user: str, resource: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": resource,
            "tenant": TENANT,
            "scope": " ".join(USERS[user]),
            "client_id": "demo-chat-app",
            "iat": now,
            "exp": now + 900,
            "jti": secrets.token_hex(8),
        }
        return sign_jws(self.key, {"alg": "ES256", "typ": "at+jwt", "kid": self.key.kid}, claims)


@dataclass
class Recorder:
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, api: str, request: Request) -> dict[str, Any]:
        p = get_principal(request)
        call = {
            "api": api,
            "user": p.user,
            "tenant": p.tenant,
            "agent": p.agent.sub if p.agent else "",
            "mode": p.mode,
            "trace_id": p.trace_id,
            "traceparent": request.headers.get("traceparent", ""),
        }
        self.calls.append(call)
        return call


def orders_api(verifier: AsyncVerifier, rec: Recorder) -> Starlette:
    """GET /orders/{id} (orders:read), verified online: a revoked grant stops it at once."""

    async def order(request: Request) -> Response:
        c = rec.add(ORDERS, request)
        status = ORDER_DATA.get(f"{c['tenant']}/{c['user']}", {}).get(request.path_params["id"])
        if status is None:  # another user's order is "not found": no hint that it exists
            return JSONResponse({"error": "order not found"}, 404)
        return JSONResponse({"order_id": request.path_params["id"], "status": status, "user": c["user"]})

    app = Starlette(routes=[Route("/orders/{id}", order)])
    app.add_middleware(MandateAuthMiddleware, verifier=verifier, required_scopes=["orders:read"], online=True)
    return app


def billing_api(verifier: AsyncVerifier, rec: Recorder) -> Starlette:
    """GET /balance (balance:read), verified offline through Mandate's JWKS."""

    async def balance(request: Request) -> Response:
        c = rec.add(BILLING, request)
        return JSONResponse({"user": c["user"], "balance": BALANCES[f"{c['tenant']}/{c['user']}"]})

    app = Starlette(routes=[Route("/balance", balance)])
    app.add_middleware(MandateAuthMiddleware, verifier=verifier, required_scopes=["balance:read"])
    return app


def mcp_app(
    idp_url: str, mcp_url: str, delegator: AsyncDelegator, orders_url: str, billing_url: str
) -> Starlette:
    """The MCP server: its tools read who they act for from the boundary, never from their
    arguments or a token, and reach the APIs through the delegator's clients."""
    boundary = Boundary(issuer=idp_url, audience=mcp_url, client_id=MCP_CLIENT_ID, agent_id=AGENT_ID)
    server = MCPServer(
        "mandate-demo-mcp",
        token_verifier=boundary.token_verifier,
        auth=boundary.auth_settings(),
        middleware=[boundary.middleware],
        log_level="ERROR",
    )
    orders = delegator.client(ORDERS, scopes=["orders:read"])
    billing = delegator.client(BILLING, scopes=["balance:read"])

    @server.tool()
    async def get_order_status(order_id: str) -> dict[str, Any]:
        """Status of one of the current user's orders."""
        with tool_errors():
            r = await orders.get(f"{orders_url}/orders/{order_id}")
        return {**r.json(), "trace_id": require_identity().session.trace_id}

    @server.tool()
    async def get_balance() -> dict[str, Any]:
        """The current user's account balance."""
        with tool_errors():
            r = await billing.get(f"{billing_url}/balance")
        return {**r.json(), "trace_id": require_identity().session.trace_id}

    return boundary.streamable_http_app(server)


def provision(m: Mandate, envelope_key: SigningKey) -> tuple[str, str, dict[str, str]]:
    """Audiences, the MCP server's client, the orders API's introspection client, and
    grants: alice → orders + billing, bob → orders, carol → none."""
    for aud, scope in ((ORDERS, "orders:read"), (BILLING, "balance:read")):
        m.admin(
            "POST",
            "/audiences",
            {"id": aud, "name": aud, "scopes": [scope], "allowed_modes": ["on_behalf_of"]},
        )
    mcp = m.admin(
        "POST",
        "/clients",
        {
            "client_id": MCP_CLIENT_ID,
            "name": "Demo MCP server (Python)",
            "token_endpoint_auth_method": "client_secret_basic",
            "jwks": {"keys": [envelope_key.public_jwk()]},
            "allowed_tenants": [TENANT],
            "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        },
    )
    api = m.admin(
        "POST",
        "/clients",
        {
            "client_id": ORDERS_CLIENT_ID,
            "name": "Orders API (introspection)",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
        },
    )
    grants = {}
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    for user, auds in (("alice", [ORDERS, BILLING]), ("bob", [ORDERS])):
        scopes = ["orders:read", "balance:read"] if len(auds) == 2 else ["orders:read"]
        g = m.admin(
            "POST",
            "/grants",
            {
                "tenant": TENANT,
                "subject": user,
                "client_id": MCP_CLIENT_ID,
                "agent_id": AGENT_ID,
                "audiences": auds,
                "scopes": scopes,
                "modes": ["on_behalf_of"],
                "expires_at": expires,
            },
        )
        grants[user] = g["id"]
    return mcp["client_secret"], api["client_secret"], grants


def introspection(secret: str) -> Introspection:
    return Introspection(ORDERS_CLIENT_ID, secret)


def signer(key: SigningKey) -> Signer:
    return Signer(key)
