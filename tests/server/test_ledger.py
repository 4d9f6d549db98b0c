"""Ledger.record_round writes a round in one transaction: a failure leaves nothing half-written."""

import sqlite3

import numpy as np
import pytest

from nebula.server.exceptions import LedgerError
from nebula.server.ledger import Contribution, Ledger


def _round(ledger: Ledger, round_index: int, consensus: np.ndarray) -> None:
    ids = np.arange(3, dtype=np.int64)
    ledger.record_round(
        run_id="run-a",
        round_index=round_index,
        accepted=[Contribution("client-0", 1, ids, b"p", 1.0)],
        rejected=[("client-1", 2, "late")],
        rule="mean",
        consensus_ids=ids,
        consensus=consensus,
    )


def _rows(ledger: Ledger) -> dict[str, int]:
    db = sqlite3.connect(ledger.path)
    try:
        return {
            t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("contributions", "rejections", "consensus")
        }
    finally:
        db.close()


def test_a_failing_write_inside_record_round_leaves_the_ledger_usable(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.start_run("run-a", {})
        with pytest.raises(IndexError):  # a 1-D consensus fails after the contributions and rejections are written
            _round(ledger, 1, np.zeros(3, dtype=np.float32))
        assert not ledger._db.in_transaction
        assert _rows(ledger) == {"contributions": 0, "rejections": 0, "consensus": 0}
        _round(ledger, 1, np.full((3, 2), 0.5, dtype=np.float32))
        assert _rows(ledger) == {"contributions": 1, "rejections": 1, "consensus": 1}
        assert ledger.consensus_round_indices("run-a") == [1]
    finally:
        ledger.close()


def test_a_locked_ledger_raises_a_ledger_error_and_stays_usable(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    other = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        ledger._db.execute("PRAGMA busy_timeout = 0")  # fail at once instead of waiting for the lock
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerError, match="could not record round 1 of run run-a"):
            _round(ledger, 1, np.full((3, 2), 0.5, dtype=np.float32))
        assert not ledger._db.in_transaction
        other.execute("ROLLBACK")
        _round(ledger, 1, np.full((3, 2), 0.5, dtype=np.float32))
        assert _rows(ledger) == {"contributions": 1, "rejections": 1, "consensus": 1}
    finally:
        other.close()
        ledger.close()
