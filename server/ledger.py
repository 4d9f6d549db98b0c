"""The contribution ledger: which client sent what, in which round, with which weight.

SQLite (embedded, durable, one file). Every accepted contribution is stored with its raw
wire payload, so any round's consensus can be recomputed later without the clients
(the unlearning module relies on this). Rejected replies are recorded with their reason.
A round's rows are written in one transaction: a crash leaves a round fully in or out.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.exceptions import LedgerError

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
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, node_id TEXT NOT NULL,
    reason TEXT NOT NULL, created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Contribution:
    client_id: str
    node_id: int
    public_ids: np.ndarray  # int64 (N,)
    payload: bytes  # wire-format logits, exactly as received
    weight: float


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} is not a usable SQLite database: {exc}") from exc

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
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO contributions (run_id, round, client_id, node_id, public_ids, payload, weight, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, round_index, c.client_id, str(c.node_id), c.public_ids.astype("<i8").tobytes(), c.payload, c.weight, now)
                    for c in accepted
                ],
            )
            db.executemany(
                "INSERT INTO rejections (run_id, round, client_id, node_id, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, round_index, cid, str(nid), reason, now) for cid, nid, reason in rejected],
            )
            if consensus is not None and consensus_ids is not None:
                db.execute(
                    "INSERT OR REPLACE INTO consensus VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id, round_index, rule, consensus_ids.astype("<i8").tobytes(),
                        consensus.astype("<f4").tobytes(), consensus.shape[1],
                        json.dumps(sorted(c.client_id for c in accepted)), now,
                    ),
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise LedgerError(f"could not record round {round_index} of run {run_id}: {exc}") from exc

    def contributions(self, run_id: str, round_index: int | None = None) -> list[tuple[int, Contribution]]:
        sql = "SELECT round, client_id, node_id, public_ids, payload, weight FROM contributions WHERE run_id = ?"
        args: tuple = (run_id,)
        if round_index is not None:
            sql, args = sql + " AND round = ?", (run_id, round_index)
        rows = self._db.execute(sql + " ORDER BY round, client_id", args).fetchall()
        return [(r, Contribution(cid, int(nid), np.frombuffer(ids, "<i8"), bytes(p), w)) for r, cid, nid, ids, p, w in rows]

    def consensus(self, run_id: str, round_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        row = self._db.execute(
            "SELECT public_ids, probs, num_classes FROM consensus WHERE run_id = ? AND round = ?", (run_id, round_index)
        ).fetchone()
        if row is None:
            return None
        ids = np.frombuffer(row[0], "<i8")
        return ids, np.frombuffer(row[1], "<f4").reshape(len(ids), row[2])

    def rejections(self, run_id: str) -> list[tuple[int, str, str]]:
        return self._db.execute(
            "SELECT round, client_id, reason FROM rejections WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
