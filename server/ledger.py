"""The contribution ledger: which client sent what, in which round, with which weight.

SQLite (embedded, durable, one file). Every accepted contribution is stored with its raw
wire payload, so any round's consensus can be recomputed later without the clients
(the unlearning module relies on this). Rejected replies are recorded with their reason.
A round's rows are written in one transaction: a crash leaves a round fully in or out.
When the round's teaching is over, ``round_targets`` records the targets it produced for the
next round (none when it was not aggregated): a round with that row is finished, which is what
a restarted server resumes from (server/resume.py).

Tables the unlearning module adds (server/unlearning/README.md), each written in one
transaction with the change it records: ``clients`` (each run's per-client label counts,
for re-aggregating with rules that use them), ``tombstones`` (one per removed contribution:
request id, run, round, client, sha256 of the removed payload), ``consensus_revisions``
(a round's consensus hash before and after a re-aggregation) and ``forgotten_clients``
(clients the federation must no longer select).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.server.exceptions import LedgerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started_at REAL NOT NULL, config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contributions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, node_id TEXT NOT NULL,
    public_ids BLOB NOT NULL, payload BLOB NOT NULL, weight REAL NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (run_id, round, client_id)
);
CREATE TABLE IF NOT EXISTS consensus (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, rule TEXT NOT NULL,
    public_ids BLOB NOT NULL, probs BLOB NOT NULL, num_classes INTEGER NOT NULL,
    contributors TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS round_targets (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, targets BLOB, teacher_ok INTEGER NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS live_runs (
    run_id TEXT PRIMARY KEY, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, node_id TEXT NOT NULL,
    reason TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    run_id TEXT NOT NULL, client_id TEXT NOT NULL, label_counts TEXT NOT NULL, recorded_at REAL NOT NULL,
    PRIMARY KEY (run_id, client_id)
);
CREATE TABLE IF NOT EXISTS tombstones (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL,
    node_id TEXT NOT NULL, payload_sha256 TEXT NOT NULL, payload_bytes INTEGER NOT NULL, weight REAL NOT NULL,
    contributed_at REAL NOT NULL, removed_at REAL NOT NULL,
    UNIQUE (run_id, round, client_id)
);
CREATE TABLE IF NOT EXISTS consensus_revisions (
    request_id TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL,
    before_sha256 TEXT NOT NULL, after_sha256 TEXT,
    contributors_before TEXT NOT NULL, contributors_after TEXT NOT NULL, support TEXT NOT NULL,
    revised_at REAL NOT NULL,
    PRIMARY KEY (request_id, run_id, round)
);
CREATE TABLE IF NOT EXISTS forgotten_clients (
    client_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, forgotten_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Contribution:
    client_id: str
    node_id: int
    public_ids: np.ndarray  # int64 (N,)
    payload: bytes  # wire-format logits, exactly as received
    weight: float


@dataclass(frozen=True)
class Tombstone:
    """What remains of a contribution removed by an unlearning request."""

    request_id: str
    run_id: str
    round: int
    client_id: str
    payload_sha256: str  # of the removed wire payload, exactly as it was stored
    payload_bytes: int
    weight: float


@dataclass(frozen=True)
class ConsensusRevision:
    """A round's consensus re-aggregated by an unlearning request."""

    request_id: str
    run_id: str
    round: int
    before_sha256: str
    after_sha256: str | None  # None: too few contributions remain, the round has no consensus any more
    contributors_before: list[str]
    contributors_after: list[str]
    support: str  # what the rule got as label counts: "label-counts" or "none"


def connect_sqlite(path: Path, *, schema: str, what: str, error: type[Exception]) -> sqlite3.Connection:
    """Open (or create) a durable SQLite database: autocommit, WAL, fsync on commit, ``schema`` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        raise error(f"{what} {path} is not a usable SQLite database: {exc}") from exc
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection, *, what: str, error: type[Exception]) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception, SQLite errors re-raised as ``error``."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise error(f"could not {what}: {exc}") from exc
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:  # SQLite may have rolled back already (e.g. a full disk); ROLLBACK would fail then
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise error(f"could not {what}: {exc}") from exc
        raise


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = connect_sqlite(self.path, schema=SCHEMA, what="ledger", error=LedgerError)

    def close(self) -> None:
        self._db.close()

    def start_run(self, run_id: str, config: dict) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (run_id, time.time(), json.dumps(config, sort_keys=True))
        )

    def record_round(
        self,
        *,
        run_id: str,
        round_index: int,
        accepted: list[Contribution],
        rejected: list[tuple[str, int, str]],
        rule: str,
        consensus_ids: np.ndarray | None,
        consensus: np.ndarray | None,
    ) -> None:
        """Store a round's contributions, rejections and consensus atomically."""
        now = time.time()
        with write_transaction(self._db, what=f"record round {round_index} of run {run_id}", error=LedgerError) as db:
            db.executemany(
                "INSERT INTO contributions (run_id, round, client_id, node_id, public_ids, payload, weight, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        round_index,
                        c.client_id,
                        str(c.node_id),
                        c.public_ids.astype("<i8").tobytes(),
                        c.payload,
                        c.weight,
                        now,
                    )
                    for c in accepted
                ],
            )
            db.executemany(
                "INSERT INTO rejections (run_id, round, client_id, node_id, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, round_index, cid, str(nid), reason, now) for cid, nid, reason in rejected],
            )
            if consensus is not None and consensus_ids is not None:
                db.execute(
                    "INSERT OR REPLACE INTO consensus VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        round_index,
                        rule,
                        consensus_ids.astype("<i8").tobytes(),
                        consensus.astype("<f4").tobytes(),
                        consensus.shape[1],
                        json.dumps(sorted(c.client_id for c in accepted)),
                        now,
                    ),
                )

    def contributions(self, run_id: str, round_index: int | None = None) -> list[tuple[int, Contribution]]:
        sql = "SELECT round, client_id, node_id, public_ids, payload, weight FROM contributions WHERE run_id = ?"
        args: tuple = (run_id,)
        if round_index is not None:
            sql, args = sql + " AND round = ?", (run_id, round_index)
        rows = self._db.execute(sql + " ORDER BY round, client_id", args).fetchall()
        return [
            (r, Contribution(cid, int(nid), np.frombuffer(ids, "<i8"), bytes(p), w)) for r, cid, nid, ids, p, w in rows
        ]

    def consensus(self, run_id: str, round_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        row = self._db.execute(
            "SELECT public_ids, probs, num_classes FROM consensus WHERE run_id = ? AND round = ?", (run_id, round_index)
        ).fetchone()
        if row is None:
            return None
        ids = np.frombuffer(row[0], "<i8")
        return ids, np.frombuffer(row[1], "<f4").reshape(len(ids), row[2])

    def record_targets(self, run_id: str, round_index: int, targets: bytes | None, *, teacher_ok: bool) -> None:
        """Mark round ``round_index`` finished: ``targets`` (wire format) go to the clients next round."""
        with write_transaction(
            self._db, what=f"record the targets of round {round_index} of run {run_id}", error=LedgerError
        ) as db:
            db.execute(
                "INSERT OR REPLACE INTO round_targets VALUES (?, ?, ?, ?, ?)",
                (run_id, round_index, targets, int(teacher_ok), time.time()),
            )

    def mark_live(self, run_id: str, *, for_seconds: float) -> None:
        """``run_id`` is live and carries out unlearning requests itself, for the next ``for_seconds`` (a lease:
        a server that dies stops renewing it, and ``nebula unlearn serve`` takes the requests over when it expires)."""
        with write_transaction(self._db, what=f"mark run {run_id} live", error=LedgerError) as db:
            db.execute("INSERT OR REPLACE INTO live_runs VALUES (?, ?)", (run_id, time.time() + for_seconds))

    def clear_live(self, run_id: str) -> None:
        with write_transaction(self._db, what=f"mark run {run_id} ended", error=LedgerError) as db:
            db.execute("DELETE FROM live_runs WHERE run_id = ?", (run_id,))

    def live_run(self) -> str | None:
        """The run whose lease has not expired, if any."""
        row = self._db.execute(
            "SELECT run_id FROM live_runs WHERE expires_at > ? ORDER BY expires_at DESC", (time.time(),)
        ).fetchone()
        return row[0] if row else None

    def finished_rounds(self, run_id: str) -> dict[int, tuple[bytes | None, bool]]:
        """``{round: (targets or None, teacher_ok)}`` of every finished round of ``run_id``."""
        rows = self._db.execute(
            "SELECT round, targets, teacher_ok FROM round_targets WHERE run_id = ? ORDER BY round", (run_id,)
        )
        return {r: (None if t is None else bytes(t), bool(ok)) for r, t, ok in rows}

    def recorded_rounds(self, run_id: str) -> list[int]:
        """Rounds of ``run_id`` with any stored row: a contribution, a rejection or a consensus."""
        rows = self._db.execute(
            "SELECT round FROM contributions WHERE run_id = ?1 UNION SELECT round FROM rejections WHERE run_id = ?1"
            " UNION SELECT round FROM consensus WHERE run_id = ?1 UNION SELECT round FROM tombstones WHERE run_id = ?1"
            " ORDER BY round",
            (run_id,),
        )
        return [r for (r,) in rows]

    def rejections(self, run_id: str) -> list[tuple[int, str, str]]:
        return self._db.execute(
            "SELECT round, client_id, reason FROM rejections WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()

    # -- unlearning (server/unlearning/) ---------------------------------------------------
    def record_clients(self, run_id: str, label_counts: Mapping[str, Sequence[int]]) -> None:
        """Store each client's per-class label counts for ``run_id`` (used to re-aggregate)."""
        now = time.time()
        with write_transaction(self._db, what=f"record the clients of run {run_id}", error=LedgerError) as db:
            db.executemany(
                "INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?)",
                [(run_id, cid, json.dumps([int(x) for x in counts]), now) for cid, counts in label_counts.items()],
            )

    def label_counts(self, run_id: str) -> dict[str, list[int]]:
        rows = self._db.execute("SELECT client_id, label_counts FROM clients WHERE run_id = ?", (run_id,)).fetchall()
        return {cid: json.loads(counts) for cid, counts in rows}

    def run_config(self, run_id: str) -> dict:
        """The flat configuration ``run_id`` was started with."""
        row = self._db.execute("SELECT config_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise LedgerError(f"run {run_id} is not in the ledger {self.path}")
        return json.loads(row[0])

    def content_digest(self, run_id: str) -> str:
        """SHA-256 over what ``run_id`` learned, in a canonical order: contributions, rejections,
        consensus, targets and label counts, without wall-clock times, node ids (Flower draws them at random
        in simulation) or the run id. Two runs of the same seed and configuration must give the same digest
        (deterministic rounds, simulation/fingerprint.py)."""
        queries = (
            "SELECT round, client_id, public_ids, payload, weight FROM contributions WHERE run_id = ?"
            " ORDER BY round, client_id",
            "SELECT round, client_id, reason FROM rejections WHERE run_id = ? ORDER BY round, client_id, reason",
            "SELECT round, rule, public_ids, probs, num_classes, contributors FROM consensus WHERE run_id = ?"
            " ORDER BY round",
            "SELECT round, targets, teacher_ok FROM round_targets WHERE run_id = ? ORDER BY round",
            "SELECT client_id, label_counts FROM clients WHERE run_id = ? ORDER BY client_id",
        )
        digest = hashlib.sha256()
        for sql in queries:
            for row in self._db.execute(sql, (run_id,)):
                for value in row:
                    raw = bytes(value) if isinstance(value, bytes | memoryview) else repr(value).encode()
                    digest.update(len(raw).to_bytes(8, "little") + raw)
            digest.update(b"|")
        return digest.hexdigest()

    def runs(self) -> list[str]:
        """Run ids, oldest first (the last one is the run whose checkpoints a run folder holds)."""
        return [run for (run,) in self._db.execute("SELECT run_id FROM runs ORDER BY started_at, run_id")]

    def consensus_round_indices(self, run_id: str) -> list[int]:
        """Rounds of ``run_id`` that have a stored consensus (the rounds the teacher was taught)."""
        rows = self._db.execute("SELECT round FROM consensus WHERE run_id = ? ORDER BY round", (run_id,))
        return [r for (r,) in rows]

    def revised_rounds(self, run_id: str) -> list[int]:
        """Rounds of ``run_id`` whose consensus any unlearning request revised (or removed)."""
        rows = self._db.execute(
            "SELECT DISTINCT round FROM consensus_revisions WHERE run_id = ? ORDER BY round", (run_id,)
        )
        return [r for (r,) in rows]

    def tombstoned_rounds(self, run_id: str, client_id: str) -> list[int]:
        """Rounds of ``run_id`` in which a contribution of ``client_id`` was removed (by any request)."""
        rows = self._db.execute(
            "SELECT DISTINCT round FROM tombstones WHERE run_id = ? AND client_id = ? ORDER BY round",
            (run_id, client_id),
        )
        return [r for (r,) in rows]

    def knows_client(self, client_id: str) -> bool:
        """Whether ``client_id`` ever took part: contributed, was rejected, registered or was forgotten."""
        row = self._db.execute(
            "SELECT 1 FROM contributions WHERE client_id = ?1 UNION ALL SELECT 1 FROM rejections WHERE client_id = ?1"
            " UNION ALL SELECT 1 FROM clients WHERE client_id = ?1"
            " UNION ALL SELECT 1 FROM tombstones WHERE client_id = ?1"
            " LIMIT 1",
            (client_id,),
        ).fetchone()
        return row is not None

    def consensus_rounds(self, *, contributor: str) -> list[tuple[str, int, str, list[str]]]:
        """``(run_id, round, rule, contributors)`` of every stored consensus ``contributor`` took part in."""
        rows = self._db.execute(
            "SELECT run_id, round, rule, contributors FROM consensus ORDER BY run_id, round"
        ).fetchall()
        parsed = [(run, rnd, rule, json.loads(who)) for run, rnd, rule, who in rows]
        return [row for row in parsed if contributor in row[3]]

    def purge_client(self, client_id: str, *, request_id: str) -> int:
        """Delete every contribution and the label counts of ``client_id`` and mark it forgotten, in one
        transaction; each removed contribution leaves a tombstone with ``request_id``. Returns the number
        removed now (0 when nothing was left, e.g. on a resumed request)."""
        now = time.time()
        with write_transaction(
            self._db, what=f"purge client {client_id} (request {request_id})", error=LedgerError
        ) as db:
            rows = db.execute(
                "SELECT run_id, round, node_id, payload, weight, created_at FROM contributions WHERE client_id = ?",
                (client_id,),
            ).fetchall()
            db.executemany(
                "INSERT INTO tombstones (request_id, run_id, round, client_id, node_id, payload_sha256, payload_bytes,"
                " weight, contributed_at, removed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (request_id, run, rnd, client_id, nid, hashlib.sha256(p).hexdigest(), len(p), w, at, now)
                    for run, rnd, nid, p, w, at in rows
                ],
            )
            db.execute("DELETE FROM contributions WHERE client_id = ?", (client_id,))
            db.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))
            db.execute("INSERT OR IGNORE INTO forgotten_clients VALUES (?, ?, ?)", (client_id, request_id, now))
        return len(rows)

    def _request_rows(self, table: str, columns: str, request_id: str) -> list[tuple]:
        """``columns`` of the rows of ``table`` that request ``request_id`` wrote, by run and round."""
        return self._db.execute(
            f"SELECT {columns} FROM {table} WHERE request_id = ? ORDER BY run_id, round", (request_id,)
        ).fetchall()

    def tombstones(self, request_id: str) -> list[Tombstone]:
        columns = "request_id, run_id, round, client_id, payload_sha256, payload_bytes, weight"
        return [Tombstone(*row) for row in self._request_rows("tombstones", columns, request_id)]

    def revise_consensus(
        self, revision: ConsensusRevision, *, consensus_ids: np.ndarray | None, consensus: np.ndarray | None
    ) -> bool:
        """Replace (or, when ``consensus`` is None, delete) a round's consensus and record ``revision``, in one
        transaction. Returns False, changing nothing, when ``revision.request_id`` already revised that round."""
        r = revision
        where = (r.run_id, r.round)
        with write_transaction(
            self._db, what=f"revise the consensus of run {r.run_id} round {r.round}", error=LedgerError
        ) as db:
            done = db.execute(
                "SELECT 1 FROM consensus_revisions WHERE request_id = ? AND run_id = ? AND round = ?",
                (r.request_id, *where),
            ).fetchone()
            if done:
                return False
            db.execute(
                "INSERT INTO consensus_revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.request_id,
                    *where,
                    r.before_sha256,
                    r.after_sha256,
                    json.dumps(r.contributors_before),
                    json.dumps(r.contributors_after),
                    r.support,
                    time.time(),
                ),
            )
            if consensus is None or consensus_ids is None:
                db.execute("DELETE FROM consensus WHERE run_id = ? AND round = ?", where)
            else:
                db.execute(
                    "UPDATE consensus SET public_ids = ?, probs = ?, num_classes = ?, contributors = ?"
                    " WHERE run_id = ? AND round = ?",
                    (
                        consensus_ids.astype("<i8").tobytes(),
                        consensus.astype("<f4").tobytes(),
                        consensus.shape[1],
                        json.dumps(sorted(r.contributors_after)),
                        *where,
                    ),
                )
        return True

    def consensus_revisions(self, request_id: str) -> list[ConsensusRevision]:
        columns = (
            "request_id, run_id, round, before_sha256, after_sha256, contributors_before, contributors_after, support"
        )
        rows = self._request_rows("consensus_revisions", columns, request_id)
        return [ConsensusRevision(*row[:5], json.loads(row[5]), json.loads(row[6]), row[7]) for row in rows]

    def is_forgotten(self, client_id: str) -> bool:
        """Whether an unlearning request removed ``client_id``: the federation must not select it again."""
        return (
            self._db.execute("SELECT 1 FROM forgotten_clients WHERE client_id = ?", (client_id,)).fetchone() is not None
        )

    def forgotten_clients(self) -> set[str]:
        return {cid for (cid,) in self._db.execute("SELECT client_id FROM forgotten_clients")}
