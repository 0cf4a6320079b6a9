"""The execution identity of one request: what the envelope will say and what tool code
may trust. It never holds the inbound user token.

The identity of the current request travels in a ``contextvars.ContextVar``: the MCP
boundary sets it around each tool call, and the delegator's HTTP transports read it
when a tool calls a downstream API.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from .envelope import MODE_ON_BEHALF_OF, Act, Actor, Agent, Session


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a tool call acts for, and as which agent, in which session and trace."""

    actor: Actor
    agent: Agent
    session: Session
    scopes: tuple[str, ...] = ()
    mode: str = MODE_ON_BEHALF_OF
    issuer: str = ""
    """The identity provider that issued the inbound token."""
    expires_at: float | None = None
    """The inbound token's expiry (Unix seconds): the identity is not used after it."""
    span_id: str = ""
    """The caller's W3C parent id, when a traceparent came in."""
    trace_flags: str = "01"
    act: Act | None = None
    """A prior actor chain, when this MCP server itself acts for another agent."""
    client_id: str = field(default="")
    """The inbound token's client (the MCP client the user authorized), when known."""

    def traceparent(self) -> str | None:
        """The header for a downstream call made for this identity: the same trace id, a
        new span id, the caller's flags. None when the trace id is not a W3C trace id (it
        then travels in the token only)."""
        tid = self.session.trace_id
        if len(tid) != 32 or not _lower_hex(tid) or tid.strip("0") == "":
            return None
        flags = self.trace_flags if len(self.trace_flags) == 2 and _lower_hex(self.trace_flags) else "01"
        return f"00-{tid}-{new_span_id()}-{flags}"


_current: ContextVar[Identity | None] = ContextVar("mandate_identity", default=None)


def current_identity() -> Identity | None:
    """The identity of the request being handled, or None outside the boundary."""
    return _current.get()


@contextmanager
def use_identity(identity: Identity | None) -> Iterator[Identity | None]:
    """Makes identity the current one inside the block (the MCP boundary does this for
    every tool call; tests and non-MCP callers may too)."""
    token = _current.set(identity)
    try:
        yield identity
    finally:
        _current.reset(token)


@dataclass(frozen=True, slots=True)
class Traceparent:
    """A parsed W3C Trace Context ``traceparent`` header."""

    version: str
    trace_id: str
    parent_id: str
    flags: str

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def _lower_hex(s: str) -> bool:
    return s != "" and all(c in "0123456789abcdef" for c in s)


def parse_traceparent(value: str | None) -> Traceparent | None:
    """Parses a traceparent; None when absent or malformed (version ff, all-zero ids,
    upper-case hex, extra fields on version 00)."""
    if not value:
        return None
    s = value.strip()
    if len(s) < 55 or s[2] != "-" or s[35] != "-" or s[52] != "-":
        return None
    tp = Traceparent(s[0:2], s[3:35], s[36:52], s[53:55])
    if (
        not all(_lower_hex(p) for p in (tp.version, tp.trace_id, tp.parent_id, tp.flags))
        or tp.version == "ff"
    ):
        return None
    if tp.version == "00" and len(s) != 55:
        return None
    if len(s) > 55 and s[55] != "-":
        return None
    if tp.trace_id.strip("0") == "" or tp.parent_id.strip("0") == "":
        return None
    return tp


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)
