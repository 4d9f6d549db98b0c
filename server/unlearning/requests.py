"""The durable store of unlearning requests (SQLite, by default the ledger's own file).

A request goes ``queued -> running -> done | failed``. Rules:

* **Stored before acknowledged.** :meth:`RequestStore.submit` returns only after the request's
  row is committed (WAL, ``synchronous=FULL``): an acknowledged request survives a crash.
* **Idempotent.** An operator's idempotency key names one request. The same key with the same
  content (client id, reason, mode) returns the same request id; with other content it is
  refused (:class:`IdempotencyConflict`), changing nothing.
* **No replay.** A submit's nonce is stored in the same transaction as the request; a nonce
  seen before is refused (:class:`ReplayedRequest`), changing nothing. Nonces older than the
  retention (twice the server's timestamp window) are pruned: the window refuses them anyway.
* **Resumable.** A request left ``running`` by a killed process is handed out again by
  :meth:`pending` (before queued ones); ``attempts`` counts the starts.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nebula.server.exceptions import (
    IdempotencyConflict,
    InvalidUnlearnRequest,
    ReplayedRequest,
    UnknownRequest,
    UnlearningError,
)
from nebula.server.ledger import connect_sqlite, write_transaction
from nebula.server.unlearning.crypto import canonical_json

STATUSES = ("queued", "running", "done", "failed")
MAX_CHARS = {"client_id": 256, "reason": 2000, "mode": 64, "idempotency_key": 200}

SCHEMA = """
CREATE TABLE IF NOT EXISTS unlearn_requests (
    request_id TEXT PRIMARY KEY,
    operator_key TEXT NOT NULL, idempotency_key TEXT NOT NULL, content_sha256 TEXT NOT NULL,
    client_id TEXT NOT NULL, reason TEXT NOT NULL, mode TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', certificate_json TEXT NOT NULL DEFAULT '',
    UNIQUE (operator_key, idempotency_key)
);
CREATE TABLE IF NOT EXISTS unlearn_claims (
    request_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, claimed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS unlearn_nonces (
    operator_key TEXT NOT NULL, nonce TEXT NOT NULL, seen_at REAL NOT NULL,
    PRIMARY KEY (operator_key, nonce)
);
"""
_COLUMNS = (
    "request_id, operator_key, idempotency_key, client_id, reason, mode, status, created_at, started_at, finished_at,"
    " attempts, error, certificate_json"
)


@dataclass(frozen=True)
class UnlearnRequest:
    request_id: str
    operator_key: str  # key id of the operator who submitted it
    idempotency_key: str
    client_id: str
    reason: str
    mode: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str
    certificate_json: str


def iso_time(ts: float | None) -> str:
    """``2026-05-01T12:00:00.000Z`` (UTC), or ``""`` for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


FOREIGN_CLAIM_S = 6 * 3600.0  # a claim of another host counts as abandoned after this long


def _claim_gone(host: str, pid: int, claimed_at: float, *, now: float) -> bool:
    """Whether the process that claimed a request has stopped (see :meth:`RequestStore.claim`)."""
    if host != socket.gethostname():
        return now - claimed_at > FOREIGN_CLAIM_S
    if pid == os.getpid():
        return False  # this process holds it (an executor of this process is carrying it out)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def content_sha256(*, client_id: str, reason: str, mode: str) -> str:
    """What an idempotency key is bound to."""
    return hashlib.sha256(canonical_json({"client_id": client_id, "reason": reason, "mode": mode})).hexdigest()


def check_submission(*, client_id: str, reason: str, mode: str, idempotency_key: str, modes: tuple[str, ...]) -> None:
    """Refuse a malformed submission, naming the field: empty, too long, padded with spaces, or an unknown mode."""
    values = {"client_id": client_id, "reason": reason, "mode": mode, "idempotency_key": idempotency_key}
    for name, value in values.items():
        if not value.strip():
            raise InvalidUnlearnRequest(f"{name} is empty")
        if len(value) > MAX_CHARS[name]:
            raise InvalidUnlearnRequest(f"{name} has {len(value)} characters, at most {MAX_CHARS[name]} are allowed")
    for name in ("client_id", "idempotency_key"):
        if values[name] != values[name].strip():
            raise InvalidUnlearnRequest(f"{name} {values[name]!r} has leading or trailing spaces")
    if mode not in modes:
        raise InvalidUnlearnRequest(f"unknown unlearning mode {mode!r}; available: {', '.join(modes)}")


class RequestStore:
    def __init__(self, path: str | Path, *, nonce_retention_s: float = 600.0) -> None:
        self.path = Path(path)
        self.nonce_retention_s = nonce_retention_s
        self._db = connect_sqlite(self.path, schema=SCHEMA, what="unlearning request store", error=UnlearningError)

    def close(self) -> None:
        self._db.close()

    def submit(
        self,
        *,
        client_id: str,
        reason: str,
        mode: str,
        idempotency_key: str,
        operator_key: str,
        nonce: str | None = None,
    ) -> tuple[UnlearnRequest, bool]:
        """Store a new request, or find the one ``idempotency_key`` already names.

        Returns ``(request, created)``. Raises :class:`ReplayedRequest` (``nonce`` seen before)
        or :class:`IdempotencyConflict`; either way nothing is stored.
        """
        digest = content_sha256(client_id=client_id, reason=reason, mode=mode)
        now = time.time()
        with write_transaction(self._db, what="store the unlearning request", error=UnlearningError) as db:
            if nonce is not None:
                db.execute("DELETE FROM unlearn_nonces WHERE seen_at < ?", (now - self.nonce_retention_s,))
                if db.execute(
                    "SELECT 1 FROM unlearn_nonces WHERE operator_key = ? AND nonce = ?", (operator_key, nonce)
                ).fetchone():
                    raise ReplayedRequest(
                        f"replayed request: nonce {nonce!r} of operator key {operator_key} was already used"
                    )
                db.execute("INSERT INTO unlearn_nonces VALUES (?, ?, ?)", (operator_key, nonce, now))
            row = db.execute(
                f"SELECT content_sha256, {_COLUMNS} FROM unlearn_requests"
                " WHERE operator_key = ? AND idempotency_key = ?",
                (operator_key, idempotency_key),
            ).fetchone()
            if row is not None:
                existing = UnlearnRequest(*row[1:])
                if row[0] != digest:
                    raise IdempotencyConflict(
                        f"idempotency key {idempotency_key!r} already names request {existing.request_id} "
                        f"(client {existing.client_id!r}, mode {existing.mode!r}, reason {existing.reason!r}); "
                        f"this request differs (client {client_id!r}, mode {mode!r}, reason {reason!r}): use a new key"
                    )
                return existing, False
            request_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO unlearn_requests (request_id, operator_key, idempotency_key, content_sha256, client_id,"
                " reason, mode, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (request_id, operator_key, idempotency_key, digest, client_id, reason, mode, now),
            )
        return self.get(request_id), True

    def get(self, request_id: str) -> UnlearnRequest:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM unlearn_requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        if row is None:
            raise UnknownRequest(f"no unlearning request has id {request_id!r}")
        return UnlearnRequest(*row)

    def list(self, *, status: str | None = None, limit: int = 100) -> list[UnlearnRequest]:
        """Requests, newest first, optionally only those with ``status``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM unlearn_requests {where} ORDER BY created_at DESC, request_id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [UnlearnRequest(*row) for row in rows]

    def pending(self) -> list[UnlearnRequest]:
        """Requests to carry out, oldest first: those left running by a stopped process, then the queued."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM unlearn_requests WHERE status IN ('running', 'queued')"
            " ORDER BY status = 'queued', created_at, request_id"
        ).fetchall()
        return [UnlearnRequest(*row) for row in rows]

    def claim(self, request_id: str) -> UnlearnRequest | None:
        """Mark the request running for this process, exactly once across executors; None if it is not free.

        A request is free when it is queued, or running under a claim whose process is gone: on this host a
        process id that no longer exists, on another host a claim older than :data:`FOREIGN_CLAIM_S`. The
        status check and the update are one transaction, so of two executors on one store only one runs it.
        """
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        with write_transaction(self._db, what=f"claim unlearning request {request_id}", error=UnlearningError) as db:
            row = db.execute("SELECT status FROM unlearn_requests WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                raise UnknownRequest(f"no unlearning request has id {request_id!r}")
            holder = db.execute("SELECT host, pid, claimed_at FROM unlearn_claims WHERE request_id = ?", (request_id,))
            claim = holder.fetchone()
            free = row[0] == "queued" or (row[0] == "running" and (claim is None or _claim_gone(*claim, now=now)))
            if not free:
                return None
            db.execute(
                "UPDATE unlearn_requests SET status = 'running', started_at = ?, attempts = attempts + 1"
                " WHERE request_id = ?",
                (now, request_id),
            )
            db.execute("INSERT OR REPLACE INTO unlearn_claims VALUES (?, ?, ?, ?)", (request_id, host, pid, now))
        return self.get(request_id)

    def mark_running(self, request_id: str) -> UnlearnRequest:
        """:meth:`claim`, raising UnlearningError when another live process holds the request."""
        claimed = self.claim(request_id)
        if claimed is None:
            raise UnlearningError(f"unlearning request {request_id} is held by another running executor")
        return claimed

    def mark_done(self, request_id: str, certificate_json: str) -> UnlearnRequest:
        self._update(
            request_id,
            "status = 'done', finished_at = ?, error = '', certificate_json = ?",
            (time.time(), certificate_json),
        )
        return self.get(request_id)

    def mark_failed(self, request_id: str, error: str) -> UnlearnRequest:
        self._update(request_id, "status = 'failed', finished_at = ?, error = ?", (time.time(), error))
        return self.get(request_id)

    def _update(self, request_id: str, assignments: str, args: tuple) -> None:
        with write_transaction(self._db, what=f"update unlearning request {request_id}", error=UnlearningError) as db:
            if (
                db.execute(
                    f"UPDATE unlearn_requests SET {assignments} WHERE request_id = ?", (*args, request_id)
                ).rowcount
                != 1
            ):
                raise UnknownRequest(f"no unlearning request has id {request_id!r}")
