from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import IdP, Mandate, run_mandate, serve


@pytest.fixture(scope="session")
def mandate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mandate]:
    """A real Mandate binary built from this repository (or MANDATE_BIN), SQLite in a
    temporary directory, loopback ports; stopped after the session."""
    with run_mandate(tmp_path_factory.mktemp("mandate")) as m:
        yield m


@pytest.fixture(scope="session")
def idp() -> Iterator[IdP]:
    p = IdP()
    with serve(p.app()) as url:
        p.issuer = url
        yield p
