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

from nebula.common.config import NebulaConfig
from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits, encode_logits
from nebula.deploy.certs import write_unlearning_material
from nebula.server.aggregation import get_rule
from nebula.server.ledger import Contribution, Ledger

C, N = 3, 6
TEMPERATURE = 2.0
RUN_A, RUN_B = "run-a", "run-b"
TARGET = "client-1"
LABEL_COUNTS = {"client-0": [10, 0, 2], "client-1": [0, 8, 8], "client-2": [5, 5, 0], "client-3": [1, 1, 30]}
PLAN = {  # run -> round -> clients whose reply was accepted
    RUN_A: {
        1: ["client-0", "client-1", "client-2", "client-3"],
        2: ["client-0", "client-1", "client-2", "client-3"],
        3: ["client-0", "client-1", "client-3"],
    },
    RUN_B: {1: ["client-0", "client-1", "client-3"], 2: ["client-0", "client-3"]},
}


def reference_consensus(
    payloads: list[bytes], weights: list[float], ids: np.ndarray, rule: str, support=None
) -> np.ndarray:
    """What server/federation.py computes for a round (the test's own copy of its three lines)."""
    probs = np.stack(
        [softmax(decode_logits(p, expected_ids=ids, num_classes=C).logits, temperature=TEMPERATURE) for p in payloads]
    )
    return get_rule(rule).aggregate(probs, weights=np.array(weights), support=support).astype(np.float32)


def build_ledger(path: Path, *, rule: str = "mean", min_replies: int = 2, label_counts: bool = True) -> Path:
    ledger = Ledger(path)
    rng = np.random.default_rng(0)
    for run, rounds in PLAN.items():
        config = NebulaConfig()
        config.federation.aggregation, config.federation.min_replies, config.train.temperature = (
            rule,
            min_replies,
            TEMPERATURE,
        )
        ledger.start_run(run, config.to_flat())
        if label_counts:
            ledger.record_clients(
                run, {cid: LABEL_COUNTS[cid] for cid in sorted({c for cs in rounds.values() for c in cs})}
            )
        for r, clients in rounds.items():
            ids = np.arange((r - 1) * N, r * N, dtype=np.int64)
            accepted = [
                Contribution(
                    cid,
                    100 + int(cid[-1]),
                    ids,
                    encode_logits(ids, rng.normal(size=(N, C)) * 3, dtype="float16"),
                    10.0 + int(cid[-1]),
                )
                for cid in clients
            ]
            support = np.array([LABEL_COUNTS[c.client_id] for c in accepted], dtype=float) if label_counts else None
            consensus = reference_consensus(
                [c.payload for c in accepted], [c.weight for c in accepted], ids, rule, support
            )
            ledger.record_round(
                run_id=run,
                round_index=r,
                accepted=accepted,
                rejected=[("client-2", 102, "payload truncated")] if (run, r) == (RUN_A, 3) else [],
                rule=rule,
                consensus_ids=ids,
                consensus=consensus,
            )
    ledger.close()
    return path


def snapshot(path: Path, *, tables: tuple[str, ...] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table (or of ``tables``), for 'nothing changed' checks."""
    db = sqlite3.connect(path)
    try:
        names = tables or tuple(
            n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        )
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

    def serve_args(self) -> list[str]:
        """The key-material options of ``nebula unlearn serve``."""
        return [
            "--operators",
            str(self.operators),
            "--signing-key",
            str(self.signing_key),
            "--tls-cert",
            str(self.tls_cert),
            "--tls-key",
            str(self.tls_key),
        ]


@pytest.fixture(scope="session")
def material(tmp_path_factory) -> Material:
    folder = tmp_path_factory.mktemp("pki")
    m = write_unlearning_material(folder)
    stranger = write_unlearning_material(folder / "elsewhere", operator="stranger")
    return Material(
        m.ca_cert,
        m.tls_cert,
        m.tls_key,
        m.signing_key,
        m.signing_pub,
        m.operators,
        m.operator_key,
        stranger.operator_key,
    )


@pytest.fixture
def ledger_path(tmp_path) -> Path:
    return build_ledger(tmp_path / "run" / "ledger.sqlite")


# -- a tiny real run for the model modes: real MiniLM teacher and student, checkpoints by TeacherNode ------
TINY_RUN = "tiny-run"
TINY = {  # the smoke preset, smaller: 3 clients, 3 rounds of 8 public inputs from a pool of 16 (round 3 re-sends 0-7)
    "data.test_size": 8,
    "data.public_size": 16,
    "data.private_size": 30,
    "federation.rounds": 3,
    "federation.public_per_round": 8,
    "train.batch_size": 8,
    "train.micro_batch_size": 8,
}
TINY_PLAN = {
    1: ["client-0", "client-2"],
    2: ["client-0", "client-1", "client-2"],
    3: ["client-0", "client-1", "client-2"],
}
TINY_TARGET = "client-1"  # first contributes in round 2: exact replay restores round 1's checkpoint


def tiny_config():
    from nebula.common.presets import preset_config

    return preset_config("smoke", TINY)


def build_tiny_run(folder: Path) -> Path:
    """A run folder as the federation leaves one: ledger (contributions, consensus by the run's rule) and
    ``checkpoints/round-NNN`` written by the real TeacherNode, fed each round's consensus as the server
    sends it (log-probabilities, float32) from the ledger's float32 copy."""
    from flwr.app import Context, RecordDict

    from nebula.client.teacher import TeacherNode
    from nebula.common.federation_data import build_federation_data
    from nebula.server.unlearning.arithmetic import recompute_consensus, support_matrix

    config = tiny_config()
    data = build_federation_data(config.data)
    ledger = Ledger(folder / "ledger.sqlite")
    ledger.start_run(TINY_RUN, config.to_flat())
    counts = {f"client-{k}": [int(x) for x in data.support(k)] for k in range(config.data.num_clients)}
    ledger.record_clients(TINY_RUN, counts)
    node = TeacherNode(config, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    rng = np.random.default_rng(7)
    k = config.federation.public_per_round
    for r, clients in TINY_PLAN.items():
        ids = (np.arange((r - 1) * k, r * k) % config.data.public_size).astype(np.int64)
        accepted = [
            Contribution(
                cid,
                100 + int(cid[-1]),
                ids,
                encode_logits(ids, rng.normal(size=(k, 3)) * 2, dtype="float16"),
                float(len(data.clients[int(cid[-1])].train)),
            )
            for cid in clients
        ]
        support, _ = support_matrix(clients, counts)
        consensus = recompute_consensus(
            [c.payload for c in accepted],
            [c.weight for c in accepted],
            ids=ids,
            num_classes=3,
            rule=get_rule(config.federation.aggregation),
            temperature=config.train.temperature,
            min_replies=config.federation.min_replies,
            support=support,
        )
        ledger.record_round(
            run_id=TINY_RUN,
            round_index=r,
            accepted=accepted,
            rejected=[],
            rule=config.federation.aggregation,
            consensus_ids=ids,
            consensus=consensus,
        )
        log_probs = np.log(np.clip(consensus.astype(np.float64), 1e-12, None)).astype(np.float32)
        node.teach(round_index=r, consensus=encode_logits(ids, log_probs, dtype="float32"), output_dir=folder)
    ledger.close()
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from a second thread, and on a busy machine OpenMP threads waiting
    for each other made the model tests ten times slower. Restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run_template(one_torch_thread, tmp_path_factory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> Path:
    """A fresh copy of the tiny run folder (the modes change its ledger and write beside it)."""
    import shutil

    return Path(shutil.copytree(tiny_run_template, tmp_path / "tiny-run"))
