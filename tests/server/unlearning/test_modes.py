"""The modes on a ledger built like the federation's: what is removed, what is recomputed, what stays byte-identical.

One table runs every ledger-only mode through the shared checks (the other clients' rows are
untouched, tombstones match the removed payloads, the client is forgotten, a second run changes
nothing); then mode-specific checks.
"""

import hashlib
import sqlite3

import numpy as np
import pytest

from nebula.server.exceptions import InvalidUnlearnRequest
from nebula.server.ledger import Ledger
from nebula.server.unlearning import UnlearnContext, available_modes, get_mode
from nebula.server.unlearning.arithmetic import consensus_sha256

from .conftest import LABEL_COUNTS, PLAN, RUN_A, RUN_B, TARGET, build_ledger, other_rows, reference_consensus, snapshot

MODES = tuple(m for m in available_modes() if not get_mode(m).changes_models)  # the model modes: test_model_modes.py


def _target_payloads(path) -> dict[tuple[str, int], bytes]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT run_id, round, payload FROM contributions WHERE client_id = ?", (TARGET,)).fetchall()
    db.close()
    return {(run, r): p for run, r, p in rows}


def _apply(path, mode: str, request_id: str = "req-1"):
    ledger = Ledger(path)
    try:
        return get_mode(mode).apply(UnlearnContext(ledger, request_id, TARGET))
    finally:
        ledger.close()


def test_registry_lists_the_modes_that_exist():
    assert available_modes() == ("exact-replay", "fast-correction", "purge", "reaggregate")
    assert MODES == ("purge", "reaggregate")
    with pytest.raises(
        InvalidUnlearnRequest,
        match="unknown unlearning mode 'retrain'; available: exact-replay, fast-correction, purge",
    ):
        get_mode("retrain")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_removes_the_client_and_only_the_client(mode, ledger_path):
    others = other_rows(ledger_path)
    removed = _target_payloads(ledger_path)
    assert len(removed) == 4  # run A rounds 1-3, run B round 1

    outcome = _apply(ledger_path, mode)

    assert other_rows(ledger_path) == others  # byte-identical: ids, payloads, weights, times
    assert _target_payloads(ledger_path) == {}
    assert {(t.run_id, t.round): t.payload_sha256 for t in outcome.tombstones} == {
        k: hashlib.sha256(p).hexdigest() for k, p in removed.items()
    }
    assert all(t.request_id == "req-1" and t.client_id == TARGET for t in outcome.tombstones)
    assert sum(t.payload_bytes for t in outcome.tombstones) == sum(len(p) for p in removed.values())
    ledger = Ledger(ledger_path)
    assert ledger.is_forgotten(TARGET) and ledger.forgotten_clients() == {TARGET}
    assert TARGET not in ledger.label_counts(RUN_A) and "client-0" in ledger.label_counts(RUN_A)
    assert ledger.knows_client(TARGET)  # tombstones keep it known: a later request finds it
    assert ledger.rejections(RUN_A) == [(3, "client-2", "payload truncated")]
    ledger.close()


@pytest.mark.parametrize("mode", MODES)
def test_running_a_mode_again_changes_nothing(mode, ledger_path):
    first = _apply(ledger_path, mode)
    before = snapshot(ledger_path)
    again = _apply(ledger_path, mode)  # a resumed request after its last step
    assert snapshot(ledger_path) == before
    assert again == first


def test_purge_leaves_the_consensus_as_it_was(ledger_path):
    before = snapshot(ledger_path, tables=("consensus",))
    outcome = _apply(ledger_path, "purge")
    assert snapshot(ledger_path, tables=("consensus",)) == before and outcome.revisions == []


@pytest.mark.parametrize("rule", ["mean", "class-support", "class-contrast", "median"])
def test_reaggregate_recomputes_each_affected_round_from_the_others(tmp_path, rule):
    path = build_ledger(tmp_path / "ledger.sqlite", rule=rule)
    ledger = Ledger(path)
    untouched = ledger.consensus(RUN_B, 2)
    before = {(run, r): ledger.consensus(run, r) for run, rounds in PLAN.items() for r in rounds}
    ledger.close()

    outcome = _apply(path, "reaggregate")

    ledger = Ledger(path)
    assert [(v.run_id, v.round) for v in outcome.revisions] == [(RUN_A, 1), (RUN_A, 2), (RUN_A, 3), (RUN_B, 1)]
    for v in outcome.revisions:
        ids, after = ledger.consensus(v.run_id, v.round)
        rest = [c for _, c in ledger.contributions(v.run_id, v.round)]
        assert (
            [c.client_id for c in rest] == [c for c in PLAN[v.run_id][v.round] if c != TARGET] == v.contributors_after
        )
        support = np.array([LABEL_COUNTS[c.client_id] for c in rest], dtype=float)
        np.testing.assert_array_equal(
            after, reference_consensus([c.payload for c in rest], [c.weight for c in rest], ids, rule, support)
        )
        assert (
            v.before_sha256
            == consensus_sha256(*before[(v.run_id, v.round)])
            != v.after_sha256
            == consensus_sha256(ids, after)
        )
        assert v.support == "label-counts" and TARGET in v.contributors_before
    np.testing.assert_array_equal(ledger.consensus(RUN_B, 2)[1], untouched[1])  # client-1 was not in that round
    ledger.close()


def test_a_round_left_below_min_replies_loses_its_consensus(tmp_path):
    path = build_ledger(tmp_path / "ledger.sqlite", min_replies=3)  # run B round 1 keeps 2 of 3 contributions
    outcome = _apply(path, "reaggregate")
    gone = {(v.run_id, v.round): v for v in outcome.revisions}[(RUN_B, 1)]
    assert gone.after_sha256 is None and gone.contributors_after == []
    ledger = Ledger(path)
    assert ledger.consensus(RUN_B, 1) is None
    assert len(ledger.contributions(RUN_B, 1)) == 2  # the other clients' contributions stay
    ledger.close()


def test_without_label_counts_support_falls_back_to_weights(tmp_path):
    path = build_ledger(tmp_path / "ledger.sqlite", rule="class-support", label_counts=False)
    outcome = _apply(path, "reaggregate")
    ledger = Ledger(path)
    for v in outcome.revisions:
        ids, after = ledger.consensus(v.run_id, v.round)
        rest = [c for _, c in ledger.contributions(v.run_id, v.round)]
        np.testing.assert_array_equal(
            after, reference_consensus([c.payload for c in rest], [c.weight for c in rest], ids, "class-support")
        )
        assert v.support == "none"
    ledger.close()


def test_reaggregate_after_purge_cleans_the_consensus_the_purge_left(ledger_path):
    purged = _apply(ledger_path, "purge", "req-purge")
    later = _apply(ledger_path, "reaggregate", "req-later")
    assert len(purged.tombstones) == 4 and later.tombstones == []  # nothing left to delete
    assert len(later.revisions) == 4
    ledger = Ledger(ledger_path)
    assert ledger.consensus_rounds(contributor=TARGET) == []
    ledger.close()
