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
