"""A ledger built the way the federation writes one (real wire payloads), and TLS and key material.

Two runs: run A (4 clients, 3 rounds; client-2's round-3 reply was rejected) and run B
(3 clients, 2 rounds; client-1 took part in round 1 only). Each round's consensus is the
federation's arithmetic: ``softmax(decode(payload) / T)`` of the accepted replies, the run's rule.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from common.config import NebulaConfig
from common.training import softmax_np
from common.wire import decode_logits, encode_logits
from deploy.certs import write_unlearning_material
from server.aggregation import get_rule
from server.ledger import Contribution, Ledger

C, N = 3, 6
TEMPERATURE = 2.0
RUN_A, RUN_B = "run-a", "run-b"
TARGET = "client-1"
LABEL_COUNTS = {"client-0": [10, 0, 2], "client-1": [0, 8, 8], "client-2": [5, 5, 0], "client-3": [1, 1, 30]}
PLAN = {  # run -> round -> clients whose reply was accepted
    RUN_A: {1: ["client-0", "client-1", "client-2", "client-3"], 2: ["client-0", "client-1", "client-2", "client-3"],
            3: ["client-0", "client-1", "client-3"]},
    RUN_B: {1: ["client-0", "client-1", "client-3"], 2: ["client-0", "client-3"]},
}


def reference_consensus(payloads: list[bytes], weights: list[float], ids: np.ndarray, rule: str, support=None) -> np.ndarray:
    """What server/federation.py computes for a round (the test's own copy of its three lines)."""
    probs = np.stack([softmax_np(decode_logits(p, expected_ids=ids, num_classes=C).logits, temperature=TEMPERATURE) for p in payloads])
    return get_rule(rule).aggregate(probs, weights=np.array(weights), support=support).astype(np.float32)


def build_ledger(path: Path, *, rule: str = "mean", min_replies: int = 2, label_counts: bool = True) -> Path:
    ledger = Ledger(path)
    rng = np.random.default_rng(0)
    for run, rounds in PLAN.items():
        config = NebulaConfig()
        config.federation.aggregation, config.federation.min_replies, config.train.temperature = rule, min_replies, TEMPERATURE
        ledger.start_run(run, config.to_flat())
        if label_counts:
            ledger.record_clients(run, {cid: LABEL_COUNTS[cid] for cid in sorted({c for cs in rounds.values() for c in cs})})
        for r, clients in rounds.items():
            ids = np.arange((r - 1) * N, r * N, dtype=np.int64)
            accepted = [
                Contribution(cid, 100 + int(cid[-1]), ids, encode_logits(ids, rng.normal(size=(N, C)) * 3, dtype="float16"), 10.0 + int(cid[-1]))
                for cid in clients
            ]
            support = np.array([LABEL_COUNTS[c.client_id] for c in accepted], dtype=float) if label_counts else None
            consensus = reference_consensus([c.payload for c in accepted], [c.weight for c in accepted], ids, rule, support)
            rejected = [("client-2", 102, "payload truncated")] if (run, r) == (RUN_A, 3) else []
            ledger.record_round(run_id=run, round_index=r, accepted=accepted, rejected=rejected, rule=rule,
                                consensus_ids=ids, consensus=consensus)
    ledger.close()
    return path


def snapshot(path: Path, *, tables: tuple[str, ...] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table (or of ``tables``), for 'nothing changed' checks."""
    db = sqlite3.connect(path)
    try:
        names = tables or tuple(n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"))
        return {n: db.execute(f"SELECT * FROM {n} ORDER BY rowid").fetchall() for n in names}
    finally:
        db.close()


def other_rows(path: Path, client_id: str = TARGET) -> list[tuple]:
    """Every contribution row of the other clients, all columns (payload bytes included)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM contributions WHERE client_id != ? ORDER BY id", (client_id,)).fetchall()
    finally:
        db.close()


@dataclass(frozen=True)
class Material:
    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    signing_key: Path
    signing_pub: Path
    operators: Path
    operator_key: Path
    stranger_key: Path  # an operator key the server does not trust


@pytest.fixture(scope="session")
def material(tmp_path_factory) -> Material:
    folder = tmp_path_factory.mktemp("pki")
    m = write_unlearning_material(folder)
    stranger = write_unlearning_material(folder / "elsewhere", operator="stranger")
    return Material(m.ca_cert, m.tls_cert, m.tls_key, m.signing_key, m.signing_pub, m.operators, m.operator_key, stranger.operator_key)


@pytest.fixture
def ledger_path(tmp_path) -> Path:
    return build_ledger(tmp_path / "run" / "ledger.sqlite")
