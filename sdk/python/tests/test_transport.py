"""The delegator's HTTP transports: the token and traceparent go only to the audience's
base URLs; redirects elsewhere are handed back unfollowed; 401 invalid_token refreshes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mandate import AsyncDelegator, Delegator, DestinationError, NoIdentityError, Signer, use_identity
from support import Mandate, Setup, grant, provision, serve
from test_exchange import TRACE, aud, ident

pytestmark = pytest.mark.integration


@dataclass
class Seen:
    auth: list[str | None] = field(default_factory=list)
    traceparent: list[str | None] = field(default_factory=list)
    fail_next: int = 0


@pytest.fixture(scope="module")
def other() -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    async def anything(request: Request) -> Response:
        seen.auth.append(request.headers.get("authorization"))
        seen.traceparent.append(request.headers.get("traceparent"))
        return JSONResponse({"stolen": request.headers.get("authorization")})

    with serve(Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])) as url:
        yield url, seen


@pytest.fixture(scope="module")
def api(other: tuple[str, Seen]) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    other_url = other[0]

    async def echo(request: Request) -> Response:
        seen.auth.append(request.headers.get("authorization"))
        seen.traceparent.append(request.headers.get("traceparent"))
        if seen.fail_next:
            seen.fail_next -= 1
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        body = await request.body()
        return JSONResponse({"auth": request.headers.get("authorization") is not None, "body": body.decode()})

    async def go(request: Request) -> Response:
        target = {
            "same": "/v1/echo",
            "out": other_url + "/steal",
            "prefix": "/admin",
            "sibling": "/v10/echo",
        }[request.path_params["where"]]
        return RedirectResponse(target, status_code=int(request.query_params.get("code", "302")))

    async def outside(request: Request) -> Response:
        seen.auth.append(request.headers.get("authorization"))
        return JSONResponse({"outside": True})

    app = Starlette(
        routes=[
            Route("/v1/echo", echo, methods=["GET", "POST"]),
            Route("/v1/go/{where}", go, methods=["GET", "POST"]),
            Route("/admin", outside),
            Route("/v10/echo", outside),
        ]
    )
    with serve(app) as url:
        yield url, seen


@pytest.fixture
def world(mandate: Mandate, api: tuple[str, Seen]) -> Setup:
    s = provision(mandate)
    grant(s, "alice", [aud(s)], ["orders:read"])
    return s


def make(s: Setup, api_url: str) -> Delegator:
    return Delegator(
        issuer=s.mandate.issuer,
        client_id=s.client_id,
        signer=Signer(s.key),
        client_secret=s.secret,
        audiences={aud(s): [api_url + "/v1"]},
    )


def test_token_and_traceparent_only_under_the_base(
    world: Setup, api: tuple[str, Seen], other: tuple[str, Seen]
) -> None:
    api_url, seen = api
    other_url, other_seen = other
    with make(world, api_url) as d, d.client(aud(world)) as c, use_identity(ident(world, "alice")):
        r = c.get(api_url + "/v1/echo")
        assert r.status_code == 200 and r.json()["auth"] is True
        assert seen.traceparent[-1] is not None and seen.traceparent[-1].split("-")[1] == TRACE

        before = len(other_seen.auth)
        for url in (
            other_url + "/v1/echo",  # another host
            api_url.replace("127.0.0.1", "localhost") + "/v1/echo",  # another host name
            api_url + "/v10/echo",  # not on a segment boundary
            api_url + "/admin",
            api_url + "/v1/%2e%2e/admin",  # encoded dot segments
            api_url.replace("http://", "https://") + "/v1/echo",  # another scheme
        ):
            with pytest.raises(DestinationError):
                c.get(url)
        assert len(other_seen.auth) == before


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects(world: Setup, api: tuple[str, Seen], other: tuple[str, Seen], code: int) -> None:
    api_url, seen = api
    _, other_seen = other
    with make(world, api_url) as d, d.client(aud(world)) as c, use_identity(ident(world, "alice")):
        r = c.post(api_url + f"/v1/go/same?code={code}", content=b"payload")
        assert r.status_code == 200 and r.json()["auth"] is True
        assert r.json()["body"] == ("payload" if code in (307, 308) else "")

        before_other, before_api = len(other_seen.auth), len(seen.auth)
        for where in ("out", "prefix", "sibling"):
            r = c.get(api_url + f"/v1/go/{where}?code={code}")
            assert r.status_code == code  # handed back, not followed
        assert len(other_seen.auth) == before_other
        assert len(seen.auth) == before_api  # /admin and /v10 were never called
        # A caller that follows the redirect itself is refused before sending.
        assert r.next_request is not None
        with pytest.raises(DestinationError):
            c.send(r.next_request)


def test_invalid_token_answer_refreshes_once(world: Setup, api: tuple[str, Seen]) -> None:
    api_url, seen = api
    with make(world, api_url) as d, d.client(aud(world)) as c, use_identity(ident(world, "alice")):
        assert c.get(api_url + "/v1/echo").status_code == 200
        assert d.exchanges == 1
        seen.fail_next = 1
        r = c.post(api_url + "/v1/echo", content=b"again")
        assert r.status_code == 200 and r.json()["body"] == "again"
        assert d.exchanges == 2
        seen.fail_next = 2
        assert c.get(api_url + "/v1/echo").status_code == 401  # retried once only
        assert d.exchanges == 3
        seen.fail_next = 0


def test_no_identity_no_call(world: Setup, api: tuple[str, Seen]) -> None:
    api_url, seen = api
    before = len(seen.auth)
    with make(world, api_url) as d, d.client(aud(world)) as c, pytest.raises(NoIdentityError):
        c.get(api_url + "/v1/echo")
    assert len(seen.auth) == before


async def test_async_transport(world: Setup, api: tuple[str, Seen], other: tuple[str, Seen]) -> None:
    api_url, _ = api
    other_url, other_seen = other
    async with AsyncDelegator(
        issuer=world.mandate.issuer,
        client_id=world.client_id,
        signer=Signer(world.key),
        client_secret=world.secret,
        audiences={aud(world): [api_url + "/v1/"]},
    ) as d:
        identity = ident(world, "alice")
        async with d.client(aud(world), identity=identity) as c:
            r = await c.get(api_url + "/v1/echo")
            assert r.status_code == 200 and r.json()["auth"] is True
            before = len(other_seen.auth)
            assert (await c.get(api_url + "/v1/go/out")).status_code == 302
            with pytest.raises(DestinationError):
                await c.get(other_url + "/v1/echo")
            assert len(other_seen.auth) == before
        with pytest.raises(NoIdentityError):
            async with d.client(aud(world)) as c2:
                await c2.get(api_url + "/v1/echo")


def test_base_urls_are_validated(world: Setup) -> None:
    with pytest.raises(ValueError, match="absolute"):
        make(world, "ftp://x")
    d = make(world, "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="no base URLs"):
        d.client("unknown-audience")
    assert isinstance(d.client(aud(world)), httpx.Client)
