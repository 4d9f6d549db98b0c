"""Typed server errors. Messages name the client, the round and the field."""

from __future__ import annotations


class NebulaServerError(RuntimeError):
    """Base class of errors raised by the Nebula server."""


class ReplyRejected(NebulaServerError):
    """A client's reply cannot be used; the round goes on without it."""

    def __init__(self, *, client: str, round_index: int, reason: str) -> None:
        super().__init__(f"round {round_index}: reply of {client} rejected: {reason}")
        self.client, self.round_index, self.reason = client, round_index, reason


class NotEnoughReplies(NebulaServerError):
    """Fewer valid replies than federation.min_replies."""


class TeacherUnavailable(NebulaServerError):
    """No teacher node answered, or it answered with an error."""


class LedgerError(NebulaServerError):
    """The contribution ledger is unreadable or inconsistent."""


class DiscoveryError(NebulaServerError):
    """The nodes of the federation do not match what the configuration expects."""
