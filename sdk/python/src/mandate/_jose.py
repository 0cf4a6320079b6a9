"""JWS plumbing shared by the envelope signer and the token verifiers.

PyJWT supplies the algorithm implementations and JWK import/export (on top of
``cryptography``); the compact serialization, the header rules and the algorithm
allow-lists are handled here, explicitly, so that no header member can pick a key or
an algorithm on its own.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

MIN_RSA_BITS = 2048

_ALGS: dict[str, Any] = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "ES384": ECAlgorithm(ECAlgorithm.SHA384),
    "EdDSA": OKPAlgorithm(),
    "PS256": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
}

# Never "none", never HS*: those have no entry in _ALGS and so can never be used,
# whatever a caller passes as an allow-list.
SUPPORTED_ALGS = frozenset(_ALGS)

_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class JOSEError(ValueError):
    """A malformed JWS or key. The message never contains the token."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str) -> bytes:
    """Strict base64url without padding: any other character, or non-zero trailing
    bits (a second spelling of the same bytes), is an error."""
    raw = data.encode("ascii", "strict") if data.isascii() else None
    if raw is None or any(c not in _B64URL for c in raw):
        raise JOSEError("not base64url")
    try:
        out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as e:
        raise JOSEError("not base64url") from e
    if b64url_encode(out) != data:
        raise JOSEError("not canonical base64url")
    return out


def alg_fits_key(alg: str, key: object) -> bool:
    """Whether alg is the algorithm family (and curve) of key, so an RSA key never
    verifies an ES256 header and a P-384 key never an ES256 one."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return (alg == "ES256" and isinstance(key.curve, ec.SECP256R1)) or (
            alg == "ES384" and isinstance(key.curve, ec.SECP384R1)
        )
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return alg == "EdDSA"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return alg in ("PS256", "RS256") and key.key_size >= MIN_RSA_BITS
    return False


def default_alg(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ES384"
        raise JOSEError("EC keys must be on P-256 or P-384")
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise JOSEError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return "PS256"
    raise JOSEError(f"unsupported key type {type(key).__name__}")


def sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    if alg not in _ALGS or not alg_fits_key(alg, key):
        raise JOSEError(f"alg {alg} does not fit this key")
    return cast(bytes, _ALGS[alg].sign(data, key))


def verify(alg: str, key: PublicKey, data: bytes, signature: bytes) -> bool:
    if alg not in _ALGS or not alg_fits_key(alg, key):
        return False
    try:
        return bool(_ALGS[alg].verify(data, key, signature))
    except Exception:  # a malformed signature is a failed verification, never a crash
        return False


def key_from_jwk(jwk: dict[str, Any]) -> PublicKey | PrivateKey:
    """Imports a JWK (public or private) of type EC, OKP (Ed25519) or RSA."""
    kty = jwk.get("kty")
    doc = json.dumps(jwk)
    try:
        if kty == "EC":
            key: Any = ECAlgorithm.from_jwk(doc)
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise JOSEError("OKP keys must be Ed25519")
            key = OKPAlgorithm.from_jwk(doc)
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(doc)
        else:
            raise JOSEError(f"unsupported kty {kty!r}")
    except JOSEError:
        raise
    except Exception as e:
        raise JOSEError("malformed JWK") from e
    if not isinstance(
        key,
        ec.EllipticCurvePublicKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PublicKey
        | ed25519.Ed25519PrivateKey
        | rsa.RSAPublicKey
        | rsa.RSAPrivateKey,
    ):
        raise JOSEError("unsupported key")
    return key


def public_jwk(key: PublicKey | PrivateKey) -> dict[str, Any]:
    """The public JWK members of key (no kid, alg or use)."""
    pub: PublicKey = (
        key.public_key()
        if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey)
        else key
    )
    if isinstance(pub, ec.EllipticCurvePublicKey):
        doc: Any = ECAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        doc = OKPAlgorithm.to_jwk(pub, as_dict=True)
    else:
        doc = RSAAlgorithm.to_jwk(pub, as_dict=True)
    out = dict(doc)
    for member in ("key_ops", "ext", "alg", "kid", "use"):
        out.pop(member, None)
    return out


def private_jwk(key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        doc: Any = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        doc = OKPAlgorithm.to_jwk(key, as_dict=True)
    else:
        doc = RSAAlgorithm.to_jwk(key, as_dict=True)
    out = dict(doc)
    for member in ("key_ops", "ext", "alg", "kid", "use"):
        out.pop(member, None)
    return out


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A split compact JWS: the decoded header and payload bytes, the signing input and
    the signature. Nothing here is verified yet."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def split_compact(token: str, max_bytes: int) -> CompactJWS:
    if len(token) > max_bytes:
        raise JOSEError("token too large")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise JOSEError("not a JWS in compact serialization")
    h64, p64, s64 = parts
    try:
        header = json.loads(b64url_decode(h64))
    except (JOSEError, ValueError, UnicodeDecodeError) as e:
        raise JOSEError("malformed header") from e
    if not isinstance(header, dict):
        raise JOSEError("header is not a JSON object")
    payload = b64url_decode(p64)
    signature = b64url_decode(s64)
    return CompactJWS(header, payload, f"{h64}.{p64}".encode("ascii"), signature)
