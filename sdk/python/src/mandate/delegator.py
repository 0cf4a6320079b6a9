"""The delegator: exchanges an identity for a Mandate access token per downstream
audience (RFC 8693), caches it until shortly before it expires, and attaches it (with
the W3C ``traceparent``) to HTTP calls — only to that audience's own base URLs.

``Delegator`` is the synchronous client, ``AsyncDelegator`` its asyncio twin; both
share the rules below and differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard
from urllib.parse import quote, quote_plus, unquote

import httpx

from .envelope import (
    CONFIDENCE_VERIFIED,
    TOKEN_TYPE,
    Agent,
    Authorization,
    Claims,
    Delegation,
    Signer,
    SigningKey,
    sign_jws,
)
from .errors import MandateError, UnavailableError, error_for, kind_of
from .identity import Identity, current_identity

GRANT_TYPE_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TOKEN_RESPONSE_BYTES: Final = 64 << 10
MAX_REDIRECTS: Final = 5

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]


class NoIdentityError(RuntimeError):
    """A downstream call was made outside a request that passed the identity boundary
    (or after the user's token expired). A tool must not fall back to calling the API as
    nobody, or as the server."""


class DestinationError(ValueError):
    """A request to a URL outside the audience's base URLs: refused before anything was
    sent, so the audience's token never reaches another host."""


# ---------------------------------------------------------------------------------------
# Shared rules


def cache_key(identity: Identity, audience: str, scopes: Sequence[str]) -> str:
    """(actor.type, tenant, actor.sub, agent.id, mode, audience, requested scopes,
    identity scopes), JSON-encoded so no value can collide with another. The identity's
    scopes bound what Mandate issues: a token exchanged for a broader inbound token must
    not serve a narrower one."""
    return json.dumps(
        [
            identity.actor.type,
            identity.actor.tenant,
            identity.actor.sub,
            identity.agent.id,
            identity.mode,
            audience,
            sorted(set(scopes)),
            sorted(set(identity.scopes)),
        ],
        separators=(",", ":"),
    )


@dataclass(frozen=True, slots=True)
class Token:
    """An issued access token. ``repr`` never shows it."""

    access_token: str
    expires_at: float
    use_until: float
    scope: str = ""

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at}, scope={self.scope!r})"


GrantRequestState = Literal["pending", "approved", "denied", "expired"]
GRANT_REQUEST_STATES: Final[frozenset[str]] = frozenset({"pending", "approved", "denied", "expired"})
DEFAULT_POLL_INTERVAL: Final = 5.0
"""RFC 8628 §3.2's default, when Mandate names no interval."""


@dataclass(frozen=True, slots=True)
class GrantRequestLink:
    """A created grant request: where the user approves it."""

    request_id: str
    url: str
    """This request's consent page (``verification_uri_complete``): give it to the user."""
    verification_uri: str
    """The consent page listing every request waiting for the signed-in user."""
    expires_at: float
    """Until when it can be decided (Unix seconds)."""
    interval: float
    """Poll its status no more often than this (seconds)."""

    def message(self, purpose: str = "") -> str:
        """What to tell the user about the link."""
        msg = "Approve access in your browser: " + self.url
        return f"{purpose}. {msg}" if purpose else msg


@dataclass(frozen=True, slots=True)
class GrantRequestStatus:
    """A grant request's state, as Mandate reports it to the client that created it."""

    request_id: str
    status: GrantRequestState
    grant_id: str = ""
    """The grant an approval created."""
    expires_at: float | None = None
    """While pending: until when it can be decided (Unix seconds)."""
    interval: float | None = None
    """While pending: poll no more often than this (seconds)."""


def _number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {}


class _Waiter:
    """The state of waiting for a grant request: which interval to honour, and whether a
    failed read may be retried (only an unavailable Mandate, while the request can still
    be decided)."""

    def __init__(self, request: GrantRequestLink | str, clock: Callable[[], float]) -> None:
        if isinstance(request, GrantRequestLink):
            self.request_id = request.request_id
            self.interval = request.interval
            self.expires_at: float | None = request.expires_at
        else:
            self.request_id, self.interval, self.expires_at = request, DEFAULT_POLL_INTERVAL, None
        self._clock = clock

    def delay(self) -> float:
        return max(1.0, self.interval)

    def retry(self, err: MandateError) -> bool:
        decidable = self.expires_at is not None and self._clock() < self.expires_at
        if not isinstance(err, UnavailableError) or not decidable:
            return False
        self.interval = max(self.interval, err.retry_after or 0.0)
        return True

    def done(self, st: GrantRequestStatus) -> bool:
        if st.status != "pending":
            return True
        if st.interval is not None:
            self.interval = st.interval
        if st.expires_at is not None:
            self.expires_at = st.expires_at
        return False


class _Cache:
    """A bounded LRU of tokens. Errors are never stored."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[str, Token] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Token | None:
        with self._lock:
            t = self._items.get(key)
            if t is None:
                return None
            if now >= t.use_until:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return t

    def put(self, key: str, t: Token, now: float) -> None:
        with self._lock:
            self._items[key] = t
            self._items.move_to_end(key)
            if len(self._items) > self._max:
                for k in [k for k, v in self._items.items() if now >= v.use_until]:
                    del self._items[k]
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class _Core:
    """Configuration and the pure parts of an exchange: envelope, form, answer."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        signer: Signer,
        client_secret: str | None,
        auth_method: AuthMethod | None,
        assertion_key: SigningKey | None,
        token_url: str | None,
        envelope_lifetime: int,
        allowed: Sequence[str],
        refresh_before: float,
        max_cache_entries: int,
        audiences: Mapping[str, Sequence[str]] | None,
        clock: Callable[[], float],
    ) -> None:
        if not issuer or not client_id:
            raise ValueError("issuer and client_id are required")
        if issuer.endswith("/"):
            raise ValueError("issuer must not end with a slash (envelopes' aud must equal it exactly)")
        if (client_secret is None) == (assertion_key is None):
            raise ValueError("set exactly one of client_secret and assertion_key")
        if assertion_key is not None:
            method: AuthMethod = "private_key_jwt"
            if auth_method not in (None, "private_key_jwt"):
                raise ValueError("assertion_key means private_key_jwt")
        else:
            method = auth_method or "client_secret_basic"
            if method == "private_key_jwt":
                raise ValueError("private_key_jwt needs assertion_key")
        if envelope_lifetime <= 0 or envelope_lifetime > 300:
            raise ValueError("envelope_lifetime must be within 1..300 seconds")
        if max_cache_entries <= 0:
            raise ValueError("max_cache_entries must be positive")
        self.issuer = issuer
        self.client_id = client_id
        self.signer = signer
        self._secret = client_secret
        self.auth_method = method
        self._assertion_key = assertion_key
        self.token_url = token_url or issuer + "/oauth2/token"
        self.envelope_lifetime = envelope_lifetime
        self.allowed = tuple(allowed)
        self.refresh_before = refresh_before
        self.cache = _Cache(max_cache_entries)
        self.audiences = {a: _parse_bases(urls) for a, urls in (audiences or {}).items()}
        self.clock = clock
        self.exchanges = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:  # keeps the client secret out of logs
        return f"<{type(self).__name__} issuer={self.issuer!r} client_id={self.client_id!r}>"

    def check_identity(self, identity: Identity | None) -> Identity:
        if identity is None:
            raise NoIdentityError("no identity: the call did not come through the identity boundary")
        if identity.expires_at is not None and self.clock() >= identity.expires_at:
            raise NoIdentityError("the user's token has expired")
        return identity

    def request(
        self, identity: Identity, audience: str, scopes: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of one exchange, with a fresh envelope (and assertion)."""
        now = int(self.clock())
        exp = now + self.envelope_lifetime
        if identity.expires_at is not None and identity.expires_at < exp:
            exp = int(identity.expires_at)  # the envelope never outlives the user's proof
        if exp <= now:
            raise NoIdentityError("the user's token expires within a second")
        envelope = self.signer.sign(
            Claims(
                iss=self.client_id,
                aud=self.issuer,
                iat=now,
                exp=exp,
                actor=identity.actor,
                agent=Agent(id=identity.agent.id, client_id=self.client_id, type=identity.agent.type),
                session=identity.session,
                authorization=Authorization(identity.scopes, CONFIDENCE_VERIFIED),
                delegation=Delegation(identity.mode, self.allowed),
                act=identity.act,
            )
        )
        return self.form(envelope, audience, scopes)

    def form(
        self, envelope: str, audience: str, scopes: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers that exchange envelope (with a fresh assertion)."""
        now = int(self.clock())
        form = {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": envelope,
            "subject_token_type": TOKEN_TYPE,
            "audience": audience,
        }
        if scopes:
            form["scope"] = " ".join(scopes)
        fields, headers = self.credentials(now)
        form.update(fields)
        with self._count_lock:
            self.exchanges += 1
        return form, headers

    def credentials(self, now: int) -> tuple[dict[str, str], dict[str, str]]:
        """The client's credentials, the one way every call to Mandate authenticates
        (RFC 6749 §2.3.1, RFC 7523): members for the body, or a Basic header."""
        headers = {"Accept": "application/json"}
        if self.auth_method == "private_key_jwt":
            assert self._assertion_key is not None
            assertion = sign_jws(
                self._assertion_key,
                {"alg": self._assertion_key.alg, "typ": "JWT", "kid": self._assertion_key.kid},
                {
                    "iss": self.client_id,
                    "sub": self.client_id,
                    "aud": self.token_url,
                    "iat": now,
                    "exp": now + 60,
                    "jti": secrets.token_hex(16),
                },
            )
            return {
                "client_id": self.client_id,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            }, headers
        assert self._secret is not None
        if self.auth_method == "client_secret_post":
            return {"client_id": self.client_id, "client_secret": self._secret}, headers
        # RFC 6749 §2.3.1: form-encode each part before base64.
        creds = f"{quote_plus(self.client_id)}:{quote_plus(self._secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        return {}, headers

    # Grant requests (docs/protocol.md#grant-requests-and-user-consent)

    def grant_request(
        self,
        identity: Identity | None,
        audiences: Sequence[str],
        scopes: Sequence[str],
        purpose: str,
        modes: Sequence[str],
        duration: int | None,
        any_agent: bool,
    ) -> tuple[Identity, dict[str, Any], dict[str, str]]:
        """The JSON body and headers that create a grant request for identity's user."""
        ident = self.check_identity(identity)
        if isinstance(audiences, str) or isinstance(scopes, str) or isinstance(modes, str):
            raise TypeError("audiences, scopes and modes are sequences of strings")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0
        ):
            raise ValueError("duration is a positive whole number of seconds")
        body: dict[str, Any] = {
            "tenant": ident.actor.tenant,
            "subject": ident.actor.sub,
            "audiences": list(audiences),
            "scopes": list(scopes),
            "purpose": purpose,
        }
        if not any_agent and ident.agent.id:
            body["agent_id"] = ident.agent.id
        if modes:
            body["modes"] = list(modes)
        if duration is not None:
            body["duration"] = duration
        fields, headers = self.credentials(int(self.clock()))
        body.update(fields)
        headers["Content-Type"] = "application/json"
        return ident, body, headers

    def grant_request_poll(self, request_id: str) -> tuple[str, str, dict[str, str] | None, dict[str, str]]:
        """Method, URL, form and headers that read a grant request: GET with Basic, else a
        POST with the credentials in the form."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("a grant request id is required")
        url = self.issuer + "/oauth2/grant-requests/" + quote(request_id, safe="")
        fields, headers = self.credentials(int(self.clock()))
        if "Authorization" in headers:
            return "GET", url, None, headers
        return "POST", url, fields, headers

    def grant_request_refusal(
        self, status: int, headers: httpx.Headers, doc: Mapping[str, Any], audience: str, operation: str
    ) -> MandateError:
        """A refusal of the grant request endpoint, typed by reason. None of its reasons asks
        for a grant: the request *is* the ask, so a grant_required reason there is a
        ClientError."""
        code, reason = doc.get("error"), str(doc.get("reason") or "")
        return error_for(
            status=status,
            code=code
            if isinstance(code, str) and code
            else ("server_error" if status >= 500 else "invalid_request"),
            reason=reason,
            audience=audience,
            description=str(doc.get("error_description") or (f"HTTP {status}" if not code else "")),
            retry_after=_retry_after(headers.get("Retry-After"), self.clock()),
            operation=operation,
            kind="client_error" if kind_of(status, reason) == "grant_required" else None,
        )

    def grant_request_link(
        self, status: int, headers: httpx.Headers, body: bytes, audiences: Sequence[str], now: float
    ) -> GrantRequestLink:
        doc = _json_object(body)
        audience = " ".join(audiences)
        operation = "a grant request for " + audience
        if status != 201:
            raise self.grant_request_refusal(status, headers, doc, audience, operation)
        rid, url, expires_in, interval = (
            doc.get("request_id"),
            doc.get("verification_uri_complete"),
            doc.get("expires_in"),
            doc.get("interval"),
        )
        if (
            not isinstance(rid, str)
            or not rid
            # The link is shown to the user: it must be Mandate's own consent page.
            or not isinstance(url, str)
            or not url.startswith(self.issuer + "/")
            or not _number(expires_in)
            or expires_in <= 0
            or (interval is not None and not _number(interval))
        ):
            raise UnavailableError(
                code="server_error",
                reason="",
                status=status,
                audience=audience,
                description="malformed grant request answer",
                operation=operation,
            )
        vuri = doc.get("verification_uri")
        return GrantRequestLink(
            request_id=rid,
            url=url,
            verification_uri=vuri if isinstance(vuri, str) else url,
            expires_at=now + float(expires_in),
            interval=float(interval) if _number(interval) and interval > 0 else DEFAULT_POLL_INTERVAL,
        )

    def grant_request_state(
        self, request_id: str, status: int, headers: httpx.Headers, body: bytes, now: float
    ) -> GrantRequestStatus:
        doc = _json_object(body)
        operation = "the status of grant request " + request_id
        if status != 200:
            raise self.grant_request_refusal(status, headers, doc, "", operation)
        state = doc.get("status")
        if doc.get("request_id") != request_id or state not in GRANT_REQUEST_STATES:
            raise UnavailableError(
                code="server_error",
                reason="",
                status=status,
                audience="",
                description="malformed grant request status",
                operation=operation,
            )
        grant_id, expires_in, interval = doc.get("grant_id"), doc.get("expires_in"), doc.get("interval")
        return GrantRequestStatus(
            request_id=request_id,
            status=state,
            grant_id=grant_id if isinstance(grant_id, str) else "",
            expires_at=now + float(expires_in) if _number(expires_in) else None,
            interval=float(interval) if _number(interval) and interval > 0 else None,
        )

    def answer(
        self, identity: Identity | None, audience: str, status: int, headers: httpx.Headers, body: bytes
    ) -> Token:
        now = self.clock()
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        if status != 200:
            code = doc.get("error")
            return_error = error_for(
                status=status,
                code=code
                if isinstance(code, str) and code
                else ("server_error" if status >= 500 else "invalid_request"),
                reason=str(doc.get("reason") or ""),
                audience=audience,
                description=str(doc.get("error_description") or (f"HTTP {status}" if not code else "")),
                retry_after=_retry_after(headers.get("Retry-After"), now),
                tenant=identity.actor.tenant if identity else "",
                subject=identity.actor.sub if identity else "",
                grant_request_endpoint=str(doc.get("grant_request_endpoint") or ""),
            )
            raise return_error
        tok, life, ttype = doc.get("access_token"), doc.get("expires_in"), doc.get("token_type")
        if (
            not isinstance(tok, str)
            or not tok
            or isinstance(life, bool)
            or not isinstance(life, int | float)
            or life <= 0
            or not isinstance(ttype, str)
            or ttype.lower() != "bearer"
        ):
            raise UnavailableError(
                code="server_error",
                reason="",
                status=status,
                audience=audience,
                description="malformed token response",
            )
        exp = now + float(life)
        margin = min(self.refresh_before, float(life) / 5)
        scope = doc.get("scope")
        return Token(tok, exp, exp - margin, scope if isinstance(scope, str) else "")

    def network_error(self, audience: str, err: Exception, operation: str = "") -> MandateError:
        return UnavailableError(
            code="network_error",
            reason="",
            status=0,
            audience=audience,
            description=f"{type(err).__name__} talking to Mandate",
            operation=operation,
        )

    def bases(self, audience: str, base_urls: Sequence[str] | None) -> tuple[_Base, ...]:
        parsed = _parse_bases(base_urls) if base_urls is not None else self.audiences.get(audience, ())
        if not parsed:
            raise ValueError(f"no base URLs configured for audience {audience!r}")
        return parsed


# ---------------------------------------------------------------------------------------
# Base URLs


@dataclass(frozen=True, slots=True)
class _Base:
    scheme: str
    host: str
    port: int
    path: str  # without a trailing slash; "" is the whole origin


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _port(url: httpx.URL) -> int:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme, -1)


def _parse_bases(urls: Sequence[str]) -> tuple[_Base, ...]:
    if isinstance(urls, str):
        raise TypeError("base URLs must be a sequence of strings")
    out = []
    for u in urls:
        url = httpx.URL(u)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base URL {u!r} must be an absolute http(s) URL")
        if url.query or url.fragment or url.userinfo:
            raise ValueError(f"base URL {u!r} must not carry a query, fragment or credentials")
        out.append(_Base(url.scheme, url.host.lower(), _port(url), url.path.rstrip("/")))
    return tuple(out)


def _under(url: httpx.URL, bases: Sequence[_Base]) -> bool:
    """Same scheme, host and port, and a path under the base on a segment boundary. A
    path with dot segments (even percent-encoded) is never under anything: a server that
    decodes them would resolve it elsewhere."""
    if url.userinfo:
        return False
    path = url.path
    if any(seg in (".", "..") or "\\" in seg for seg in unquote(path).split("/")):
        return False
    if "%2f" in url.raw_path.decode("ascii", "replace").lower():
        return False
    for b in bases:
        same_origin = url.scheme == b.scheme and (url.host or "").lower() == b.host and _port(url) == b.port
        if same_origin and (b.path == "" or path == b.path or path.startswith(b.path + "/")):
            return True
    return False


def _redirect(request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
    """The next request of a redirect (RFC 9110 §15.4), or None when response is not
    one that can be followed."""
    if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
        return None
    try:
        url = request.url.join(response.headers["location"])
    except httpx.InvalidURL:
        return None
    method = request.method
    if (response.status_code == 303 and method != "HEAD") or (
        response.status_code in (301, 302) and method == "POST"
    ):
        method = "GET"
    headers = httpx.Headers(request.headers)
    for h in ("authorization", "traceparent", "host", "cookie"):
        headers.pop(h, None)
    if method != request.method:
        headers.pop("content-length", None)
        headers.pop("transfer-encoding", None)
        headers.pop("content-type", None)
        return httpx.Request(method, url, headers=headers, extensions=request.extensions)
    if not isinstance(request.stream, httpx.ByteStream):
        return None  # a streamed body cannot be sent twice: hand the 3xx to the caller
    return httpx.Request(method, url, headers=headers, content=request.content, extensions=request.extensions)


def _with_token(request: httpx.Request, token: str, identity: Identity) -> httpx.Request:
    headers = httpx.Headers(request.headers)
    headers["Authorization"] = "Bearer " + token
    tp = identity.traceparent()
    if tp:
        headers["traceparent"] = tp
    else:
        headers.pop("traceparent", None)
    return httpx.Request(
        request.method, request.url, headers=headers, stream=request.stream, extensions=request.extensions
    )


def _invalid_token(response: httpx.Response) -> bool:
    return response.status_code == 401 and 'error="invalid_token"' in response.headers.get(
        "www-authenticate", ""
    )


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


# ---------------------------------------------------------------------------------------
# Sync


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: Token | None = None
        self.error: BaseException | None = None


class Delegator:
    """Exchanges identities for Mandate access tokens (synchronous).

    Exactly one of ``client_secret`` (``client_secret_basic`` by default, or
    ``auth_method="client_secret_post"``) and ``assertion_key`` (``private_key_jwt``;
    its public half registered in the client's ``jwks``). ``audiences`` maps each
    downstream audience to its base URLs, the only places its token is sent.
    """

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        signer: Signer,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        assertion_key: SigningKey | None = None,
        audiences: Mapping[str, Sequence[str]] | None = None,
        token_url: str | None = None,
        envelope_lifetime: int = 60,
        allowed: Sequence[str] = (),
        refresh_before: float = 30.0,
        max_cache_entries: int = 10_000,
        http_client: httpx.Client | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = _Core(
            issuer=issuer,
            client_id=client_id,
            signer=signer,
            client_secret=client_secret,
            auth_method=auth_method,
            assertion_key=assertion_key,
            token_url=token_url,
            envelope_lifetime=envelope_lifetime,
            allowed=allowed,
            refresh_before=refresh_before,
            max_cache_entries=max_cache_entries,
            audiences=audiences,
            clock=clock,
        )
        self._own_client = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def __repr__(self) -> str:
        return repr(self._core)

    @property
    def exchanges(self) -> int:
        """How many exchanges were sent to Mandate."""
        return self._core.exchanges

    def close(self) -> None:
        if self._own_client:
            self._http.close()

    def __enter__(self) -> Delegator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def token(self, identity: Identity | None, audience: str, scopes: Sequence[str] = ()) -> Token:
        """A token for audience acting for identity, from the cache while it is more than
        ``refresh_before`` (at most a fifth of its life) from expiry. Concurrent callers
        for the same key share one exchange."""
        ident = self._core.check_identity(identity)
        key = cache_key(ident, audience, scopes)
        cached = self._core.cache.get(key, self._core.clock())
        if cached is not None:
            return cached
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.token is not None
            return flight.token
        try:
            tok = self._core.cache.get(key, self._core.clock())
            if tok is None:
                tok = self._exchange(ident, audience, scopes)
                self._core.cache.put(key, tok, self._core.clock())
            flight.token = tok
            return tok
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def forget(self, identity: Identity, audience: str, scopes: Sequence[str] = ()) -> None:
        """Drops the cached token, for example after the API refused it."""
        self._core.cache.delete(cache_key(identity, audience, scopes))

    def exchange_envelope(
        self, envelope: str, audience: str, scopes: Sequence[str] = (), *, identity: Identity | None = None
    ) -> Token:
        """Exchanges an envelope signed by the caller, without the cache. identity, when
        given, names the user in a ``GrantRequiredError``."""
        form, headers = self._core.form(envelope, audience, scopes)
        return self._post(identity, audience, form, headers)

    def _exchange(self, identity: Identity, audience: str, scopes: Sequence[str]) -> Token:
        form, headers = self._core.request(identity, audience, scopes)
        return self._post(identity, audience, form, headers)

    def _post(
        self, identity: Identity | None, audience: str, form: dict[str, str], headers: dict[str, str]
    ) -> Token:
        try:
            with self._http.stream("POST", self._core.token_url, data=form, headers=headers) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        break
                status, rh = resp.status_code, resp.headers
        except httpx.HTTPError as e:
            raise self._core.network_error(audience, e) from None
        return self._core.answer(identity, audience, status, rh, body[:MAX_TOKEN_RESPONSE_BYTES])

    # Grant requests (docs/protocol.md#grant-requests-and-user-consent)

    def request_grant(
        self,
        identity: Identity | None,
        *,
        audiences: Sequence[str],
        scopes: Sequence[str],
        purpose: str,
        modes: Sequence[str] = (),
        duration: int | None = None,
        any_agent: bool = False,
    ) -> GrantRequestLink:
        """Asks Mandate to have identity's user grant this client ``scopes`` on
        ``audiences`` (``POST /oauth2/grant-requests``), for identity's agent unless
        ``any_agent``, and returns the link to give the user: typically after a
        ``GrantRequiredError`` that ``grant_required`` accepts. ``duration`` is in seconds
        (default: the audiences' ``max_consent_duration``); ``purpose`` is shown to the
        user. Mandate's refusals raise ``ClientError`` (``audience_requires_admin_consent``,
        ``consent_duration_too_long``, ``invalid_grant_request``, …) or
        ``UnavailableError``."""
        _, body, headers = self._core.grant_request(
            identity, audiences, scopes, purpose, modes, duration, any_agent
        )
        now = self._core.clock()
        status, rh, raw = self._call(
            "POST",
            self._core.issuer + "/oauth2/grant-requests",
            headers,
            json_body=body,
            audience=" ".join(audiences),
            operation="a grant request for " + " ".join(audiences),
        )
        return self._core.grant_request_link(status, rh, raw, audiences, now)

    def grant_request_status(self, request_id: str) -> GrantRequestStatus:
        """Reads a grant request this client created (``GET
        /oauth2/grant-requests/{id}``; a ``POST`` with the credentials in the body for
        ``client_secret_post`` and ``private_key_jwt``). Poll no faster than its
        ``interval``, or use ``wait_for_grant``."""
        method, url, form, headers = self._core.grant_request_poll(request_id)
        now = self._core.clock()
        status, rh, raw = self._call(
            method, url, headers, form=form, operation="the status of grant request " + request_id
        )
        return self._core.grant_request_state(request_id, status, rh, raw, now)

    def wait_for_grant(
        self, request: GrantRequestLink | str, *, timeout: float | None = None
    ) -> GrantRequestStatus:
        """Polls until the user (or an admin) decides the request or it expires, waiting
        its ``interval`` (as Mandate last said, at least 1 s) before each read; returns the
        final status (``approved`` with ``grant_id``, ``denied`` or ``expired``). A read
        that fails with ``UnavailableError`` is retried after ``max(interval,
        retry_after)`` while the request can still be decided. Raises ``TimeoutError``
        after ``timeout`` seconds."""
        w = _Waiter(request, self._core.clock)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            delay = w.delay()
            if deadline is not None and time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise TimeoutError(f"grant request {w.request_id} is still pending")
            time.sleep(delay)
            try:
                st = self.grant_request_status(w.request_id)
            except MandateError as e:
                if w.retry(e):
                    continue
                raise
            if w.done(st):
                return st

    def _call(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        audience: str = "",
        operation: str = "",
    ) -> tuple[int, httpx.Headers, bytes]:
        try:
            with self._http.stream(method, url, json=json_body, data=form, headers=headers) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        break
                return resp.status_code, resp.headers, body[:MAX_TOKEN_RESPONSE_BYTES]
        except httpx.HTTPError as e:
            raise self._core.network_error(audience, e, operation) from None

    def transport(
        self,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        base_urls: Sequence[str] | None = None,
        identity: Identity | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> MandateTransport:
        """An httpx transport for audience (see ``MandateTransport``)."""
        return MandateTransport(
            self,
            audience,
            self._core.bases(audience, base_urls),
            scopes=scopes,
            identity=identity,
            transport=transport,
        )

    def client(
        self,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        base_urls: Sequence[str] | None = None,
        identity: Identity | None = None,
        transport: httpx.BaseTransport | None = None,
        **kwargs: Any,
    ) -> httpx.Client:
        """An ``httpx.Client`` whose requests carry audience's token. Redirects are
        handled by the transport (followed only under the base URLs), so the client
        itself never follows them."""
        kwargs["follow_redirects"] = False
        return httpx.Client(
            transport=self.transport(
                audience, scopes=scopes, base_urls=base_urls, identity=identity, transport=transport
            ),
            **kwargs,
        )


class MandateTransport(httpx.BaseTransport):
    """Attaches an audience's token and ``traceparent`` to each request under its base
    URLs; refuses any other URL before sending (``DestinationError``). The identity is
    the one given, else the current one (``current_identity()``). Redirects are followed
    (at most 5) while they stay under the base URLs; any other redirect is returned to
    the caller unfollowed. A 401 ``invalid_token`` answer drops the cached token and
    retries once with a fresh exchange."""

    def __init__(
        self,
        delegator: Delegator,
        audience: str,
        bases: Sequence[_Base],
        *,
        scopes: Sequence[str] = (),
        identity: Identity | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._d = delegator
        self._audience = audience
        self._bases = tuple(bases)
        self._scopes = tuple(scopes)
        self._identity = identity
        self._inner = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not _under(request.url, self._bases):
            raise DestinationError(
                f"{request.url.copy_with(query=None)} is not under a base URL of {self._audience}"
            )
        identity = self._identity or current_identity()
        response = self._send(request, identity)
        if _invalid_token(response) and _replayable(request):
            response.close()
            if identity is not None:
                self._d.forget(identity, self._audience, self._scopes)
            response = self._send(request, identity)
        for _ in range(MAX_REDIRECTS):
            nxt = _redirect(request, response)
            if nxt is None or not _under(nxt.url, self._bases):
                return response
            response.read()
            response.close()
            request = nxt
            response = self._send(request, identity)
        return response

    def _send(self, request: httpx.Request, identity: Identity | None) -> httpx.Response:
        token = self._d.token(identity, self._audience, self._scopes)
        assert identity is not None
        return self._inner.handle_request(_with_token(request, token.access_token, identity))

    def close(self) -> None:
        self._inner.close()


# ---------------------------------------------------------------------------------------
# Async


class AsyncDelegator:
    """The asynchronous twin of ``Delegator`` (asyncio). An exchange runs in its own
    task that every caller for the same key awaits (shielded), so a caller that is
    cancelled cancels neither the exchange nor the others; it is bounded by ``timeout``."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        signer: Signer,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        assertion_key: SigningKey | None = None,
        audiences: Mapping[str, Sequence[str]] | None = None,
        token_url: str | None = None,
        envelope_lifetime: int = 60,
        allowed: Sequence[str] = (),
        refresh_before: float = 30.0,
        max_cache_entries: int = 10_000,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = _Core(
            issuer=issuer,
            client_id=client_id,
            signer=signer,
            client_secret=client_secret,
            auth_method=auth_method,
            assertion_key=assertion_key,
            token_url=token_url,
            envelope_lifetime=envelope_lifetime,
            allowed=allowed,
            refresh_before=refresh_before,
            max_cache_entries=max_cache_entries,
            audiences=audiences,
            clock=clock,
        )
        self._own_client = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._timeout = timeout
        self._flights: dict[str, asyncio.Task[Token]] = {}

    def __repr__(self) -> str:
        return repr(self._core)

    @property
    def exchanges(self) -> int:
        return self._core.exchanges

    async def aclose(self) -> None:
        if self._own_client:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncDelegator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def token(self, identity: Identity | None, audience: str, scopes: Sequence[str] = ()) -> Token:
        """See ``Delegator.token``."""
        ident = self._core.check_identity(identity)
        key = cache_key(ident, audience, scopes)
        cached = self._core.cache.get(key, self._core.clock())
        if cached is not None:
            return cached
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._fly(key, ident, audience, scopes))
            self._flights[key] = flight
        return await asyncio.shield(flight)

    async def _fly(self, key: str, identity: Identity, audience: str, scopes: Sequence[str]) -> Token:
        try:
            try:
                async with asyncio.timeout(self._timeout + 5):
                    tok = await self._exchange(identity, audience, scopes)
            except TimeoutError as e:
                raise self._core.network_error(audience, e) from None
            self._core.cache.put(key, tok, self._core.clock())
            return tok
        finally:
            self._flights.pop(key, None)

    def forget(self, identity: Identity, audience: str, scopes: Sequence[str] = ()) -> None:
        self._core.cache.delete(cache_key(identity, audience, scopes))

    async def exchange_envelope(
        self, envelope: str, audience: str, scopes: Sequence[str] = (), *, identity: Identity | None = None
    ) -> Token:
        """See ``Delegator.exchange_envelope``."""
        form, headers = self._core.form(envelope, audience, scopes)
        return await self._post(identity, audience, form, headers)

    async def _exchange(self, identity: Identity, audience: str, scopes: Sequence[str]) -> Token:
        form, headers = self._core.request(identity, audience, scopes)
        return await self._post(identity, audience, form, headers)

    async def _post(
        self, identity: Identity | None, audience: str, form: dict[str, str], headers: dict[str, str]
    ) -> Token:
        try:
            async with self._http.stream("POST", self._core.token_url, data=form, headers=headers) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        break
                status, rh = resp.status_code, resp.headers
        except httpx.HTTPError as e:
            raise self._core.network_error(audience, e) from None
        return self._core.answer(identity, audience, status, rh, body[:MAX_TOKEN_RESPONSE_BYTES])

    # Grant requests (docs/protocol.md#grant-requests-and-user-consent)

    async def request_grant(
        self,
        identity: Identity | None,
        *,
        audiences: Sequence[str],
        scopes: Sequence[str],
        purpose: str,
        modes: Sequence[str] = (),
        duration: int | None = None,
        any_agent: bool = False,
    ) -> GrantRequestLink:
        """See ``Delegator.request_grant``."""
        _, body, headers = self._core.grant_request(
            identity, audiences, scopes, purpose, modes, duration, any_agent
        )
        now = self._core.clock()
        status, rh, raw = await self._call(
            "POST",
            self._core.issuer + "/oauth2/grant-requests",
            headers,
            json_body=body,
            audience=" ".join(audiences),
            operation="a grant request for " + " ".join(audiences),
        )
        return self._core.grant_request_link(status, rh, raw, audiences, now)

    async def grant_request_status(self, request_id: str) -> GrantRequestStatus:
        """See ``Delegator.grant_request_status``."""
        method, url, form, headers = self._core.grant_request_poll(request_id)
        now = self._core.clock()
        status, rh, raw = await self._call(
            method, url, headers, form=form, operation="the status of grant request " + request_id
        )
        return self._core.grant_request_state(request_id, status, rh, raw, now)

    async def wait_for_grant(self, request: GrantRequestLink | str) -> GrantRequestStatus:
        """See ``Delegator.wait_for_grant``. To bound the wait, wrap it in
        ``asyncio.timeout(...)``; cancelling the task stops it too."""
        w = _Waiter(request, self._core.clock)
        while True:
            await asyncio.sleep(w.delay())
            try:
                st = await self.grant_request_status(w.request_id)
            except MandateError as e:
                if w.retry(e):
                    continue
                raise
            if w.done(st):
                return st

    async def _call(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        audience: str = "",
        operation: str = "",
    ) -> tuple[int, httpx.Headers, bytes]:
        try:
            async with self._http.stream(method, url, json=json_body, data=form, headers=headers) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                        break
                return resp.status_code, resp.headers, body[:MAX_TOKEN_RESPONSE_BYTES]
        except httpx.HTTPError as e:
            raise self._core.network_error(audience, e, operation) from None

    def transport(
        self,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        base_urls: Sequence[str] | None = None,
        identity: Identity | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> AsyncMandateTransport:
        return AsyncMandateTransport(
            self,
            audience,
            self._core.bases(audience, base_urls),
            scopes=scopes,
            identity=identity,
            transport=transport,
        )

    def client(
        self,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        base_urls: Sequence[str] | None = None,
        identity: Identity | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose requests carry audience's token (see
        ``Delegator.client``)."""
        kwargs["follow_redirects"] = False
        return httpx.AsyncClient(
            transport=self.transport(
                audience, scopes=scopes, base_urls=base_urls, identity=identity, transport=transport
            ),
            **kwargs,
        )


class AsyncMandateTransport(httpx.AsyncBaseTransport):
    """The asynchronous twin of ``MandateTransport``."""

    def __init__(
        self,
        delegator: AsyncDelegator,
        audience: str,
        bases: Sequence[_Base],
        *,
        scopes: Sequence[str] = (),
        identity: Identity | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._d = delegator
        self._audience = audience
        self._bases = tuple(bases)
        self._scopes = tuple(scopes)
        self._identity = identity
        self._inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not _under(request.url, self._bases):
            raise DestinationError(
                f"{request.url.copy_with(query=None)} is not under a base URL of {self._audience}"
            )
        identity = self._identity or current_identity()
        response = await self._send(request, identity)
        if _invalid_token(response) and _replayable(request):
            await response.aclose()
            if identity is not None:
                self._d.forget(identity, self._audience, self._scopes)
            response = await self._send(request, identity)
        for _ in range(MAX_REDIRECTS):
            nxt = _redirect(request, response)
            if nxt is None or not _under(nxt.url, self._bases):
                return response
            await response.aread()
            await response.aclose()
            request = nxt
            response = await self._send(request, identity)
        return response

    async def _send(self, request: httpx.Request, identity: Identity | None) -> httpx.Response:
        token = await self._d.token(identity, self._audience, self._scopes)
        assert identity is not None
        return await self._inner.handle_async_request(_with_token(request, token.access_token, identity))

    async def aclose(self) -> None:
        await self._inner.aclose()
