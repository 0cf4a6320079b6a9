"""Typed errors for Mandate's token and grant request endpoint answers (RFC 6749 §5.2
plus ``reason``).

An SDK tells "ask the user for a grant" from "fix your code" from "retry later" by the
stable ``reason`` code, never by matching text. The table below is this SDK's copy of
``testdata/reasons.json``; a test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

Kind = Literal["grant_required", "client_error", "unavailable"]

GRANT_REQUIRED: Final = "grant_required"
CLIENT_ERROR: Final = "client_error"
UNAVAILABLE: Final = "unavailable"

REASON_KINDS: Final[Mapping[str, Kind]] = MappingProxyType(
    {
        "client_authentication_failed": "client_error",
        "rate_limited": "unavailable",
        "malformed_request": "client_error",
        "request_too_large": "client_error",
        "unsupported_grant_type": "client_error",
        "grant_type_not_allowed": "client_error",
        "missing_subject_token": "client_error",
        "bad_subject_token_type": "client_error",
        "subject_token_too_large": "client_error",
        "missing_target": "client_error",
        "bad_requested_token_type": "client_error",
        "envelope_bad_format": "client_error",
        "envelope_too_large": "client_error",
        "envelope_wrong_type": "client_error",
        "envelope_alg_not_allowed": "client_error",
        "envelope_unknown_kid": "client_error",
        "envelope_bad_signature": "client_error",
        "envelope_expired": "client_error",
        "envelope_not_yet_valid": "client_error",
        "envelope_lifetime_too_long": "client_error",
        "envelope_issuer_mismatch": "client_error",
        "envelope_audience_mismatch": "client_error",
        "envelope_client_mismatch": "client_error",
        "envelope_missing_member": "client_error",
        "envelope_bad_value": "client_error",
        "client_keys_invalid": "client_error",
        "client_keys_unavailable": "unavailable",
        "tenant_not_allowed": "client_error",
        "act_chain_too_deep": "client_error",
        "unknown_audience": "client_error",
        "unknown_resource": "client_error",
        "conflicting_targets": "client_error",
        "audience_not_in_envelope": "client_error",
        "audience_not_allowed_for_client": "client_error",
        "mode_not_allowed_for_audience": "client_error",
        "mode_not_allowed_for_client": "client_error",
        "service_actor_requires_service_identity": "client_error",
        "service_actor_not_allowed": "client_error",
        "no_active_grant": "grant_required",
        "grant_does_not_cover_audience_or_mode": "grant_required",
        "grant_expires_too_soon": "grant_required",
        "grant_revoked": "grant_required",
        "scope_not_allowed": "grant_required",
        "no_effective_scope": "grant_required",
        "envelope_replayed": "client_error",
        "storage_unavailable": "unavailable",
        "signing_failed": "unavailable",
        "internal_error": "unavailable",
        "token_not_issued_to_client": "client_error",
        # Grant requests (docs/protocol.md#grant-requests-and-user-consent) and the consent pages.
        "invalid_grant_request": "client_error",
        "audience_requires_admin_consent": "client_error",
        "consent_duration_too_long": "client_error",
        "scope_not_requestable": "client_error",
        "grant_request_not_found": "client_error",
        "grant_request_expired": "client_error",
        "grant_request_already_decided": "client_error",
        "grant_request_changed": "client_error",
        "consent_wrong_user": "client_error",
        "consent_wrong_tenant": "client_error",
        "csrf_check_failed": "client_error",
        "grant_not_yours": "client_error",
        "grant_already_revoked": "client_error",
        "sign_in_failed": "client_error",
        "sign_in_without_tenant": "client_error",
    }
)
"""Every reason the token endpoint answers, with what an SDK does about it."""


def kind_of(status: int, reason: str | None) -> Kind:
    """The kind for an answer: the reason's, when known; else unavailable for 429, 5xx
    (and network failures, status 0), client_error otherwise."""
    if reason and reason in REASON_KINDS:
        return REASON_KINDS[reason]
    if status == 0 or status == 429 or status >= 500:
        return "unavailable"
    return "client_error"


class MandateError(Exception):
    """Mandate refused (or could not answer) a token request.

    ``code`` is the OAuth ``error``, ``reason`` Mandate's stable reason code,
    ``kind`` what to do about it, ``status`` the HTTP status (0: no answer),
    ``audience`` the downstream API the token was for, ``retry_after`` seconds from
    ``Retry-After`` when given. The message names the audience and Mandate's words, and
    is fit to show as a tool error.
    """

    kind: Kind = "client_error"

    def __init__(
        self,
        *,
        code: str,
        reason: str,
        status: int,
        audience: str,
        description: str = "",
        retry_after: float | None = None,
        operation: str = "",
    ) -> None:
        msg = f"Mandate refused {operation or 'a token for ' + (audience or '?')}: {code}"
        if reason:
            msg += f" [{reason}]"
        if description:
            msg += f" ({description})"
        super().__init__(msg)
        self.code = code
        self.reason = reason
        self.status = status
        self.audience = audience
        self.description = description
        self.retry_after = retry_after


class GrantRequiredError(MandateError):
    """The user has not granted this (or the grant does not cover it): ask them, then
    retry. ``tenant`` and ``subject`` name the user, for a grant request;
    ``grant_request_endpoint`` is set when the audience lets the user grant it
    themselves (see ``grant_required`` and ``Delegator.request_grant``)."""

    kind: Kind = "grant_required"

    def __init__(
        self,
        *,
        code: str,
        reason: str,
        status: int,
        audience: str,
        description: str = "",
        retry_after: float | None = None,
        tenant: str = "",
        subject: str = "",
        grant_request_endpoint: str = "",
        operation: str = "",
    ) -> None:
        super().__init__(
            code=code,
            reason=reason,
            status=status,
            audience=audience,
            description=description,
            retry_after=retry_after,
            operation=operation,
        )
        self.tenant = tenant
        self.subject = subject
        self.grant_request_endpoint = grant_request_endpoint


class ClientError(MandateError):
    """A developer or admin must change something; retrying as is fails again."""

    kind: Kind = "client_error"


class UnavailableError(MandateError):
    """Mandate (or what it depends on) is unavailable: retry later, after
    ``retry_after`` seconds when set."""

    kind: Kind = "unavailable"


def error_for(
    *,
    status: int,
    code: str,
    reason: str,
    audience: str,
    description: str = "",
    retry_after: float | None = None,
    tenant: str = "",
    subject: str = "",
    grant_request_endpoint: str = "",
    operation: str = "",
    kind: Kind | None = None,
) -> MandateError:
    """Builds the typed error for an answer, in one place. ``kind`` overrides the one
    the status and reason give."""
    kind = kind or kind_of(status, reason)
    if kind == "grant_required":
        return GrantRequiredError(
            code=code,
            reason=reason,
            status=status,
            audience=audience,
            description=description,
            retry_after=retry_after,
            tenant=tenant,
            subject=subject,
            grant_request_endpoint=grant_request_endpoint,
            operation=operation,
        )
    cls: type[MandateError] = UnavailableError if kind == "unavailable" else ClientError
    return cls(
        code=code,
        reason=reason,
        status=status,
        audience=audience,
        description=description,
        retry_after=retry_after,
        operation=operation,
    )


_USER_CAN_GRANT: Final = frozenset({"no_active_grant", "grant_does_not_cover_audience_or_mode"})


def grant_required(err: BaseException | None) -> GrantRequiredError | None:
    """err when it is a refusal for lack of a grant the user may give themselves (reason
    ``no_active_grant`` or ``grant_does_not_cover_audience_or_mode``, on an audience whose
    refusal named a ``grant_request_endpoint``), else None. Other grant refusals
    (``scope_not_allowed``, an ``admin_only`` audience) need an admin or another request."""
    if isinstance(err, GrantRequiredError) and err.grant_request_endpoint and err.reason in _USER_CAN_GRANT:
        return err
    return None
