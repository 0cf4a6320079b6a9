"""The delegator against a real Mandate binary: granted, no grant, revoked, replay,
narrowing, cross-audience, live reasons, the three client authentication methods,
envelopes signed with every algorithm, and the cache."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mandate import (
    AsyncDelegator,
    ClientError,
    Delegator,
    GrantRequiredError,
    Identity,
    InvalidTokenError,
    MandateError,
    Principal,
    Signer,
    SigningKey,
    Verifier,
)
from mandate.envelope import Actor, Agent, Authorization, Claims, Delegation, Session
from support import Mandate, Setup, grant, provision

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def ident(
    s: Setup, user: str, scopes: tuple[str, ...] = ("orders:read", "orders:write"), **kw: Any
) -> Identity:
    return Identity(
        actor=Actor("user", user, kw.pop("tenant", s.tenant)),
        agent=Agent("support-agent"),
        session=Session("sess-1", TRACE),
        scopes=scopes,
        **kw,
    )


def delegator(s: Setup, **kw: Any) -> Delegator:
    args: dict[str, Any] = {
        "issuer": s.mandate.issuer,
        "client_id": s.client_id,
        "signer": Signer(s.key),
    }
    if s.assertion_key is not None:
        args["assertion_key"] = s.assertion_key
    else:
        args["client_secret"] = s.secret
    args.update(kw)
    return Delegator(**args)


def aud(s: Setup, name: str = "orders") -> str:
    return s.audiences[name][0]


def check_user_principal(p: Principal, s: Setup, user: str) -> None:
    assert p.subject == user
    assert p.tenant == s.tenant
    assert p.mode == "on_behalf_of"
    assert p.agent is not None
    assert (p.agent.sub, p.agent.client_id) == ("support-agent", s.client_id)
    assert p.client_id == s.client_id
    assert p.trace_id == TRACE
    assert p.session_id == "sess-1"
    assert p.actor_type == "user"
    assert p.user == user
    assert p.service is None


def verify_issued(m: Mandate, s: Setup, token: str, user: str) -> None:
    v = Verifier(issuer=m.issuer, audience=aud(s))
    check_user_principal(v.verify(token, ["orders:read"]), s, user)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
def test_granted_with_each_client_auth_method(mandate: Mandate, method: str) -> None:
    s = provision(mandate, auth_method=method)
    grant(s, "alice", [aud(s)], ["orders:read"])
    kw = {"auth_method": method} if method == "client_secret_post" else {}
    with delegator(s, **kw) as d:
        tok = d.token(ident(s, "alice"), aud(s))
        assert tok.scope == "orders:read"
        assert tok.expires_at > time.time()
        assert d.token(ident(s, "alice"), aud(s)) is tok  # cached
        assert d.exchanges == 1
        verify_issued(mandate, s, tok.access_token, "alice")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256", "RS256"])
def test_envelopes_signed_in_python_pass_the_go_verifier(mandate: Mandate, alg: str) -> None:
    s = provision(mandate, keys=[SigningKey.generate(alg)])
    grant(s, "alice", [aud(s)], ["orders:read"])
    with delegator(s) as d:
        assert d.token(ident(s, "alice"), aud(s)).access_token


def test_no_grant_is_grant_required_and_never_cached(mandate: Mandate) -> None:
    s = provision(mandate)
    with delegator(s) as d:
        for attempt in (1, 2):
            with pytest.raises(GrantRequiredError) as e:
                d.token(ident(s, "carol"), aud(s))
            assert d.exchanges == attempt
        err = e.value
        assert (err.reason, err.code, err.status, err.kind) == (
            "no_active_grant",
            "invalid_request",
            400,
            "grant_required",
        )
        assert (err.audience, err.tenant, err.subject) == (aud(s), s.tenant, "carol")
        assert aud(s) in str(err)


def test_revoked_grant(mandate: Mandate) -> None:
    s = provision(mandate)
    gid = grant(s, "alice", [aud(s)], ["orders:read"])
    api = mandate.admin(
        "POST",
        "/clients",
        {
            "name": "orders API",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
        },
    )
    from mandate import Introspection

    v = Verifier(
        issuer=mandate.issuer,
        audience=aud(s),
        introspection=Introspection(api["client_id"], api["client_secret"]),
    )
    with delegator(s) as d:
        tok = d.token(ident(s, "alice"), aud(s))
        mandate.admin("POST", f"/grants/{gid}/revoke", {"reason": "test"})
        with pytest.raises(InvalidTokenError) as e:
            v.introspect(tok.access_token)
        assert e.value.reason == "inactive"
        assert d.token(ident(s, "alice"), aud(s)) is tok  # the cache does not know
        d.forget(ident(s, "alice"), aud(s))
        with pytest.raises(GrantRequiredError) as g:
            d.token(ident(s, "alice"), aud(s))
        assert g.value.reason in ("no_active_grant", "grant_revoked")


def test_replay(mandate: Mandate) -> None:
    s = provision(mandate, audiences={"orders": ["orders:read"], "billing": ["balance:read"]})
    grant(s, "alice", [aud(s), aud(s, "billing")], ["orders:read", "balance:read"])
    envelope = Signer(s.key).sign(
        Claims(
            iss=s.client_id,
            aud=mandate.issuer,
            actor=Actor("user", "alice", s.tenant),
            agent=Agent("support-agent"),
            session=Session("sess-1"),
            authorization=Authorization(("orders:read", "balance:read")),
            delegation=Delegation("on_behalf_of"),
        )
    )
    with delegator(s) as d:
        d.exchange_envelope(envelope, aud(s), ["orders:read"])
        with pytest.raises(ClientError) as e:
            d.exchange_envelope(envelope, aud(s), ["orders:read"])
        assert e.value.reason == "envelope_replayed"
        # One envelope may be exchanged once per audience.
        assert d.exchange_envelope(envelope, aud(s, "billing"), ["balance:read"]).scope == "balance:read"


def test_scopes_only_narrow(mandate: Mandate) -> None:
    s = provision(mandate)
    grant(s, "alice", [aud(s)], ["orders:read"])
    with delegator(s) as d:
        assert d.token(ident(s, "alice"), aud(s)).scope == "orders:read"
        with pytest.raises(GrantRequiredError) as e:
            d.token(ident(s, "alice"), aud(s), ["orders:write"])
        assert e.value.reason == "scope_not_allowed"
        # The identity's own scopes bound the envelope: without orders:read nothing remains.
        with pytest.raises(GrantRequiredError) as e2:
            d.token(ident(s, "alice", scopes=("orders:write",)), aud(s))
        assert e2.value.reason == "no_effective_scope"


def test_cross_audience(mandate: Mandate) -> None:
    s = provision(mandate, audiences={"orders": ["orders:read"], "billing": ["balance:read"]})
    grant(s, "alice", [aud(s), aud(s, "billing")], ["orders:read", "balance:read"])
    with delegator(s) as d:
        tok = d.token(ident(s, "alice"), aud(s))
        with pytest.raises(InvalidTokenError) as e:
            Verifier(issuer=mandate.issuer, audience=aud(s, "billing")).verify(tok.access_token)
        assert e.value.reason == "wrong_audience"
    with delegator(s, allowed=[aud(s)]) as d:
        with pytest.raises(ClientError) as c:
            d.token(ident(s, "alice"), aud(s, "billing"))
        assert c.value.reason == "audience_not_in_envelope"


LIVE: list[tuple[str, str, type[MandateError], int]] = [
    ("wrong secret", "client_authentication_failed", ClientError, 401),
    ("unregistered key", "envelope_unknown_kid", ClientError, 400),
    ("aud is not the issuer", "envelope_audience_mismatch", ClientError, 400),
    ("unknown audience", "unknown_audience", ClientError, 400),
    ("tenant not allowed", "tenant_not_allowed", ClientError, 400),
    ("grant for another audience", "grant_does_not_cover_audience_or_mode", GrantRequiredError, 400),
    ("mode not allowed", "mode_not_allowed_for_audience", ClientError, 400),
]


@pytest.mark.parametrize(("case", "reason", "cls", "status"), LIVE, ids=[c[0] for c in LIVE])
def test_live_reasons(mandate: Mandate, case: str, reason: str, cls: type[MandateError], status: int) -> None:
    s = provision(mandate, audiences={"orders": ["orders:read"], "billing": ["balance:read"]})
    grant(s, "alice", [aud(s)], ["orders:read"])
    kw: dict[str, Any] = {}
    identity = ident(s, "alice")
    audience = aud(s)
    if case == "wrong secret":
        kw["client_secret"] = "not-the-secret"
    elif case == "unregistered key":
        kw["signer"] = Signer(SigningKey.generate("ES256"))
    elif case == "aud is not the issuer":
        kw["issuer"] = "http://127.0.0.1:1"
        kw["token_url"] = mandate.issuer + "/oauth2/token"
    elif case == "unknown audience":
        audience = "no-such-audience"
    elif case == "tenant not allowed":
        identity = ident(s, "alice", tenant="other-tenant")
    elif case == "grant for another audience":
        audience = aud(s, "billing")
    elif case == "mode not allowed":
        identity = ident(s, "alice", mode="restricted_user")
    with delegator(s, **kw) as d, pytest.raises(MandateError) as e:
        d.token(identity, audience)
    assert type(e.value) is cls
    assert (e.value.reason, e.value.status) == (reason, status)


async def test_cache_under_asyncio_concurrency(mandate: Mandate) -> None:
    s = provision(mandate)
    grant(s, "alice", [aud(s)], ["orders:read"])
    grant(s, "bob", [aud(s)], ["orders:read"])
    async with AsyncDelegator(
        issuer=mandate.issuer, client_id=s.client_id, signer=Signer(s.key), client_secret=s.secret
    ) as d:
        alice = await asyncio.gather(*(d.token(ident(s, "alice"), aud(s)) for _ in range(50)))
        bob = await asyncio.gather(*(d.token(ident(s, "bob"), aud(s)) for _ in range(20)))
        assert d.exchanges == 2
        assert len({t.access_token for t in alice}) == 1
        assert len({t.access_token for t in bob}) == 1
        assert alice[0].access_token != bob[0].access_token

        # Errors are shared by the waiters of one flight and never cached.
        failures = await asyncio.gather(
            *(d.token(ident(s, "carol"), aud(s)) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(f, GrantRequiredError) for f in failures)
        assert d.exchanges == 3
        with pytest.raises(GrantRequiredError):
            await d.token(ident(s, "carol"), aud(s))
        assert d.exchanges == 4


async def test_a_cancelled_first_caller_does_not_break_the_others(mandate: Mandate) -> None:
    s = provision(mandate)
    grant(s, "alice", [aud(s)], ["orders:read"])
    async with AsyncDelegator(
        issuer=mandate.issuer, client_id=s.client_id, signer=Signer(s.key), client_secret=s.secret
    ) as d:
        first = asyncio.create_task(d.token(ident(s, "alice"), aud(s)))
        await asyncio.sleep(0)  # the first caller owns the flight now
        others = [asyncio.create_task(d.token(ident(s, "alice"), aud(s))) for _ in range(5)]
        await asyncio.sleep(0)
        first.cancel()
        results = await asyncio.gather(*others)
        assert len({t.access_token for t in results}) == 1
        assert d.exchanges == 1


def test_refresh_before_expiry(mandate: Mandate) -> None:
    s = provision(mandate, token_ttl=10)
    grant(s, "alice", [aud(s)], ["orders:read"])
    offset = [0.0]
    with delegator(s, clock=lambda: time.time() + offset[0]) as d:
        t1 = d.token(ident(s, "alice"), aud(s))
        assert t1.use_until == pytest.approx(t1.expires_at - 2, abs=0.01)  # min(30 s, life / 5)
        offset[0] = 7.0
        assert d.token(ident(s, "alice"), aud(s)) is t1
        offset[0] = 8.5  # within the last fifth of its life: refreshed
        t2 = d.token(ident(s, "alice"), aud(s))
        assert t2 is not t1
        assert d.exchanges == 2


def test_service_actor(mandate: Mandate) -> None:
    """A service actor needs no grant; the downstream principal never presents it as a
    user."""
    s = provision(mandate)
    orders = aud(s)
    mandate.admin("PATCH", f"/audiences/{orders}", {"allowed_modes": ["on_behalf_of", "service_identity"]})
    mandate.admin(
        "PATCH",
        f"/clients/{s.client_id}",
        {
            "service_actors": ["billing-sync"],
            "allowed_audiences": [orders],
            "allowed_scopes": ["orders:read"],
        },
    )
    service = Identity(
        actor=Actor("service", "billing-sync", s.tenant),
        agent=Agent("nightly-agent"),
        session=Session("batch-7", TRACE),
        scopes=("orders:read",),
        mode="service_identity",
    )
    with delegator(s) as d:
        tok = d.token(service, orders)
    p = Verifier(issuer=mandate.issuer, audience=orders).verify(tok.access_token, ["orders:read"])
    assert (p.actor_type, p.user, p.service, p.tenant) == ("service", None, "billing-sync", s.tenant)
    assert p.mode == "service_identity" and p.subject == s.client_id
