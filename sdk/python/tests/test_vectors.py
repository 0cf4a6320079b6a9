"""The shared vectors (testdata/vectors/, format in the SDK contract §4): the signer
accepts and refuses what they say, the Go verifier accepts envelopes signed here, and
the downstream verifier judges the access tokens as they say.

The vectors live in the repository; MANDATE_VECTORS_ROOT points at another checkout
(the files and the Go cross-check command are read from there)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mandate import Claims, EnvelopeError, Signer, SigningKey, TokenVerificationError, Verifier
from support import REPO_ROOT, serve

ROOT = Path(os.environ.get("MANDATE_VECTORS_ROOT", str(REPO_ROOT)))
ENVELOPES = ROOT / "testdata" / "vectors" / "envelopes.json"
ACCESS_TOKENS = ROOT / "testdata" / "vectors" / "access_tokens.json"
VERIFY_CMD = ROOT / "internal" / "vectors" / "cmd" / "verify-envelope"


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not in this checkout yet")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def signer_cases() -> list[Any]:
    if not ENVELOPES.exists():
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason="testdata/vectors/envelopes.json not in this checkout")
            )
        ]
    doc = json.loads(ENVELOPES.read_text())
    return [pytest.param(v, id=v["name"]) for v in doc["vectors"] if v["signer"] in ("accept", "refuse")]


def private_keys(doc: dict[str, Any]) -> dict[str, SigningKey]:
    return {k["kid"]: SigningKey.from_jwk(k) for k in doc["private_jwks"]["keys"]}


@pytest.mark.parametrize("vector", signer_cases())
def test_signer_follows_the_vectors(vector: dict[str, Any]) -> None:
    doc = load(ENVELOPES)
    key = private_keys(doc)["es256-1"]
    signer = Signer(key, clock=lambda: doc["now"])
    if vector["signer"] == "accept":
        token = signer.sign(Claims.from_dict(vector["claims"]))
        assert token.count(".") == 2
    else:
        with pytest.raises(EnvelopeError) as e:
            signer.sign(Claims.from_dict(vector["claims"]))
        assert e.value.reason == vector["reason"]
        assert e.value.wire_reason == vector["wire_reason"]


def test_go_verifier_accepts_envelopes_signed_in_python() -> None:
    doc = load(ENVELOPES)
    if not VERIFY_CMD.exists():
        pytest.skip("internal/vectors/cmd/verify-envelope is not in this checkout yet")
    accepted = next(v for v in doc["vectors"] if v["name"] == "es256")["claims"]
    lines = []
    for kid, key in private_keys(doc).items():
        token = Signer(key, clock=lambda: doc["now"]).sign(Claims.from_dict({**accepted, "jti": "py-" + kid}))
        lines.append(
            json.dumps(
                {
                    "token": token,
                    "jwks": doc["jwks"],
                    "client_id": doc["client_id"],
                    "issuer": doc["issuer"],
                    "now": doc["now"],
                }
            )
        )
    go = (
        "go"
        if subprocess.run(["which", "go"], capture_output=True).returncode == 0
        else "/usr/local/go/bin/go"
    )
    out = subprocess.run(
        [go, "run", "./internal/vectors/cmd/verify-envelope"],
        cwd=ROOT,
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()
    verdicts = [json.loads(line) for line in out if line.strip()]
    assert len(verdicts) == len(lines) >= 5
    assert all(v["valid"] for v in verdicts), verdicts


@pytest.fixture(scope="module")
def access_tokens() -> Iterator[tuple[dict[str, Any], str]]:
    doc = load(ACCESS_TOKENS)

    async def jwks(_: Request) -> Response:
        return JSONResponse(doc["jwks"])

    with serve(Starlette(routes=[Route("/jwks", jwks)])) as url:
        yield doc, url + "/jwks"


def expected(p: dict[str, Any]) -> dict[str, Any]:
    agent = p.get("agent") or {}
    return {
        "actor_type": p["actor_type"],
        "user": p["user"] or None,
        "service": p["service"] or None,
        "tenant": p["tenant"],
        "subject": p["subject"],
        "mode": p["mode"],
        "agent": (agent.get("sub", ""), agent.get("client_id", "")) if agent.get("sub") else None,
        "prior_actors": [(a["sub"], a.get("client_id", "")) for a in p.get("prior_actors") or []],
        "client_id": p["client_id"],
        "scopes": list(p["scopes"]),
        "trace_id": p["trace_id"],
        "session_id": p["session_id"],
        "grant_id": p["grant_id"],
        "jti": p["jti"],
        "iat": p["iat"],
        "exp": p["exp"],
    }


def test_downstream_verifier_follows_the_vectors(access_tokens: tuple[dict[str, Any], str]) -> None:
    doc, jwks_url = access_tokens
    v = Verifier(
        issuer=doc["issuer"],
        audience=doc["audience"],
        jwks_url=jwks_url,
        leeway=doc.get("leeway", 30),
        algorithms=doc.get("algorithms") or ("ES256", "EdDSA"),
        clock=lambda: doc["now"],
    )
    assert doc["vectors"]
    for vec in doc["vectors"]:
        if vec["valid"]:
            p = v.verify(vec["token"], vec.get("required_scopes") or ())
            got = {
                "actor_type": p.actor_type,
                "user": p.user,
                "service": p.service,
                "tenant": p.tenant,
                "subject": p.subject,
                "mode": p.mode,
                "agent": (p.agent.sub, p.agent.client_id) if p.agent else None,
                "prior_actors": [(a.sub, a.client_id) for a in p.prior_actors],
                "client_id": p.client_id,
                "scopes": list(p.scopes),
                "trace_id": p.trace_id,
                "session_id": p.session_id,
                "grant_id": p.grant_id,
                "jti": p.jti,
                "iat": p.issued_at,
                "exp": p.expires_at,
            }
            assert got == expected(vec["principal"]), vec["name"]
        else:
            with pytest.raises(TokenVerificationError) as e:
                v.verify(vec["token"], vec.get("required_scopes") or ())
            assert e.value.error == vec["error"], vec["name"]
