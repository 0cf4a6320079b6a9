"""Runs the demo end to end (a real Mandate, IdP, MCP server and APIs on loopback ports)
and checks the story it tells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_tells_the_story() -> None:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("demo.py"))],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    lines = out.splitlines()

    def line(prefix: str) -> str:
        return next(x for x in lines if x.startswith(prefix))

    assert " ok " in line("alice  get_order_status(A-1001)") and '"status": "shipped"' in line(
        "alice  get_order_status(A-1001)"
    )
    assert "1250.00 EUR" in line("alice  get_balance")
    assert " ok " in line("bob    get_order_status(B-2001)")
    assert "order not found" in line("bob    get_order_status(A-1001)")  # another user's order
    assert "ERROR" in line("bob    get_balance") and "grant_does_not_cover_audience_or_mode" in line(
        "bob    get_balance"
    )
    assert "ERROR" in line("carol  get_order_status") and "no_active_grant" in line("carol  get_order_status")
    after = lines[lines.index("-- admin revokes alice's grant --") + 1]
    assert after.startswith("alice  get_order_status(A-1002)") and "ERROR" in after

    seen = lines[lines.index("What the downstream APIs saw (from their verified tokens):") + 1 :]
    apis = [x.split() for x in seen[1:] if x.startswith(("orders_api", "billing_api"))]
    assert {(a[0], a[1]) for a in apis} == {
        ("orders_api", "alice"),
        ("orders_api", "bob"),
        ("billing_api", "alice"),
    }
    for a in apis:
        assert a[2] == "support-agent" and a[3] == "on_behalf_of"
        assert a[5].split("-")[1] == a[4] or a[1] == "bob"  # traceparent carries the token's trace
    audit = [x.split() for x in lines if x.startswith(("granted", "denied"))]
    assert audit[3][:3] == ["denied", "grant_does_not_cover_audience_or_mode", "acme/bob"]
    assert [a[1] for a in audit if a[0] == "denied"] == [
        "grant_does_not_cover_audience_or_mode",
        "no_active_grant",
        "no_active_grant",
    ]
