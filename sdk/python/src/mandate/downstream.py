"""The resource-server side: verify the access tokens Mandate issues (RFC 9068) offline
through its JWKS, or online through introspection (RFC 7662), and turn them into a
``Principal`` that tells the user, the service and the agent Mandate vouched for apart.

``Verifier`` is synchronous (Flask, Django, scripts), ``AsyncVerifier`` its twin for
ASGI; ``mandate.asgi`` puts the latter in front of a Starlette or FastAPI app. Errors
carry the RFC 6750 ``error`` code and a stable ``reason``; tokens never appear in them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote_plus

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import _jose

MAX_TOKEN_BYTES: Final = 8192
MAX_JWKS_BYTES: Final = 256 << 10
MAX_INTROSPECTION_BYTES: Final = 64 << 10
MAX_ACT_DEPTH: Final = 16
DEFAULT_ALGORITHMS: Final = ("ES256", "EdDSA")
_FORBIDDEN_HEADER_MEMBERS: Final = ("jku", "x5u", "jwk", "x5c", "crit")


class TokenVerificationError(Exception):
    """A token was refused (``invalid_token``, 401; ``insufficient_scope``, 403) or could
    not be checked (``temporarily_unavailable``, 503). ``error`` is the RFC 6750 code,
    ``reason`` a stable code for logs and metrics, ``description`` says which check
    failed and never what the token held."""

    error: str = "invalid_token"
    status: int = 401

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{self.error}: {description}")
        self.reason = reason
        self.description = description


class InvalidTokenError(TokenVerificationError):
    error = "invalid_token"
    status = 401


class InsufficientScopeError(TokenVerificationError):
    error = "insufficient_scope"
    status = 403

    def __init__(self, required: Sequence[str]) -> None:
        super().__init__("insufficient_scope", "the token lacks a scope this resource requires")
        self.scope = " ".join(required)


class VerificationUnavailableError(TokenVerificationError):
    """The JWKS or the introspection endpoint could not be reached: the token was neither
    accepted nor found bad. Answer 503, not 401."""

    error = "temporarily_unavailable"
    status = 503


@dataclass(frozen=True, slots=True)
class Actor:
    """One agent of the ``act`` chain (RFC 8693 §4.1)."""

    sub: str
    client_id: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says is calling.

    ``actor_type`` is ``"user"`` or ``"service"``. ``user`` is the person the call is for
    (``actor_sub``, else ``sub``) and is None for a service actor, whose id is in
    ``service``: a service is never presented as a user. ``agent`` is the agent Mandate
    vouched for (the outermost ``act``, else ``agent_id``/``client_id``);
    ``prior_actors`` is the rest of the chain, newest first — asserted by the MCP server
    alone, not verified by Mandate.
    """

    actor_type: str
    user: str | None
    service: str | None
    tenant: str
    subject: str
    mode: str
    agent: Actor | None
    prior_actors: tuple[Actor, ...]
    client_id: str
    scopes: tuple[str, ...]
    trace_id: str = ""
    session_id: str = ""
    grant_id: str = ""
    audience: str = ""
    jti: str = ""
    issued_at: int | None = None
    expires_at: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def type_ok(typ: object) -> bool:
    """RFC 9068 ``at+jwt``, case-insensitively, with or without ``application/``."""
    return isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt")


@dataclass(frozen=True, slots=True)
class _Key:
    key: _jose.PublicKey
    alg: str


def parse_jwks(doc: Any) -> dict[str, _Key]:
    """The public signature keys of a JWK Set that have a kid. Keys for encryption,
    private keys, symmetric keys and short RSA keys are skipped: a verifier must never
    accept an HMAC "key" an issuer happened to publish."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError('JWKS must be an object with a "keys" array')
    out: dict[str, _Key] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        kid, use, alg = jwk.get("kid"), jwk.get("use"), jwk.get("alg")
        if not isinstance(kid, str) or not kid or (use not in (None, "", "sig")) or "d" in jwk or "k" in jwk:
            continue
        try:
            key = _jose.key_from_jwk(dict(jwk))
        except _jose.JOSEError:
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _jose.MIN_RSA_BITS:
            continue
        out[kid] = _Key(key, alg if isinstance(alg, str) else "")
    return out


class _KeyState:
    """The JWKS cache's state and rules, shared by the sync and async caches: fetch when
    there is no set, when it is older than max_age, or when a kid is unknown and the last
    attempt is older than min_refresh_interval (1 s while no set was ever fetched)."""

    def __init__(
        self, url: str, min_refresh_interval: float, max_age: float, clock: Callable[[], float]
    ) -> None:
        self.url = url
        self.min_refresh = min_refresh_interval
        self.max_age = max_age
        self.clock = clock
        self.keys: dict[str, _Key] | None = None
        self.fetched_at = 0.0
        self.tried_at: float | None = None
        self.last_error: str | None = None
        self.fetches = 0

    def lookup(self, kid: str) -> tuple[_Key | None, bool]:
        """(key, must_fetch)."""
        now = self.clock()
        key = self.keys.get(kid) if self.keys is not None else None
        stale = self.keys is None or now - self.fetched_at > self.max_age
        if key is not None and not stale:
            return key, False
        interval = self.min_refresh if self.keys is not None else min(self.min_refresh, 1.0)
        if self.tried_at is not None and now - self.tried_at < interval:
            return key, False
        return key, True

    def begin(self) -> None:
        self.tried_at = self.clock()
        self.fetches += 1

    def finish(self, keys: dict[str, _Key] | None, error: str | None) -> None:
        self.last_error = error
        if keys is not None:
            self.keys = keys
            self.fetched_at = self.clock()

    def result(self, kid: str) -> _Key:
        key = self.keys.get(kid) if self.keys is not None else None
        if key is not None:
            return key
        if self.last_error is not None:
            raise VerificationUnavailableError(
                "jwks_unavailable", "the issuer's keys cannot be fetched right now"
            )
        raise InvalidTokenError("unknown_kid", "no key with this kid in the issuer's JWKS")

    def parse(self, status: int, body: bytes) -> dict[str, _Key]:
        if status != 200:
            raise ValueError(f"JWKS answered HTTP {status}")
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        return parse_jwks(json.loads(body))


class JWKS:
    """A cached remote JWK Set (synchronous). One fetch at a time; concurrent callers
    wait for it. A failed refetch keeps the keys already held."""

    def __init__(
        self,
        url: str,
        *,
        http_client: httpx.Client | None = None,
        min_refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = _KeyState(url, min_refresh_interval, max_age, clock)
        self._http = http_client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._lock = threading.Lock()
        self._inflight: threading.Event | None = None

    @property
    def fetches(self) -> int:
        return self._s.fetches

    def key(self, kid: str) -> _Key:
        with self._lock:
            key, must = self._s.lookup(kid)
            wait = self._inflight
            if wait is None and not must:
                if key is not None:
                    return key
                return self._s.result(kid)
            if wait is None:
                wait = self._inflight = threading.Event()
                self._s.begin()
                leader = True
            else:
                leader = False
        if leader:
            keys, err = None, None
            try:
                resp = self._http.get(self._s.url, headers={"Accept": "application/json"})
                keys = self._s.parse(resp.status_code, resp.content)
            except (httpx.HTTPError, ValueError) as e:
                err = type(e).__name__
            with self._lock:
                self._s.finish(keys, err)
                self._inflight = None
            wait.set()
        else:
            wait.wait()
        with self._lock:
            return self._s.result(kid)

    def close(self) -> None:
        self._http.close()


class AsyncJWKS:
    """The asynchronous twin of ``JWKS``."""

    def __init__(
        self,
        url: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        min_refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = _KeyState(url, min_refresh_interval, max_age, clock)
        self._http = http_client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._timeout = timeout
        self._inflight: asyncio.Task[None] | None = None

    @property
    def fetches(self) -> int:
        return self._s.fetches

    async def key(self, kid: str) -> _Key:
        key, must = self._s.lookup(kid)
        if self._inflight is None and not must:
            if key is not None:
                return key
            return self._s.result(kid)
        if self._inflight is None:
            self._s.begin()
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
        # Shielded: other callers wait for this fetch, and a caller that hangs up must not
        # leave a failed attempt behind that blocks refreshes.
        await asyncio.shield(self._inflight)
        return self._s.result(kid)

    async def _refresh(self) -> None:
        keys, err = None, None
        try:
            async with asyncio.timeout(self._timeout + 5):
                resp = await self._http.get(self._s.url, headers={"Accept": "application/json"})
                keys = self._s.parse(resp.status_code, resp.content)
        except (httpx.HTTPError, ValueError, TimeoutError) as e:
            err = type(e).__name__
        finally:
            self._s.finish(keys, err)
            self._inflight = None

    async def aclose(self) -> None:
        await self._http.aclose()


# ---------------------------------------------------------------------------------------
# Claims → Principal


def _date(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v < 0 or v > 1 << 37:
        raise InvalidTokenError("malformed", "a time claim is malformed")
    return int(v)


def _s(c: Mapping[str, Any], name: str) -> str:
    v = c.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidTokenError("malformed", f"claim {name} is not a string")
    return v


def principal_from_claims(
    c: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    leeway: float,
    introspection: bool = False,
) -> Principal:
    """Checks the registered claims (iss exact, aud contains audience, exp required,
    iat/nbf not in the future, all with leeway) and builds the Principal."""
    if c.get("iss") != issuer:
        raise InvalidTokenError("wrong_issuer", "wrong issuer")
    aud = c.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in auds:
        raise InvalidTokenError("wrong_audience", "token is for another audience")
    exp = _date(c.get("exp"))
    if exp is None:
        raise InvalidTokenError("missing_claim", "exp missing")
    if now >= exp + leeway:
        raise InvalidTokenError("expired", "token expired")
    iat = _date(c.get("iat"))
    if iat is None and not introspection:
        raise InvalidTokenError("missing_claim", "iat missing")
    if iat is not None and iat > now + leeway:
        raise InvalidTokenError("not_yet_valid", "token issued in the future")
    nbf = _date(c.get("nbf"))
    if nbf is not None and nbf > now + leeway:
        raise InvalidTokenError("not_yet_valid", "token not yet valid")
    sub = _s(c, "sub")
    if not sub:
        raise InvalidTokenError("missing_claim", "sub missing")
    actor_sub, agent_id, client_id = _s(c, "actor_sub"), _s(c, "agent_id"), _s(c, "client_id")
    mode, actor_type = _s(c, "delegation_mode"), _s(c, "actor_type")

    chain: list[Actor] = []
    link = c.get("act")
    while link is not None:
        if not isinstance(link, Mapping) or not isinstance(link.get("sub"), str):
            raise InvalidTokenError("malformed", "act is malformed")
        if len(chain) == MAX_ACT_DEPTH:
            raise InvalidTokenError("malformed", "act chain too deep")
        chain.append(Actor(link["sub"], _s(link, "client_id")))
        link = link.get("act")

    exchanged = bool(mode or actor_sub or agent_id or chain)
    user: str | None
    service: str | None
    if actor_type == "user":
        user, service = actor_sub or sub, None
    elif actor_type == "service":
        if exchanged and not actor_sub:
            raise InvalidTokenError("malformed", "a service token has no actor_sub")
        user, service = None, actor_sub or sub
    elif actor_type:
        raise InvalidTokenError("bad_actor_type", "token has an unknown actor_type")
    elif exchanged:
        # Never guess: a service actor's actor_sub read as a user would be an escalation.
        raise InvalidTokenError("no_actor_type", "token has no actor_type")
    else:
        # client_credentials: the calling client itself, a service.
        actor_type, user, service = "service", None, sub

    agent: Actor | None
    if chain:
        agent, prior = chain[0], tuple(chain[1:])
    else:
        agent, prior = (Actor(agent_id, client_id) if agent_id else None), ()
    scope = _s(c, "scope")
    return Principal(
        actor_type=actor_type,
        user=user,
        service=service,
        tenant=_s(c, "tenant"),
        subject=sub,
        mode=mode,
        agent=agent,
        prior_actors=prior,
        client_id=client_id,
        scopes=tuple(scope.split()),
        trace_id=_s(c, "trace_id"),
        session_id=_s(c, "session_id"),
        grant_id=_s(c, "grant_id"),
        audience=audience,
        jti=_s(c, "jti"),
        issued_at=iat,
        expires_at=exp,
        claims=dict(c),
    )


def check_scopes(p: Principal, required: Sequence[str]) -> None:
    if any(s not in p.scopes for s in required):
        raise InsufficientScopeError(required)


# ---------------------------------------------------------------------------------------
# Verifiers


@dataclass(frozen=True, slots=True)
class Introspection:
    """How this API authenticates to Mandate's introspection endpoint
    (``client_secret_basic``). ``endpoint`` defaults to issuer + ``/oauth2/introspect``."""

    client_id: str
    client_secret: str = field(repr=False)
    endpoint: str = ""


class _VerifierCore:
    def __init__(
        self,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway: float,
        introspection: Introspection | None,
        clock: Callable[[], float],
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if issuer.endswith("/"):
            raise ValueError("issuer must not end with a slash")
        algs = tuple(algorithms)
        bad = [a for a in algs if a not in _jose.SUPPORTED_ALGS]
        if not algs or bad:
            raise ValueError(f"unsupported algorithms {bad} (never none, never HS*)")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algs)
        self.leeway = leeway
        self.clock = clock
        if introspection is not None and not introspection.endpoint:
            introspection = Introspection(
                introspection.client_id, introspection.client_secret, issuer + "/oauth2/introspect"
            )
        if introspection is not None and (not introspection.client_id or not introspection.client_secret):
            raise ValueError("introspection needs client_id and client_secret")
        self.introspection = introspection

    def split(self, token: str) -> tuple[_jose.CompactJWS, str]:
        try:
            jws = _jose.split_compact(token, MAX_TOKEN_BYTES)
        except _jose.JOSEError:
            raise InvalidTokenError("malformed", "token is not a compact JWS") from None
        h = jws.header
        if not type_ok(h.get("typ")):
            raise InvalidTokenError("wrong_type", "token typ is not at+jwt")
        alg = h.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidTokenError("alg_not_allowed", "token alg is not allowed")
        if any(m in h for m in _FORBIDDEN_HEADER_MEMBERS):
            raise InvalidTokenError("malformed", "token header names its own key or critical extensions")
        kid = h.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidTokenError("malformed", "token header has no kid")
        return jws, kid

    def finish(self, jws: _jose.CompactJWS, key: _Key) -> Principal:
        alg = jws.header["alg"]
        if key.alg and key.alg != alg:
            raise InvalidTokenError("alg_not_allowed", "token alg does not match its key")
        if not _jose.verify(alg, key.key, jws.signing_input, jws.signature):
            raise InvalidTokenError("bad_signature", "token signature does not verify")
        try:
            claims = json.loads(jws.payload)
        except ValueError:
            raise InvalidTokenError("malformed", "token claims are not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidTokenError("malformed", "token claims are not a JSON object")
        return principal_from_claims(
            claims, issuer=self.issuer, audience=self.audience, now=self.clock(), leeway=self.leeway
        )

    def introspection_request(self, token: str) -> tuple[str, dict[str, str], dict[str, str]]:
        ic = self.introspection
        if ic is None:
            raise RuntimeError("introspection is not configured")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidTokenError("malformed", "token too large")
        creds = f"{quote_plus(ic.client_id)}:{quote_plus(ic.client_secret)}"
        headers = {
            "Authorization": "Basic " + base64.b64encode(creds.encode()).decode(),
            "Accept": "application/json",
        }
        return ic.endpoint, {"token": token, "token_type_hint": "access_token"}, headers

    def introspection_answer(self, status: int, body: bytes) -> Principal:
        if status != 200 or len(body) > MAX_INTROSPECTION_BYTES:
            # 401 here means this API's own credentials are wrong: a server fault.
            raise VerificationUnavailableError("introspection_unavailable", "introspection failed")
        try:
            doc = json.loads(body)
        except ValueError:
            raise VerificationUnavailableError(
                "introspection_unavailable", "malformed introspection answer"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
            raise VerificationUnavailableError("introspection_unavailable", "malformed introspection answer")
        if not doc["active"]:
            raise InvalidTokenError("inactive", "token is not active")
        return principal_from_claims(
            doc,
            issuer=self.issuer,
            audience=self.audience,
            now=self.clock(),
            leeway=self.leeway,
            introspection=True,
        )


class Verifier:
    """Verifies Mandate access tokens for one audience (synchronous). Nothing is fetched
    until the first token arrives. ``jwks_url`` defaults to issuer +
    ``/.well-known/jwks.json``."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        introspection: Introspection | None = None,
        http_client: httpx.Client | None = None,
        min_refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._c = _VerifierCore(issuer, audience, algorithms, leeway, introspection, clock)
        self._http = http_client or httpx.Client(timeout=10.0, follow_redirects=False)
        self.jwks = JWKS(
            jwks_url or issuer + "/.well-known/jwks.json",
            http_client=self._http,
            min_refresh_interval=min_refresh_interval,
            max_age=max_age,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"Verifier(issuer={self._c.issuer!r}, audience={self._c.audience!r})"

    def verify(self, token: str, required_scopes: Sequence[str] = ()) -> Principal:
        """Offline: signature with a key from the JWKS, typ, alg, iss, aud, times,
        actor_type, then the required scopes."""
        jws, kid = self._c.split(token)
        p = self._c.finish(jws, self.jwks.key(kid))
        check_scopes(p, required_scopes)
        return p

    def introspect(self, token: str, required_scopes: Sequence[str] = ()) -> Principal:
        """Online: asks Mandate whether the token is active, so a revoked token or grant
        is refused at once."""
        url, form, headers = self._c.introspection_request(token)
        try:
            resp = self._http.post(url, data=form, headers=headers)
        except httpx.HTTPError:
            raise VerificationUnavailableError("introspection_unavailable", "introspection failed") from None
        p = self._c.introspection_answer(resp.status_code, resp.content)
        check_scopes(p, required_scopes)
        return p

    def close(self) -> None:
        self._http.close()


class AsyncVerifier:
    """The asynchronous twin of ``Verifier``."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        introspection: Introspection | None = None,
        http_client: httpx.AsyncClient | None = None,
        min_refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._c = _VerifierCore(issuer, audience, algorithms, leeway, introspection, clock)
        self._http = http_client or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self.jwks = AsyncJWKS(
            jwks_url or issuer + "/.well-known/jwks.json",
            http_client=self._http,
            min_refresh_interval=min_refresh_interval,
            max_age=max_age,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"AsyncVerifier(issuer={self._c.issuer!r}, audience={self._c.audience!r})"

    @property
    def can_introspect(self) -> bool:
        return self._c.introspection is not None

    async def verify(self, token: str, required_scopes: Sequence[str] = ()) -> Principal:
        jws, kid = self._c.split(token)
        p = self._c.finish(jws, await self.jwks.key(kid))
        check_scopes(p, required_scopes)
        return p

    async def introspect(self, token: str, required_scopes: Sequence[str] = ()) -> Principal:
        url, form, headers = self._c.introspection_request(token)
        try:
            resp = await self._http.post(url, data=form, headers=headers)
        except httpx.HTTPError:
            raise VerificationUnavailableError("introspection_unavailable", "introspection failed") from None
        p = self._c.introspection_answer(resp.status_code, resp.content)
        check_scopes(p, required_scopes)
        return p

    async def aclose(self) -> None:
        await self._http.aclose()
