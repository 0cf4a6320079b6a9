"""The signer refuses what Mandate would refuse, with the same reason; what it signs
verifies with the public key it publishes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mandate import _jose
from mandate.envelope import (
    Act,
    Actor,
    Agent,
    Authorization,
    Claims,
    Delegation,
    EnvelopeError,
    Session,
    Signer,
    SigningKey,
)

NOW = 1_798_761_600


def base(**changes: Any) -> Claims:
    c = Claims(
        iss="mcp-1",
        aud="https://mandate.test",
        actor=Actor("user", "alice", "acme"),
        agent=Agent("support-agent"),
        session=Session("sess-1", "4bf92f3577b34da6a3ce929d0e0e4736"),
        authorization=Authorization(("orders:read",), "verified"),
        delegation=Delegation("on_behalf_of", ("orders_api",)),
    )
    return dataclasses.replace(c, **changes)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(SigningKey.generate("ES256", "k1"), clock=lambda: NOW)


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    jws = _jose.split_compact(token, 8192)
    return jws.header, json.loads(jws.payload)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256", "RS256"])
def test_signs_and_verifies_with_every_alg(alg: str) -> None:
    key = SigningKey.generate(alg)
    token = Signer(key, clock=lambda: NOW).sign(base())
    header, claims = decode(token)
    assert header == {"alg": alg, "typ": "eie+jwt", "kid": key.kid}
    pub = _jose.key_from_jwk(key.public_jwk())
    jws = _jose.split_compact(token, 8192)
    assert _jose.verify(alg, pub, jws.signing_input, jws.signature)  # type: ignore[arg-type]
    assert not _jose.verify(alg, pub, jws.signing_input + b"x", jws.signature)  # type: ignore[arg-type]
    assert "d" not in key.public_jwk()
    assert key.public_jwk()["use"] == "sig"
    assert claims["agent"] == {"type": "mcp_agent", "id": "support-agent", "client_id": "mcp-1"}


def test_defaults(signer: Signer) -> None:
    _, c = decode(signer.sign(base()))
    assert (c["iat"], c["exp"]) == (NOW, NOW + 60)
    assert len(c["jti"]) == 22
    assert c["aud"] == "https://mandate.test"
    assert c["authorization"] == {"scopes": ["orders:read"], "confidence": "verified"}
    assert "nbf" not in c
    assert "act" not in c
    _, c2 = decode(signer.sign(base()))
    assert c2["jti"] != c["jti"]


def test_round_trip_through_dict(signer: Signer) -> None:
    c = base(act=Act("planner", "upstream"), nbf=NOW - 5, jti="j1", iat=NOW, exp=NOW + 30)
    c = dataclasses.replace(c, agent=Agent("support-agent", "mcp-1"))
    assert Claims.from_dict(c.to_dict()) == c


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no iss", {"iss": ""}, "missing_member"),
    ("no aud", {"aud": ()}, "missing_member"),
    ("empty aud value", {"aud": ("https://mandate.test", "")}, "bad_value"),
    ("client mismatch", {"agent": Agent("a", "other")}, "client_mismatch"),
    ("exp before iat", {"iat": NOW, "exp": NOW}, "bad_value"),
    ("lifetime over 3600", {"iat": NOW, "exp": NOW + 3601}, "lifetime_too_long"),
    ("long jti", {"jti": "x" * 129}, "bad_value"),
    ("no actor.type", {"actor": Actor("", "alice", "acme")}, "missing_member"),
    ("no actor.sub", {"actor": Actor("user", "", "acme")}, "missing_member"),
    ("no tenant", {"actor": Actor("user", "alice", "")}, "missing_member"),
    ("no agent.id", {"agent": Agent("")}, "missing_member"),
    ("no session", {"session": Session("")}, "missing_member"),
    ("no mode", {"delegation": Delegation("")}, "missing_member"),
    ("bad actor type", {"actor": Actor("robot", "alice", "acme")}, "bad_value"),
    ("bad mode", {"delegation": Delegation("impersonate")}, "bad_value"),
    (
        "service outside service_identity",
        {"actor": Actor("service", "billing-sync", "acme")},
        "bad_value",
    ),
    ("bad confidence", {"authorization": Authorization((), "certain")}, "bad_value"),
    ("scope with space", {"authorization": Authorization(("a b",))}, "bad_value"),
    ("empty scope", {"authorization": Authorization(("",))}, "bad_value"),
    ("scope with quote", {"authorization": Authorization(('a"',))}, "bad_value"),
    ("empty allowed", {"delegation": Delegation("on_behalf_of", ("",))}, "bad_value"),
    ("act without sub", {"act": Act("")}, "missing_member"),
    ("act control char", {"act": Act("a\nb")}, "bad_value"),
    ("control in sub", {"actor": Actor("user", "ali\x00ce", "acme")}, "bad_value"),
    ("control in trace", {"session": Session("s", "t\x7f")}, "bad_value"),
    ("actor.sub star", {"actor": Actor("user", "*", "acme")}, "bad_value"),
    ("lone surrogate", {"actor": Actor("user", "a\ud800", "acme")}, "bad_value"),
]


@pytest.mark.parametrize(("name", "changes", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refuses_what_mandate_refuses(
    signer: Signer, name: str, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EnvelopeError) as e:
        signer.sign(base(**changes))
    assert e.value.reason == reason
    assert e.value.wire_reason == "envelope_" + reason


def test_service_actor_in_service_identity_is_signed(signer: Signer) -> None:
    signer.sign(
        base(actor=Actor("service", "billing-sync", "acme"), delegation=Delegation("service_identity"))
    )


def test_too_large(signer: Signer) -> None:
    with pytest.raises(EnvelopeError) as e:
        signer.sign(base(authorization=Authorization(tuple(f"scope:{i:05d}" for i in range(900)))))
    assert e.value.reason == "too_large"
    assert e.value.wire_reason == "subject_token_too_large"


def test_from_dict_is_strict() -> None:
    with pytest.raises(EnvelopeError) as e:
        Claims.from_dict({"iss": 5})
    assert e.value.reason == "bad_format"
    with pytest.raises(EnvelopeError):
        Claims.from_dict({"iss": "a", "exp": "soon"})


def test_keys() -> None:
    k = SigningKey.generate("EdDSA", "ed-1")
    assert "ed-1" in repr(k)
    assert k.private_jwk()["d"] not in repr(k)
    again = SigningKey.from_jwk(k.private_jwk())
    assert again.kid == "ed-1"
    assert again.alg == "EdDSA"
    with pytest.raises(ValueError, match="no private key"):
        SigningKey.from_jwk(k.public_jwk())
    with pytest.raises(ValueError, match="not allowed"):
        SigningKey.generate("HS256")
    with pytest.raises(ValueError, match="does not fit"):
        SigningKey(SigningKey.generate("ES256").key, "x", "ES384")
