"""The Execution Identity Envelope (EIE, docs/eie.md): its claim types, signing keys, and a
signer that refuses to sign what Mandate would refuse, so mistakes surface in the MCP
server's own tests rather than as ``invalid_request`` at the token endpoint.

The rules are those of the Go signer (``envelope/signer.go`` and ``checkMembers`` in
``envelope/verify.go``), plus ``actor.sub`` never ``"*"``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import _jose

TYPE: Final = "eie+jwt"
"""The JWS header ``typ`` of every envelope."""
TOKEN_TYPE: Final = "urn:mandate:params:oauth:token-type:eie"
"""The ``subject_token_type`` sent with an envelope."""

MODE_ON_BEHALF_OF: Final = "on_behalf_of"
MODE_SERVICE_IDENTITY: Final = "service_identity"
MODE_RESTRICTED_USER: Final = "restricted_user"
MODES: Final = frozenset({MODE_ON_BEHALF_OF, MODE_SERVICE_IDENTITY, MODE_RESTRICTED_USER})

ACTOR_USER: Final = "user"
ACTOR_SERVICE: Final = "service"

CONFIDENCE_VERIFIED: Final = "verified"
CONFIDENCE_ESTIMATED: Final = "estimated"

AGENT_TYPE_MCP: Final = "mcp_agent"

ALGORITHMS: Final = ("ES256", "ES384", "EdDSA", "PS256", "RS256")
"""Algorithms Mandate accepts on an envelope (never ``none``, never HS*)."""

MAX_TOKEN_BYTES: Final = 8192
MAX_JTI_LENGTH: Final = 128
MAX_LIFETIME_CEILING: Final = 3600
DEFAULT_MAX_LIFETIME: Final = 300
DEFAULT_SIGN_LIFETIME: Final = 60
CLOCK_SKEW: Final = 60

Mode = Literal["on_behalf_of", "service_identity", "restricted_user"]

# Envelope-level reasons (Go envelope.Error.Reason). The token endpoint answers them
# prefixed, see wire_reason.
REASON_BAD_FORMAT: Final = "bad_format"
REASON_TOO_LARGE: Final = "too_large"
REASON_WRONG_TYPE: Final = "wrong_type"
REASON_ALG_NOT_ALLOWED: Final = "alg_not_allowed"
REASON_UNKNOWN_KID: Final = "unknown_kid"
REASON_BAD_SIGNATURE: Final = "bad_signature"
REASON_EXPIRED: Final = "expired"
REASON_NOT_YET_VALID: Final = "not_yet_valid"
REASON_LIFETIME_TOO_LONG: Final = "lifetime_too_long"
REASON_ISSUER_MISMATCH: Final = "issuer_mismatch"
REASON_AUDIENCE_MISMATCH: Final = "audience_mismatch"
REASON_CLIENT_MISMATCH: Final = "client_mismatch"
REASON_MISSING_MEMBER: Final = "missing_member"
REASON_BAD_VALUE: Final = "bad_value"
REASON_KEYS_UNAVAILABLE: Final = "keys_unavailable"


def wire_reason(reason: str) -> str:
    """The ``reason`` the token endpoint answers for an envelope-level reason."""
    if reason == REASON_KEYS_UNAVAILABLE:
        return "client_keys_unavailable"
    if reason == REASON_TOO_LARGE:
        return "subject_token_too_large"  # refused with the parameters, before any parsing
    return "envelope_" + reason


class EnvelopeError(ValueError):
    """An envelope the signer refuses to sign, because Mandate would refuse it.

    ``reason`` is the envelope-level code (``missing_member``, ``bad_value``…);
    ``wire_reason`` is what the token endpoint would answer (``envelope_bad_value``…).
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"envelope {reason}: {description}")
        self.reason = reason
        self.description = description

    @property
    def wire_reason(self) -> str:
        return wire_reason(self.reason)


def _strings(v: Sequence[str]) -> tuple[str, ...]:
    if isinstance(v, str):
        raise TypeError("expected a sequence of strings, not a string")
    return tuple(v)


@dataclass(frozen=True, slots=True)
class Actor:
    """The user or service on whose behalf work is done; ``sub`` becomes the token's
    ``sub`` (user modes) or ``actor_sub``."""

    type: str
    sub: str
    tenant: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "sub": self.sub, "tenant": self.tenant}


@dataclass(frozen=True, slots=True)
class Agent:
    """The AI agent runtime that executes the tool; ``id`` becomes the token's
    ``act.sub``. ``client_id`` defaults to the envelope's ``iss`` when signing."""

    id: str
    client_id: str = ""
    type: str = AGENT_TYPE_MCP

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.type:
            d["type"] = self.type
        d["id"] = self.id
        d["client_id"] = self.client_id
        return d


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    trace_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id}
        if self.trace_id:
            d["trace_id"] = self.trace_id
        return d


@dataclass(frozen=True, slots=True)
class Authorization:
    """The scopes the MCP server validated for the user. Mandate only narrows them."""

    scopes: tuple[str, ...] = ()
    confidence: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", _strings(self.scopes))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scopes": list(self.scopes)}
        if self.confidence:
            d["confidence"] = self.confidence
        return d


@dataclass(frozen=True, slots=True)
class Delegation:
    """How the downstream call represents the actor; ``allowed`` (empty: any audience
    the grant covers) limits the audiences the envelope may be exchanged for."""

    mode: str
    allowed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", _strings(self.allowed))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode}
        if self.allowed:
            d["allowed"] = list(self.allowed)
        return d


@dataclass(frozen=True, slots=True)
class Act:
    """One link of an RFC 8693 §4.1 actor chain, newest outermost."""

    sub: str
    client_id: str = ""
    act: Act | None = None

    def depth(self) -> int:
        n = 0
        link: Act | None = self
        while link is not None:
            n, link = n + 1, link.act
        return n

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sub": self.sub}
        if self.client_id:
            d["client_id"] = self.client_id
        if self.act is not None:
            d["act"] = self.act.to_dict()
        return d


@dataclass(frozen=True, slots=True)
class Claims:
    """The payload of an envelope. ``iat``, ``exp`` and ``jti`` may be left out: the
    signer fills them (now, now + 60 s, 128 random bits)."""

    iss: str
    aud: str | tuple[str, ...]
    actor: Actor
    agent: Agent
    session: Session
    delegation: Delegation
    authorization: Authorization = field(default_factory=Authorization)
    iat: int | None = None
    exp: int | None = None
    nbf: int | None = None
    jti: str = ""
    act: Act | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.aud, str):
            object.__setattr__(self, "aud", _strings(self.aud))

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.aud,) if isinstance(self.aud, str) else self.aud

    def to_dict(self) -> dict[str, Any]:
        """The wire form, members in the Go signer's order."""
        d: dict[str, Any] = {"iss": self.iss}
        aud = self.audiences
        d["aud"] = aud[0] if len(aud) == 1 else list(aud)
        if self.iat is not None:
            d["iat"] = self.iat
        if self.exp is not None:
            d["exp"] = self.exp
        if self.nbf is not None:
            d["nbf"] = self.nbf
        d["jti"] = self.jti
        d["actor"] = self.actor.to_dict()
        d["agent"] = self.agent.to_dict()
        d["session"] = self.session.to_dict()
        d["authorization"] = self.authorization.to_dict()
        d["delegation"] = self.delegation.to_dict()
        if self.act is not None:
            d["act"] = self.act.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Claims:
        """Decodes the wire form strictly: a member of the wrong type is an
        ``EnvelopeError`` with reason ``bad_format``; absent members stay empty so the
        signer reports them as missing."""
        return _decode_claims(d)


def _bad_format(what: str) -> EnvelopeError:
    return EnvelopeError(REASON_BAD_FORMAT, f"{what} has the wrong type")


def _str(d: Mapping[str, Any], name: str, path: str) -> str:
    v = d.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _bad_format(path + name)
    return v


def _obj(d: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    v = d.get(name)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _bad_format(name)
    return v


def _str_list(d: Mapping[str, Any], name: str, path: str) -> tuple[str, ...]:
    v = d.get(name)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad_format(path + name)
    return tuple(v)


def _date(d: Mapping[str, Any], name: str) -> int | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v < 0 or v > 1 << 37:
        raise _bad_format(name)
    return int(v)


def _decode_act(v: Any, depth: int) -> Act | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or depth > 32:
        raise _bad_format("act")
    return Act(
        sub=_str(v, "sub", "act."),
        client_id=_str(v, "client_id", "act."),
        act=_decode_act(v.get("act"), depth + 1),
    )


def _decode_claims(d: Mapping[str, Any]) -> Claims:
    if not isinstance(d, Mapping):
        raise _bad_format("claims")
    aud_raw = d.get("aud")
    aud: str | tuple[str, ...]
    if aud_raw is None:
        aud = ()
    elif isinstance(aud_raw, str):
        aud = aud_raw
    elif isinstance(aud_raw, list) and all(isinstance(a, str) for a in aud_raw):
        aud = tuple(aud_raw)
    else:
        raise _bad_format("aud")
    actor, agent, session = _obj(d, "actor"), _obj(d, "agent"), _obj(d, "session")
    authz, deleg = _obj(d, "authorization"), _obj(d, "delegation")
    return Claims(
        iss=_str(d, "iss", ""),
        aud=aud,
        iat=_date(d, "iat"),
        exp=_date(d, "exp"),
        nbf=_date(d, "nbf"),
        jti=_str(d, "jti", ""),
        actor=Actor(
            _str(actor, "type", "actor."), _str(actor, "sub", "actor."), _str(actor, "tenant", "actor.")
        ),
        agent=Agent(
            id=_str(agent, "id", "agent."),
            client_id=_str(agent, "client_id", "agent."),
            type=_str(agent, "type", "agent."),
        ),
        session=Session(_str(session, "id", "session."), _str(session, "trace_id", "session.")),
        authorization=Authorization(
            _str_list(authz, "scopes", "authorization."), _str(authz, "confidence", "authorization.")
        ),
        delegation=Delegation(_str(deleg, "mode", "delegation."), _str_list(deleg, "allowed", "delegation.")),
        act=_decode_act(d.get("act"), 1),
    )


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A private key with its ``kid`` and JWS ``alg``. Register ``public_jwk()`` (in the
    client's ``jwks``) at Mandate under the same kid."""

    key: _jose.PrivateKey
    kid: str
    alg: str

    def __post_init__(self) -> None:
        if not self.kid:
            raise ValueError("a kid is required")
        if self.alg not in ALGORITHMS:
            raise ValueError(f"alg {self.alg!r} is not allowed (use one of {', '.join(ALGORITHMS)})")
        if not _jose.alg_fits_key(self.alg, self.key):
            raise ValueError(f"alg {self.alg} does not fit a {type(self.key).__name__}")

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        """A fresh key for alg (ES256 and ES384: P-256/P-384; EdDSA: Ed25519; PS256 and
        RS256: RSA 3072). kid defaults to a random id."""
        key: _jose.PrivateKey
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        elif alg in ("PS256", "RS256"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        else:
            raise ValueError(f"alg {alg!r} is not allowed (use one of {', '.join(ALGORITHMS)})")
        return cls(key, kid or "k-" + secrets.token_hex(8), alg)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], kid: str | None = None, alg: str | None = None) -> SigningKey:
        """A private JWK (``d`` present). kid and alg default to the JWK's own members,
        alg then to the key type's default (PS256 for RSA)."""
        key = _jose.key_from_jwk(dict(jwk))
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the JWK has no private key material")
        k = kid or jwk.get("kid")
        if not isinstance(k, str) or not k:
            raise ValueError("a kid is required")
        a = alg or jwk.get("alg") or _jose.default_alg(key)
        if not isinstance(a, str):
            raise ValueError("alg must be a string")
        return cls(key, k, a)

    @classmethod
    def from_pem(
        cls, pem: bytes, kid: str, alg: str | None = None, password: bytes | None = None
    ) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=password)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"unsupported key type {type(key).__name__}")
        return cls(key, kid, alg or _jose.default_alg(key))

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, with kid, alg and ``use: sig``."""
        return {**_jose.public_jwk(self.key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        return {**_jose.private_jwk(self.key), "kid": self.kid, "alg": self.alg, "use": "sig"}


def generate_key(alg: str = "ES256", kid: str | None = None) -> SigningKey:
    """Shorthand for ``SigningKey.generate``."""
    return SigningKey.generate(alg, kid)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """A JWK Set of the keys' public halves, to register as the client's ``jwks``."""
    return {"keys": [k.public_jwk() for k in keys]}


def sign_jws(key: SigningKey, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """A compact JWS over JSON payload. Used for envelopes and client assertions."""
    h = _jose.b64url_encode(json.dumps(dict(header), separators=(",", ":")).encode())
    p = _jose.b64url_encode(json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{h}.{p}"
    sig = _jose.sign(key.alg, key.key, signing_input.encode("ascii"))
    return f"{signing_input}.{_jose.b64url_encode(sig)}"


def _sig_size(key: _jose.PrivateKey) -> int:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return 2 * ((key.curve.key_size + 7) // 8)
    if isinstance(key, rsa.RSAPrivateKey):
        return (key.key_size + 7) // 8
    return 64


class Signer:
    """Builds and signs envelopes for one MCP server key. Thread-safe.

    ``clock`` returns the current Unix time (tests set it).
    """

    def __init__(self, key: SigningKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._header = _jose.b64url_encode(
            json.dumps({"alg": key.alg, "typ": TYPE, "kid": key.kid}, separators=(",", ":")).encode()
        )

    @property
    def key(self) -> SigningKey:
        return self._key

    def sign(self, claims: Claims) -> str:
        """Fills defaults (jti, iat = now, exp = iat + 60 s, agent.type ``mcp_agent``,
        agent.client_id = iss) and signs. Raises ``EnvelopeError`` (with the reason
        Mandate would answer) for an envelope Mandate would refuse on its content. The
        client's own maximum lifetime (300 s unless registered otherwise) is Mandate's to
        check: keep ``exp - iat`` within it."""
        iat = claims.iat if claims.iat is not None else int(self._clock())
        exp = claims.exp if claims.exp is not None else iat + DEFAULT_SIGN_LIFETIME
        agent = claims.agent
        if not agent.type or not agent.client_id:
            agent = Agent(
                id=agent.id, client_id=agent.client_id or claims.iss, type=agent.type or AGENT_TYPE_MCP
            )
        c = Claims(
            iss=claims.iss,
            aud=claims.aud,
            iat=iat,
            exp=exp,
            nbf=claims.nbf,
            jti=claims.jti or _jose.b64url_encode(secrets.token_bytes(16)),
            actor=claims.actor,
            agent=agent,
            session=claims.session,
            authorization=claims.authorization,
            delegation=claims.delegation,
            act=claims.act,
        )
        check_for_signing(c)
        payload = json.dumps(c.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        signing_input = f"{self._header}.{_jose.b64url_encode(payload)}"
        if len(signing_input) + 1 + (4 * _sig_size(self._key.key) + 2) // 3 > MAX_TOKEN_BYTES:
            raise EnvelopeError(REASON_TOO_LARGE, "the envelope would be larger than 8 KiB")
        sig = _jose.sign(self._key.alg, self._key.key, signing_input.encode("ascii"))
        return f"{signing_input}.{_jose.b64url_encode(sig)}"


def check_for_signing(c: Claims) -> None:
    """The signer's rules (docs/eie.md; Go ``checkForSigning`` + ``checkMembers``), in the
    Go signer's order so both refuse with the same reason."""
    if not c.iss:
        raise EnvelopeError(REASON_MISSING_MEMBER, "iss is required")
    if not c.audiences:
        raise EnvelopeError(REASON_MISSING_MEMBER, "aud is required (Mandate's issuer URL)")
    if c.agent.client_id != c.iss:
        raise EnvelopeError(REASON_CLIENT_MISMATCH, "agent.client_id must equal iss")
    if any(a == "" for a in c.audiences):
        raise EnvelopeError(REASON_BAD_VALUE, "aud holds an empty value")
    if c.iat is None or c.exp is None or c.exp <= c.iat:
        raise EnvelopeError(REASON_BAD_VALUE, "exp must be after iat")
    if c.exp - c.iat > MAX_LIFETIME_CEILING:
        raise EnvelopeError(REASON_LIFETIME_TOO_LONG, "exp - iat must be at most 3600 seconds")
    check_members(c)


def _has_control(s: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in s)


def _valid_text(s: str) -> bool:
    # A lone surrogate cannot be sent as UTF-8; Go would see it as U+FFFD.
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in s)


def _valid_scope_token(s: str) -> bool:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return s != "" and all(0x21 <= ord(ch) <= 0x7E and ch not in '"\\' for ch in s)


def check_members(c: Claims) -> None:
    """Required members and allowed values (Go ``checkMembers``), and ``actor.sub`` is
    never ``"*"`` (that value means "every user" only inside a grant)."""
    if not c.jti:
        raise EnvelopeError(REASON_MISSING_MEMBER, "the envelope has no jti")
    if not _valid_text(c.jti) or len(c.jti) > MAX_JTI_LENGTH:
        raise EnvelopeError(REASON_BAD_VALUE, "the envelope jti is longer than 128 characters")
    for value, name in (
        (c.actor.type, "actor.type"),
        (c.actor.sub, "actor.sub"),
        (c.actor.tenant, "actor.tenant"),
        (c.agent.id, "agent.id"),
        (c.session.id, "session.id"),
        (c.delegation.mode, "delegation.mode"),
    ):
        if not value:
            raise EnvelopeError(REASON_MISSING_MEMBER, f"the envelope has no {name}")
    if c.actor.type not in (ACTOR_USER, ACTOR_SERVICE):
        raise EnvelopeError(REASON_BAD_VALUE, 'the envelope actor.type must be "user" or "service"')
    if c.delegation.mode not in MODES:
        raise EnvelopeError(
            REASON_BAD_VALUE,
            "the envelope delegation.mode must be on_behalf_of, service_identity or restricted_user",
        )
    if c.actor.type == ACTOR_SERVICE and c.delegation.mode != MODE_SERVICE_IDENTITY:
        raise EnvelopeError(
            REASON_BAD_VALUE, "an envelope for a service actor must use delegation mode service_identity"
        )
    if c.authorization.confidence not in ("", CONFIDENCE_VERIFIED, CONFIDENCE_ESTIMATED):
        raise EnvelopeError(
            REASON_BAD_VALUE, 'the envelope authorization.confidence must be "verified" or "estimated"'
        )
    for s in c.authorization.scopes:
        if not _valid_scope_token(s):
            raise EnvelopeError(
                REASON_BAD_VALUE, "the envelope authorization.scopes holds a value that is not a valid scope"
            )
    for a in c.delegation.allowed:
        if a == "":
            raise EnvelopeError(REASON_BAD_VALUE, "the envelope delegation.allowed holds an empty audience")
    link = c.act
    while link is not None:
        if not link.sub:
            raise EnvelopeError(REASON_MISSING_MEMBER, "an act entry of the envelope has no sub")
        if _has_control(link.sub) or _has_control(link.client_id):
            raise EnvelopeError(REASON_BAD_VALUE, "an act entry of the envelope holds a control character")
        link = link.act
    for name, value in (
        ("jti", c.jti),
        ("actor.sub", c.actor.sub),
        ("actor.tenant", c.actor.tenant),
        ("agent.type", c.agent.type),
        ("agent.id", c.agent.id),
        ("session.id", c.session.id),
        ("session.trace_id", c.session.trace_id),
    ):
        if _has_control(value):
            raise EnvelopeError(REASON_BAD_VALUE, f"the envelope {name} holds a control character")
    for a in c.delegation.allowed:
        if _has_control(a):
            raise EnvelopeError(REASON_BAD_VALUE, "the envelope delegation.allowed holds a control character")
    if c.actor.sub == "*":
        raise EnvelopeError(
            REASON_BAD_VALUE, 'the envelope actor.sub must not be "*" (it means every user in a grant)'
        )
    texts = [c.iss, *c.audiences, c.actor.sub, c.actor.tenant, c.agent.id, c.agent.client_id, c.session.id]
    texts += [c.session.trace_id, *c.delegation.allowed, *c.authorization.scopes]
    if not all(_valid_text(t) for t in texts):
        raise EnvelopeError(REASON_BAD_VALUE, "the envelope holds a string that is not valid Unicode text")
