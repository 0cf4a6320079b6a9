"""The downstream verifier and its ASGI middleware, against a local issuer whose JWKS
rotates: RFC 6750 answers, key rotation, one fetch at a time, 503 when keys are
unreachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mandate import AsyncVerifier, InvalidTokenError, SigningKey, VerificationUnavailableError, Verifier
from mandate.asgi import MandateAuthMiddleware, get_principal
from mandate.envelope import sign_jws
from support import serve

AUD = "orders_api"


@dataclass
class Issuer:
    url: str = ""
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate("ES256")])
    fetches: int = 0
    down: bool = False
    delay: float = 0.0

    def token(self, key: SigningKey | None = None, **claims: Any) -> str:
        k = key or self.keys[0]
        now = int(time.time())
        body = {
            "iss": self.url,
            "sub": "alice",
            "aud": AUD,
            "exp": now + 300,
            "iat": now,
            "jti": "j1",
            "client_id": "mcp-web",
            "scope": "orders:read",
            "tenant": "acme",
            "delegation_mode": "on_behalf_of",
            "actor_type": "user",
            "actor_sub": "alice",
            "agent_id": "support-agent",
            "act": {"sub": "support-agent", "client_id": "mcp-web", "act": {"sub": "planner"}},
            **claims,
        }
        header = {"alg": k.alg, "typ": claims.pop("_typ", "at+jwt"), "kid": k.kid}
        return sign_jws(k, header, {k2: v for k2, v in body.items() if v is not None})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    iss = Issuer()

    async def jwks(_: Request) -> Response:
        iss.fetches += 1
        if iss.delay:
            await asyncio.sleep(iss.delay)
        if iss.down:
            return Response(status_code=500)
        return JSONResponse({"keys": [k.public_jwk() for k in iss.keys]})

    with serve(Starlette(routes=[Route("/.well-known/jwks.json", jwks)])) as url:
        iss.url = url
        yield iss


@pytest.fixture
def fresh(issuer: Issuer) -> Issuer:
    issuer.keys = [SigningKey.generate("ES256")]
    issuer.down, issuer.delay = False, 0.0
    return issuer


def test_principal_of_a_user_token(fresh: Issuer) -> None:
    p = Verifier(issuer=fresh.url, audience=AUD).verify(fresh.token(), ["orders:read"])
    assert (p.actor_type, p.user, p.service, p.tenant, p.subject) == ("user", "alice", None, "acme", "alice")
    assert p.agent is not None and (p.agent.sub, p.agent.client_id) == ("support-agent", "mcp-web")
    assert [a.sub for a in p.prior_actors] == ["planner"]


def test_service_actor_is_never_a_user(fresh: Issuer) -> None:
    tok = fresh.token(
        sub="mcp-web",
        actor_type="service",
        actor_sub="billing-sync",
        delegation_mode="service_identity",
        act=None,
    )
    p = Verifier(issuer=fresh.url, audience=AUD).verify(tok)
    assert (p.actor_type, p.user, p.service) == ("service", None, "billing-sync")
    assert p.agent is not None and p.agent.sub == "support-agent"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"actor_type": None}, "no_actor_type"),
        ({"actor_type": "robot"}, "bad_actor_type"),
        ({"iss": "http://other"}, "wrong_issuer"),
        ({"aud": "billing_api"}, "wrong_audience"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"iat": int(time.time()) + 120}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"_typ": "JWT"}, "wrong_type"),
        ({"_typ": "eie+jwt"}, "wrong_type"),
    ],
)
def test_refusals(fresh: Issuer, claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidTokenError) as e:
        Verifier(issuer=fresh.url, audience=AUD).verify(fresh.token(**claims))
    assert e.value.reason == reason


def test_alg_allow_list_and_header_keys(fresh: Issuer) -> None:
    rsa = SigningKey.generate("RS256")
    fresh.keys.append(rsa)
    v = Verifier(issuer=fresh.url, audience=AUD)
    with pytest.raises(InvalidTokenError) as e:
        v.verify(fresh.token(key=rsa))  # RS256 is not in the default allow-list
    assert e.value.reason == "alg_not_allowed"
    k = fresh.keys[0]
    forged = sign_jws(k, {"alg": "ES256", "typ": "at+jwt", "kid": k.kid, "jwk": k.public_jwk()}, {"sub": "x"})
    with pytest.raises(InvalidTokenError):
        v.verify(forged)
    none = fresh.token().rsplit(".", 1)[0].split(".")[1]
    with pytest.raises(InvalidTokenError):
        v.verify("eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0Iiwia2lkIjoiYSJ9." + none + ".")


def test_rotation_refetches_on_unknown_kid_with_a_rate_limit(fresh: Issuer) -> None:
    now = [time.time()]
    v = Verifier(issuer=fresh.url, audience=AUD, clock=lambda: now[0])
    old = fresh.keys[0]
    v.verify(fresh.token())
    assert v.jwks.fetches == 1
    new = SigningKey.generate("EdDSA")
    fresh.keys.append(new)
    now[0] += 31
    v.verify(fresh.token(key=new))  # unknown kid: refetched
    assert v.jwks.fetches == 2
    stray = SigningKey.generate("ES256")
    for _ in range(5):
        with pytest.raises(InvalidTokenError) as e:
            v.verify(fresh.token(key=stray))
        assert e.value.reason == "unknown_kid"
    assert v.jwks.fetches == 2  # made-up kids do not turn into requests to the issuer
    now[0] += 31
    with pytest.raises(InvalidTokenError):
        v.verify(fresh.token(key=stray))
    assert v.jwks.fetches == 3  # one refetch per interval
    fresh.keys = [new]  # the old key is retired...
    v.verify(fresh.token(key=old, exp=int(now[0]) + 7200))  # ...but the cached set still holds it
    now[0] += 3601  # the cache's max age passes: the set is refetched and the old key is gone
    with pytest.raises(InvalidTokenError) as e:
        v.verify(fresh.token(key=old, exp=int(now[0]) + 300, iat=int(now[0])))
    assert e.value.reason == "unknown_kid"
    assert v.jwks.fetches == 4


async def test_one_fetch_in_flight_and_503_when_down(fresh: Issuer) -> None:
    fresh.delay = 0.2
    v = AsyncVerifier(issuer=fresh.url, audience=AUD)
    before = fresh.fetches
    await asyncio.gather(*(v.verify(fresh.token()) for _ in range(20)))
    assert fresh.fetches - before == 1
    fresh.down, fresh.delay = True, 0.0
    v2 = AsyncVerifier(issuer=fresh.url, audience=AUD)
    with pytest.raises(VerificationUnavailableError):
        await v2.verify(fresh.token())


@pytest.fixture(scope="module")
def api(issuer: Issuer) -> Iterator[str]:
    async def orders(request: Request) -> Response:
        p = get_principal(request)
        return JSONResponse({"user": p.user, "state": request.state.mandate_principal.user})

    app = Starlette(routes=[Route("/orders", orders)])
    app.add_middleware(
        MandateAuthMiddleware,
        verifier=AsyncVerifier(issuer=issuer.url, audience=AUD),
        required_scopes=["orders:read"],
        realm="orders",
    )
    with serve(app) as url:
        yield url


def test_rfc6750_answers(fresh: Issuer, api: str) -> None:
    ok = httpx.get(api + "/orders", headers={"Authorization": "Bearer " + fresh.token()})
    assert ok.status_code == 200 and ok.json() == {"user": "alice", "state": "alice"}

    r = httpx.get(api + "/orders")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="orders"'

    r = httpx.get(api + "/orders", headers={"Authorization": "Basic YTpi"})
    assert r.status_code == 401 and "error=" not in r.headers["www-authenticate"]

    r = httpx.get(api + "/orders", headers={"Authorization": "Bearer " + fresh.token(aud="billing_api")})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.headers["cache-control"] == "no-store"

    r = httpx.get(api + "/orders", headers={"Authorization": "Bearer " + fresh.token(scope="orders:write")})
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert 'scope="orders:read"' in r.headers["www-authenticate"]

    r = httpx.get(api + "/orders", headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = httpx.get(api + "/orders?access_token=" + fresh.token())
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = httpx.get(api + "/orders", headers={"Authorization": "Bearer a b"})
    assert r.status_code == 400


def test_503_when_the_keys_cannot_be_fetched(issuer: Issuer) -> None:
    async def ok(_: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/x", ok)])
    app.add_middleware(
        MandateAuthMiddleware, verifier=AsyncVerifier(issuer="http://127.0.0.1:1", audience=AUD)
    )
    with serve(app) as url:
        r = httpx.get(url + "/x", headers={"Authorization": "Bearer " + issuer.token()})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"


def test_fastapi_dependency(fresh: Issuer) -> None:
    from fastapi import Depends, FastAPI

    from mandate import Principal
    from mandate.asgi import require_scopes

    app = FastAPI()
    app.add_middleware(MandateAuthMiddleware, verifier=AsyncVerifier(issuer=fresh.url, audience=AUD))

    @app.get("/orders/{order_id}")
    async def order(order_id: str, p: Principal = Depends(require_scopes("orders:read"))) -> dict[str, Any]:
        return {"order": order_id, "user": p.user, "agent": p.agent.sub if p.agent else None}

    @app.get("/admin")
    async def admin(p: Principal = Depends(require_scopes("orders:admin"))) -> dict[str, Any]:
        return {"user": p.user}

    with serve(app) as url:
        ok = httpx.get(url + "/orders/A-1", headers={"Authorization": "Bearer " + fresh.token()})
        assert ok.status_code == 200
        assert ok.json() == {"order": "A-1", "user": "alice", "agent": "support-agent"}
        r = httpx.get(url + "/admin", headers={"Authorization": "Bearer " + fresh.token()})
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert httpx.get(url + "/orders/A-1").status_code == 401
