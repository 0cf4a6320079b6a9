"""The SDK's reason table equals testdata/reasons.json, and every reason becomes the
right typed error."""

from __future__ import annotations

import json

import pytest

from mandate.errors import (
    REASON_KINDS,
    ClientError,
    GrantRequiredError,
    MandateError,
    UnavailableError,
    error_for,
    grant_required,
    kind_of,
)
from support import REPO_ROOT

REASONS = json.loads((REPO_ROOT / "testdata" / "reasons.json").read_text())["reasons"]
WITH_KIND = [r for r in REASONS if r["kind"]]
# Reasons an OAuth endpoint answers (the consent pages' own reasons have no OAuth error).
ANSWERED = [r for r in WITH_KIND if r["error"]]


def test_table_equals_reasons_json() -> None:
    assert dict(REASON_KINDS) == {r["reason"]: r["kind"] for r in WITH_KIND}


@pytest.mark.parametrize("r", ANSWERED, ids=lambda r: r["reason"])
def test_every_reason_maps_to_its_class(r: dict[str, object]) -> None:
    e = error_for(
        status=int(r["status"]),  # type: ignore[call-overload]
        code=str(r["error"]),
        reason=str(r["reason"]),
        audience="orders_api",
        description="d",
        tenant="acme",
        subject="alice",
    )
    cls = {"grant_required": GrantRequiredError, "client_error": ClientError, "unavailable": UnavailableError}
    assert type(e) is cls[str(r["kind"])]
    assert isinstance(e, MandateError)
    assert (e.kind, e.reason, e.code, e.audience) == (r["kind"], r["reason"], r["error"], "orders_api")
    if isinstance(e, GrantRequiredError):
        assert (e.tenant, e.subject) == ("acme", "alice")


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (429, "", "unavailable"),
        (503, "", "unavailable"),
        (500, "something_new", "unavailable"),
        (0, "", "unavailable"),
        (400, "", "client_error"),
        (400, "something_new", "client_error"),
        (401, "", "client_error"),
    ],
)
def test_fallbacks(status: int, reason: str, kind: str) -> None:
    assert kind_of(status, reason) == kind


def test_grant_required_only_for_refusals_the_user_can_lift() -> None:
    endpoint = "https://mandate.test/oauth2/grant-requests"

    def refusal(reason: str, endpoint: str = endpoint) -> MandateError:
        return error_for(
            status=400,
            code="invalid_request",
            reason=reason,
            audience="docs",
            grant_request_endpoint=endpoint,
        )

    e = refusal("no_active_grant")
    assert isinstance(e, GrantRequiredError) and e.grant_request_endpoint == endpoint
    assert grant_required(e) is e
    widen = refusal("grant_does_not_cover_audience_or_mode")
    assert grant_required(widen) is widen
    assert grant_required(refusal("no_active_grant", "")) is None  # an admin_only audience
    assert grant_required(refusal("scope_not_allowed")) is None
    assert grant_required(refusal("envelope_replayed")) is None
    assert grant_required(RuntimeError("no_active_grant")) is None


def test_messages_name_what_was_refused() -> None:
    e = error_for(
        status=400,
        code="invalid_target",
        reason="audience_requires_admin_consent",
        audience="orders_api",
        description="ask an admin",
        operation="a grant request for orders_api",
    )
    assert str(e) == (
        "Mandate refused a grant request for orders_api: invalid_target"
        " [audience_requires_admin_consent] (ask an admin)"
    )
    # A reason's kind can be overridden where the endpoint gives it another meaning.
    c = error_for(
        status=400, code="invalid_scope", reason="scope_not_allowed", audience="d", kind="client_error"
    )
    assert type(c) is ClientError and c.reason == "scope_not_allowed"
