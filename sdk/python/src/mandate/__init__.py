"""Mandate SDK for Python: sign Execution Identity Envelopes, exchange them at Mandate for
per-API tokens (and attach those only to each API's own URLs), and verify the tokens in
downstream APIs.

Submodules: ``mandate.envelope``, ``mandate.delegator``, ``mandate.downstream``,
``mandate.errors``, ``mandate.identity``; with extras, ``mandate.mcp`` (the official MCP
SDK's boundary, extra ``mcp``) and ``mandate.asgi`` (Starlette/FastAPI, extra
``starlette``). Importing does no I/O and reads no configuration.
"""

from .delegator import (
    AsyncDelegator,
    AsyncMandateTransport,
    Delegator,
    DestinationError,
    GrantRequestLink,
    GrantRequestStatus,
    MandateTransport,
    NoIdentityError,
    Token,
)
from .downstream import (
    AsyncVerifier,
    InsufficientScopeError,
    Introspection,
    InvalidTokenError,
    Principal,
    TokenVerificationError,
    VerificationUnavailableError,
    Verifier,
)
from .envelope import (
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
    generate_key,
    jwks,
)
from .errors import ClientError, GrantRequiredError, MandateError, UnavailableError, grant_required
from .identity import Identity, current_identity, use_identity

__all__ = [
    "Act",
    "Actor",
    "Agent",
    "AsyncDelegator",
    "AsyncMandateTransport",
    "AsyncVerifier",
    "Authorization",
    "Claims",
    "ClientError",
    "Delegation",
    "Delegator",
    "DestinationError",
    "EnvelopeError",
    "GrantRequestLink",
    "GrantRequestStatus",
    "GrantRequiredError",
    "Identity",
    "InsufficientScopeError",
    "Introspection",
    "InvalidTokenError",
    "MandateError",
    "MandateTransport",
    "NoIdentityError",
    "Principal",
    "Session",
    "Signer",
    "SigningKey",
    "Token",
    "TokenVerificationError",
    "UnavailableError",
    "VerificationUnavailableError",
    "Verifier",
    "current_identity",
    "generate_key",
    "grant_required",
    "jwks",
    "use_identity",
]
