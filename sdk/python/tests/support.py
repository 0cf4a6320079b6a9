"""Test support: a real Mandate binary on loopback ports, its admin API, a small identity
provider, and uvicorn servers in threads. Nothing here is faked: every piece listens on
127.0.0.1 and is reached over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from mandate import SigningKey
from mandate.envelope import sign_jws

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: ASGIApp, port: int = 0) -> Iterator[str]:
    """Runs app on a loopback port in a thread; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def build_mandate(out: Path) -> Path:
    binary = os.environ.get("MANDATE_BIN")
    if binary:
        return Path(binary)
    target = out / "mandate"
    go = "go"
    if not any((Path(p) / "go").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        go = "/usr/local/go/bin/go"
    subprocess.run([go, "build", "-o", str(target), "./cmd/mandate"], cwd=REPO_ROOT, check=True)
    return target


@dataclass
class Mandate:
    issuer: str
    admin_url: str
    admin_secret: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _admin_token: str = ""

    def admin_token(self) -> str:
        if not self._admin_token:
            r = httpx.post(
                self.issuer + "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=("mandate-admin", self.admin_secret),
            )
            r.raise_for_status()
            self._admin_token = r.json()["access_token"]
        return self._admin_token

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(
            method,
            self.admin_url + "/admin/v1" + path,
            json=body,
            headers={"Authorization": "Bearer " + self.admin_token()},
        )
        if r.status_code // 100 != 2:
            raise AssertionError(f"admin {method} {path}: HTTP {r.status_code}: {r.text}")
        return r.json() if r.content else None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def run_mandate(workdir: Path) -> Iterator[Mandate]:
    binary = build_mandate(workdir)
    pub, adm = free_port(), free_port()
    issuer = f"http://127.0.0.1:{pub}"
    secret = secrets.token_hex(24)
    env = {
        **os.environ,
        "MANDATE_PUBLIC_ADDR": f"127.0.0.1:{pub}",
        "MANDATE_ADMIN_ADDR": f"127.0.0.1:{adm}",
        "MANDATE_ISSUER": issuer,
        "MANDATE_BOOTSTRAP_ADMIN_SECRET": secret,
        "MANDATE_LOG_FORMAT": "json",
        "MANDATE_LOG_LEVEL": "warn",
    }
    log_path = workdir / "mandate.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            [str(binary), "--database", str(workdir / "m.db")], env=env, stdout=logf, stderr=logf
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("mandate exited: " + log_path.read_text(errors="replace")[-2000:])
                try:
                    if httpx.get(issuer + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("mandate did not become ready")
                time.sleep(0.1)
            yield Mandate(issuer, f"http://127.0.0.1:{adm}", secret, proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Setup:
    """One provisioned world: an MCP client with its envelope key, audiences and a
    tenant, unique per test."""

    mandate: Mandate
    client_id: str
    secret: str
    key: SigningKey
    tenant: str
    audiences: dict[str, list[str]] = field(default_factory=dict)
    assertion_key: SigningKey | None = None


def provision(
    m: Mandate,
    *,
    auth_method: str = "client_secret_basic",
    keys: list[SigningKey] | None = None,
    audiences: dict[str, list[str]] | None = None,
    token_ttl: int | None = None,
    extra_client: dict[str, Any] | None = None,
) -> Setup:
    key = (keys or [SigningKey.generate("ES256")])[0]
    assertion = SigningKey.generate("ES256") if auth_method == "private_key_jwt" else None
    tenant = uid("t")
    auds: dict[str, list[str]] = {}
    for name, scopes in (audiences or {"orders": ["orders:read", "orders:write"]}).items():
        aid = uid(name)
        body: dict[str, Any] = {"id": aid, "name": name, "scopes": scopes, "allowed_modes": ["on_behalf_of"]}
        if token_ttl:
            body["token_ttl"] = token_ttl
        m.admin("POST", "/audiences", body)
        auds[name] = [aid]
    jwk_keys = [k.public_jwk() for k in (keys or [key])]
    if assertion is not None:
        jwk_keys.append(assertion.public_jwk())
    cid = uid("mcp")
    created = m.admin(
        "POST",
        "/clients",
        {
            "client_id": cid,
            "name": "test MCP server",
            "token_endpoint_auth_method": auth_method,
            "jwks": {"keys": jwk_keys},
            "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "allowed_tenants": [tenant],
            **(extra_client or {}),
        },
    )
    return Setup(m, cid, created.get("client_secret", ""), key, tenant, auds, assertion)


def grant(s: Setup, user: str, audiences: list[str], scopes: list[str], agent_id: str = "") -> str:
    body: dict[str, Any] = {
        "tenant": s.tenant,
        "subject": user,
        "client_id": s.client_id,
        "audiences": audiences,
        "scopes": scopes,
        "modes": ["on_behalf_of"],
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)),
    }
    if agent_id:
        body["agent_id"] = agent_id
    return str(s.mandate.admin("POST", "/grants", body)["id"])


class IdP:
    """A tiny identity provider: signs user access tokens (ES256, at+jwt) and serves its
    JWKS at /.well-known/jwks.json once mounted."""

    def __init__(self) -> None:
        self.key = SigningKey.generate("ES256")
        self.issuer = ""
        self.jwks_requests = 0

    def app(self) -> Starlette:
        async def jwks(_: Request) -> Response:
            self.jwks_requests += 1
            return JSONResponse({"keys": [self.key.public_jwk()]})

        return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])

    def mint(
        self, sub: str, tenant: str, audience: str, scopes: str = "", ttl: int = 900, **extra: Any
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience,
            "tenant": tenant,
            "scope": scopes,
            "client_id": "test-chat-app",
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
            **extra,
        }
        return sign_jws(self.key, {"alg": "ES256", "typ": "at+jwt", "kid": self.key.kid}, claims)


def find_secret(
    obj: Any, secret: str, path: str = "", seen: set[int] | None = None, depth: int = 0
) -> list[str]:
    """Every place under obj (mappings, sequences, attributes, bytes) that holds secret."""
    seen = seen if seen is not None else set()
    if depth > 8 or id(obj) in seen:
        return []
    seen.add(id(obj))
    hits: list[str] = []
    if isinstance(obj, str):
        return [path] if secret in obj else []
    if isinstance(obj, bytes | bytearray):
        return [path] if secret.encode() in obj else []
    if isinstance(obj, int | float | bool) or obj is None:
        return []
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            hits += find_secret(k, secret, f"{path}[key]", seen, depth + 1)
            hits += find_secret(v, secret, f"{path}[{k!r}]", seen, depth + 1)
        return hits
    if isinstance(obj, list | tuple | set | frozenset):
        for i, v in enumerate(list(obj)):
            hits += find_secret(v, secret, f"{path}[{i}]", seen, depth + 1)
        return hits
    attrs: dict[str, Any] = {}
    with contextlib.suppress(TypeError):
        attrs.update(vars(obj))
    for slot in getattr(type(obj), "__slots__", ()):
        with contextlib.suppress(AttributeError):
            attrs[slot] = getattr(obj, slot)
    with contextlib.suppress(Exception):
        if hasattr(obj, "model_dump"):
            attrs["model_dump"] = obj.model_dump()
    for k, v in attrs.items():
        hits += find_secret(v, secret, f"{path}.{k}", seen, depth + 1)
    return hits


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
