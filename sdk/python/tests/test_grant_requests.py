"""Turning "no grant" into "ask the user" against a real Mandate binary: the refusal names
the grant request endpoint, the delegators create the request with each client
authentication method, an admin approves it over /admin/v1 (the access-request workflow;
no sign-in provider needed), the status is polled at Mandate's interval, and the next
exchange is issued under the new grant. Mandate's refusals of a request are typed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest

from mandate import (
    AsyncDelegator,
    ClientError,
    Delegator,
    GrantRequestLink,
    GrantRequiredError,
    Identity,
    MandateError,
    NoIdentityError,
    Signer,
    UnavailableError,
    grant_required,
)
from mandate.envelope import Actor, Agent, Session
from support import REPO_ROOT, Mandate, Setup, free_port, grant, provision

pytestmark = pytest.mark.integration

AGENT = "support-agent"
PURPOSE = "Summarise your documents"
REASONS = json.loads((REPO_ROOT / "testdata" / "reasons.json").read_text())["reasons"]
DOCUMENTED = {r["reason"] for r in REASONS}


def ident(s: Setup, user: str, agent: str = AGENT, tenant: str = "") -> Identity:
    return Identity(
        actor=Actor("user", user, tenant or s.tenant),
        agent=Agent(agent),
        session=Session("sess-1"),
        scopes=("docs:read", "orders:read"),
    )


def consent_world(m: Mandate, **kw: Any) -> Setup:
    """A client, a docs audience users may consent to (at most an hour) and an orders
    audience only admins may grant; bob has a grant for the orders alone."""
    s = provision(m, audiences={"docs": ["docs:read", "docs:write"], "orders": ["orders:read"]}, **kw)
    m.admin("PATCH", f"/audiences/{docs(s)}", {"user_consent": "allowed", "max_consent_duration": 3600})
    grant(s, "bob", [orders(s)], ["orders:read"])
    return s


def docs(s: Setup) -> str:
    return s.audiences["docs"][0]


def orders(s: Setup) -> str:
    return s.audiences["orders"][0]


class Recorder:
    """Every request a delegator sends to Mandate (an httpx event hook)."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> None:
        self.sent.append(request)

    def to(self, path: str) -> list[httpx.Request]:
        return [r for r in self.sent if r.url.path == path]


def delegator(s: Setup, rec: Recorder | None = None, **kw: Any) -> Delegator:
    args: dict[str, Any] = {"issuer": s.mandate.issuer, "client_id": s.client_id, "signer": Signer(s.key)}
    if s.assertion_key is not None:
        args["assertion_key"] = s.assertion_key
    else:
        args["client_secret"] = s.secret
    if rec is not None:
        args["http_client"] = httpx.Client(event_hooks={"request": [rec]})
    args.update(kw)
    return Delegator(**args)


def test_the_refusal_names_the_grant_request_endpoint(mandate: Mandate) -> None:
    s = consent_world(mandate)
    with delegator(s) as d:
        with pytest.raises(GrantRequiredError) as e:
            d.token(ident(s, "carol"), docs(s))
        assert e.value.reason == "no_active_grant"
        assert e.value.grant_request_endpoint == mandate.issuer + "/oauth2/grant-requests"
        assert grant_required(e.value) is e.value
        # bob has a grant, but not for the docs: he can still widen it himself.
        with pytest.raises(GrantRequiredError) as e:
            d.token(ident(s, "bob"), docs(s))
        assert e.value.reason == "grant_does_not_cover_audience_or_mode"
        assert grant_required(e.value) is e.value
        # The orders are admin_only: a grant is required, but only an admin can give it.
        with pytest.raises(GrantRequiredError) as e:
            d.token(ident(s, "carol"), orders(s))
        assert (e.value.reason, e.value.grant_request_endpoint) == ("no_active_grant", "")
        assert grant_required(e.value) is None
    assert grant_required(ValueError("no_active_grant")) is None
    assert grant_required(None) is None


def check_stored(m: Mandate, s: Setup, link: GrantRequestLink, user: str) -> None:
    stored = m.admin("GET", f"/grant-requests/{link.request_id}")
    assert (stored["client_id"], stored["tenant"], stored["subject"]) == (s.client_id, s.tenant, user)
    assert (stored["agent_id"], stored["audiences"], stored["scopes"]) == (AGENT, [docs(s)], ["docs:read"])
    assert (stored["duration"], stored["purpose"]) == (1800, PURPOSE)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
def test_ask_approve_poll_exchange(mandate: Mandate, method: str) -> None:
    s = consent_world(mandate, auth_method=method)
    rec = Recorder()
    kw = {"auth_method": method} if method == "client_secret_post" else {}
    with delegator(s, rec, **kw) as d:
        with pytest.raises(GrantRequiredError) as refused:
            d.token(ident(s, "erin"), docs(s))
        assert grant_required(refused.value) is not None
        before = time.time()
        link = d.request_grant(
            ident(s, "erin"), audiences=[docs(s)], scopes=["docs:read"], duration=1800, purpose=PURPOSE
        )
        assert link.request_id.startswith("gr_")
        assert link.url == f"{mandate.issuer}/consent/{link.request_id}"
        assert link.verification_uri == f"{mandate.issuer}/consent"
        assert link.interval == 5
        assert before + 60 < link.expires_at <= time.time() + 600
        assert link.message(PURPOSE) == f"{PURPOSE}. Approve access in your browser: {link.url}"
        check_stored(mandate, s, link, "erin")

        pending = d.grant_request_status(link.request_id)
        assert (pending.request_id, pending.status, pending.grant_id, pending.interval) == (
            link.request_id,
            "pending",
            "",
            5,
        )
        assert pending.expires_at == pytest.approx(link.expires_at, abs=2)

        decided = mandate.admin("POST", f"/grant-requests/{link.request_id}/approve")
        approved = d.grant_request_status(link.request_id)
        assert (approved.status, approved.grant_id) == ("approved", decided["request"]["grant_id"])
        assert approved.interval is None and approved.expires_at is None
        g = mandate.admin("GET", f"/grants/{approved.grant_id}")
        assert (g["subject"], g["agent_id"], g["created_by"]) == ("erin", AGENT, "admin:mandate-admin")

        tok = d.token(ident(s, "erin"), docs(s))
        claims = jwt.decode(tok.access_token, options={"verify_signature": False})
        assert (claims["sub"], claims["grant_id"]) == ("erin", approved.grant_id)
        assert claims["scope"] == "docs:read"

    create = rec.to("/oauth2/grant-requests")
    polls = rec.to(f"/oauth2/grant-requests/{link.request_id}")
    assert len(create) == 1 and len(polls) == 2
    body = json.loads(create[0].content)
    assert create[0].headers["content-type"] == "application/json"
    if method == "client_secret_basic":
        assert create[0].headers["authorization"].startswith("Basic ")
        assert "client_id" not in body and "client_secret" not in body
        assert all(p.method == "GET" and p.headers["authorization"].startswith("Basic ") for p in polls)
    else:
        member = "client_secret" if method == "client_secret_post" else "client_assertion"
        assert "authorization" not in create[0].headers
        assert body["client_id"] == s.client_id and member in body
        for p in polls:
            form = parse_qs(p.content.decode())
            assert p.method == "POST" and "authorization" not in p.headers
            assert form["client_id"] == [s.client_id] and member in form


def test_any_agent_and_the_default_duration(mandate: Mandate) -> None:
    s = consent_world(mandate)
    with delegator(s) as d:
        link = d.request_grant(
            ident(s, "gina"), audiences=[docs(s)], scopes=["docs:read"], purpose="any agent", any_agent=True
        )
        stored = mandate.admin("GET", f"/grant-requests/{link.request_id}")
        assert stored.get("agent_id", "") == ""
        assert stored["duration"] == 3600  # the audience's max_consent_duration
        mandate.admin("POST", f"/grant-requests/{link.request_id}/approve")
        tok = d.token(ident(s, "gina", agent="another-agent"), docs(s))
        claims = jwt.decode(tok.access_token, options={"verify_signature": False})
        assert claims["act"] == {"sub": "another-agent", "client_id": s.client_id}


def test_wait_for_grant_honours_the_interval(mandate: Mandate) -> None:
    s = consent_world(mandate)
    rec = Recorder()
    with delegator(s, rec) as d:
        link = d.request_grant(ident(s, "hana"), audiences=[docs(s)], scopes=["docs:read"], purpose="wait")
        mandate.admin("POST", f"/grant-requests/{link.request_id}/approve")
        rec.sent.clear()
        started = time.monotonic()
        st = d.wait_for_grant(link)
        assert (st.status, bool(st.grant_id)) == ("approved", True)
        assert time.monotonic() - started >= link.interval  # never sooner than Mandate asked
        assert len(rec.sent) == 1
        # Still pending when the caller's patience runs out: TimeoutError, no read sent.
        pending = d.request_grant(ident(s, "ivan"), audiences=[docs(s)], scopes=["docs:read"], purpose="wait")
        rec.sent.clear()
        with pytest.raises(TimeoutError):
            d.wait_for_grant(pending, timeout=0.2)
        assert rec.sent == []


async def test_async_ask_approve_deny_and_wait(mandate: Mandate) -> None:
    s = consent_world(mandate)
    async with AsyncDelegator(
        issuer=mandate.issuer, client_id=s.client_id, signer=Signer(s.key), client_secret=s.secret
    ) as d:
        with pytest.raises(GrantRequiredError) as e:
            await d.token(ident(s, "jade"), docs(s))
        assert grant_required(e.value) is not None
        ask: dict[str, Any] = {"audiences": [docs(s)], "scopes": ["docs:read"], "purpose": PURPOSE}
        yes = await d.request_grant(ident(s, "jade"), **ask)
        no = await d.request_grant(ident(s, "kai"), **ask)
        assert (await d.grant_request_status(yes.request_id)).status == "pending"
        waiting = asyncio.gather(d.wait_for_grant(yes), d.wait_for_grant(no.request_id))
        await asyncio.to_thread(mandate.admin, "POST", f"/grant-requests/{yes.request_id}/approve")
        await asyncio.to_thread(mandate.admin, "POST", f"/grant-requests/{no.request_id}/deny")
        approved, denied = await waiting
        assert approved.status == "approved" and approved.grant_id
        assert (denied.status, denied.grant_id) == ("denied", "")
        tok = await d.token(ident(s, "jade"), docs(s))
        claims = jwt.decode(tok.access_token, options={"verify_signature": False})
        assert claims["grant_id"] == approved.grant_id
        with pytest.raises(GrantRequiredError):
            await d.token(ident(s, "kai"), docs(s))
        # The caller bounds the wait with asyncio.timeout.
        pending = await d.request_grant(ident(s, "lee"), **ask)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await d.wait_for_grant(pending)
        with pytest.raises(ClientError) as c:
            await d.request_grant(
                ident(s, "lee"), **{**ask, "audiences": [orders(s)], "scopes": ["orders:read"]}
            )
        assert c.value.reason == "audience_requires_admin_consent"


def refused(d: Delegator, s: Setup, **kw: Any) -> MandateError:
    ask: dict[str, Any] = {"audiences": [docs(s)], "scopes": ["docs:read"], "purpose": "refusals"}
    identity = kw.pop("identity", ident(s, "kim"))
    with pytest.raises(MandateError) as e:
        d.request_grant(identity, **{**ask, **kw})
    return e.value


def test_refusals_are_typed_by_reason(mandate: Mandate) -> None:
    s = consent_world(mandate)
    seen: set[str] = set()

    def check(e: MandateError, reason: str, status: int = 400) -> MandateError:
        assert type(e) is ClientError, repr(e)
        assert (e.reason, e.status, e.kind) == (reason, status, "client_error"), str(e)
        seen.add(reason)
        return e

    with delegator(s) as d:
        e = check(
            refused(d, s, audiences=[orders(s)], scopes=["orders:read"]), "audience_requires_admin_consent"
        )
        assert e.code == "invalid_target"
        assert str(e).startswith(f"Mandate refused a grant request for {orders(s)}: invalid_target")
        check(refused(d, s, duration=7200), "consent_duration_too_long")
        check(refused(d, s, scopes=[]), "invalid_grant_request")
        # A scope no grant could hold: asking the user cannot help.
        check(refused(d, s, scopes=["orders:read"]), "scope_not_requestable")
        check(refused(d, s, audiences=["no-such-audience"]), "unknown_audience")
        check(refused(d, s, identity=ident(s, "kim", tenant="globex")), "tenant_not_allowed")
        with pytest.raises(MandateError) as nf:
            d.grant_request_status("gr_does_not_exist")
        check(nf.value, "grant_request_not_found", 404)
        # Another client's request reads as not found.
        other = consent_world(mandate)
        with delegator(other) as od:
            theirs = od.request_grant(
                ident(other, "kim"), audiences=[docs(other)], scopes=["docs:read"], purpose="theirs"
            )
        with pytest.raises(MandateError) as nf:
            d.grant_request_status(theirs.request_id)
        check(nf.value, "grant_request_not_found", 404)
        # Caught before anything is sent.
        with pytest.raises(ValueError, match="duration"):
            d.request_grant(
                ident(s, "kim"), audiences=[docs(s)], scopes=["docs:read"], purpose="x", duration=0
            )
        with pytest.raises(TypeError):
            d.request_grant(ident(s, "kim"), audiences=docs(s), scopes=["docs:read"], purpose="x")
        with pytest.raises(ValueError, match="id"):
            d.grant_request_status("")
        # As for an exchange: not for nobody, nor after the user's token expired.
        with pytest.raises(NoIdentityError):
            d.request_grant(None, audiences=[docs(s)], scopes=["docs:read"], purpose="x")
        expired = dataclasses.replace(ident(s, "kim"), expires_at=time.time() - 1)
        with pytest.raises(NoIdentityError):
            d.request_grant(expired, audiences=[docs(s)], scopes=["docs:read"], purpose="x")
    with delegator(s, client_secret="not-the-secret") as wrong:
        check(refused(wrong, s), "client_authentication_failed", 401)
        with pytest.raises(MandateError) as bad:
            wrong.grant_request_status(theirs.request_id)
        check(bad.value, "client_authentication_failed", 401)
    issuer = f"http://127.0.0.1:{free_port()}"
    with delegator(s, issuer=issuer) as down:
        e = refused(down, s)
        assert type(e) is UnavailableError and e.code == "network_error"
        assert str(e).startswith(f"Mandate refused a grant request for {docs(s)}: network_error")
    assert seen <= DOCUMENTED and len(seen) == 8
