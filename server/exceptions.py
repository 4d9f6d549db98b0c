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


class UnlearningError(NebulaServerError):
    """An unlearning request or certificate cannot be accepted or carried out (server/unlearning/)."""


class InvalidUnlearnRequest(UnlearningError):
    """A request is malformed: empty client id, unknown mode, missing reason, a field too long."""


class UnknownClient(UnlearningError):
    """The client to forget never took part in any run of this ledger."""


class UnknownRequest(UnlearningError):
    """No unlearning request has this id."""


class IdempotencyConflict(UnlearningError):
    """An idempotency key already names a request with different content."""


class OperatorAuthError(UnlearningError):
    """A call is not signed by a trusted operator: bad signature, untrusted key, stale timestamp."""


class MissingSignature(OperatorAuthError):
    """A call carries no operator signature at all."""


class ReplayedRequest(OperatorAuthError):
    """A call reuses a nonce the server has already accepted."""


class CertificateError(UnlearningError):
    """An unlearning certificate is malformed, tampered with, or not signed by the given key."""


class MalformedCertificate(CertificateError):
    """A certificate file or key cannot be read or parsed: not JSON, missing fields, a malformed signature."""


class ResumeError(NebulaServerError):
    """A run cannot be resumed from the ledger: none to resume, another configuration, or gaps."""
