"""Verification metrics on toy arrays: rank AUC, the loss attack, accuracy, the table rows."""

import numpy as np
import pytest

from nebula.server.unlearning.verification import (
    SETS,
    average_ranks,
    cross_entropy,
    markdown_table,
    mia_auc,
    rank_auc,
    verification_row,
    verification_rows,
)


def test_auc_of_perfectly_separated_scores_is_one_and_of_reversed_zero():
    assert rank_auc([3.0, 4.0, 5.0], [0.0, 1.0]) == 1.0
    assert rank_auc([0.0, 1.0], [3.0, 4.0, 5.0]) == 0.0


def test_auc_of_identical_distributions_is_about_one_half():
    rng = np.random.default_rng(0)
    assert rank_auc(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(0.5, abs=0.02)
    assert rank_auc(np.ones(5), np.ones(7)) == 0.5  # all tied


def test_auc_counts_ties_as_one_half_and_matches_the_pairwise_definition():
    pos, neg = np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0, 0.0, 2.0])
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert rank_auc(pos, neg) == pytest.approx(pairwise)
    np.testing.assert_array_equal(average_ranks(np.array([5.0, 1.0, 5.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert np.isnan(rank_auc([], [1.0]))


def test_cross_entropy_is_the_negative_log_softmax_of_the_label_and_stable():
    logits = np.array([[0.0, 0.0], [1000.0, 0.0]])
    np.testing.assert_allclose(cross_entropy(logits, np.array([0, 1])), [np.log(2.0), 1000.0])


def test_the_loss_attack_finds_members_with_lower_loss():
    members = np.array([[5.0, 0.0], [4.0, 0.0]])  # confident and right: low loss
    nonmembers = np.array([[0.5, 0.0], [0.0, 0.2]])
    labels = np.zeros(2, dtype=int)
    assert mia_auc(members, labels, nonmembers, labels) == 1.0
    assert mia_auc(nonmembers, labels, members, labels) == 0.0
    assert mia_auc(members, labels, members, labels) == 0.5


def _sets(forgotten_right: bool) -> dict[str, np.ndarray]:
    good, bad = np.array([[2.0, 0.0]] * 4), np.array([[0.0, 2.0]] * 4)
    return {"forgotten": good if forgotten_right else bad, "forgotten_holdout": bad, "others": good, "test": good[:2]}


LABELS = {
    "forgotten": np.zeros(4, int),
    "forgotten_holdout": np.zeros(4, int),
    "others": np.zeros(4, int),
    "test": np.zeros(2, int),
}


def test_a_row_holds_the_accuracies_and_the_attack_auc():
    row = verification_row(_sets(True), LABELS)
    assert row == {"acc_forgotten": 1.0, "acc_others": 1.0, "acc_test": 1.0, "mia_auc": 1.0}
    with pytest.raises(ValueError, match="missing"):
        verification_row({k: v for k, v in _sets(True).items() if k != "test"}, LABELS)
    assert set(SETS) == set(LABELS)


def test_rows_measure_gaps_and_speedups_against_the_retrained_model():
    logits = {
        "original": {"teacher": _sets(True)},
        "exact-replay": {"teacher": _sets(False)},
        "retrained": {"teacher": _sets(False)},
    }
    rows = {
        r["variant"]: r for r in verification_rows(logits, LABELS, seconds={"exact-replay": 5.0, "retrained": 100.0})
    }
    assert rows["original"]["d_acc_forgotten"] == 100.0 and rows["original"]["d_mia_auc"] == 0.5
    assert rows["original"]["speedup"] is None  # no time given
    assert rows["exact-replay"]["d_acc_forgotten"] == 0.0 and rows["exact-replay"]["d_mia_auc"] == 0.0
    assert rows["exact-replay"]["speedup"] == 20.0 and rows["retrained"]["speedup"] is None
    table = markdown_table(list(rows.values())).splitlines()
    assert len(table) == 2 + 3 and "| exact-replay | teacher | 0.0% |" in table[3]


def test_gap_intervals_hold_zero_for_the_reference_itself_and_exclude_it_for_a_clear_gap():
    from nebula.server.unlearning.verification import gap_intervals

    rng = np.random.default_rng(1)
    labels = {"forgotten": rng.integers(0, 3, 200), "forgotten_holdout": rng.integers(0, 3, 50)}
    ref = {s: rng.normal(size=(len(labels[s]), 3)) for s in labels}
    same = gap_intervals(ref, ref, labels, draws=200)
    assert same == {"d_acc_forgotten": (0.0, 0.0), "d_mia_auc": (0.0, 0.0)}  # paired: every draw gives 0
    # a model that knows every member's label (and none of the non-members'): far from the reference
    knows = {"forgotten": np.eye(3)[labels["forgotten"]] * 10, "forgotten_holdout": ref["forgotten_holdout"]}
    ci = gap_intervals(knows, ref, labels, draws=200)
    assert ci["d_acc_forgotten"][0] > 40 and ci["d_mia_auc"][0] > 0.2
    lo, hi = gap_intervals(ref, {s: rng.normal(size=z.shape) for s, z in ref.items()}, labels, draws=200)["d_mia_auc"]
    assert lo < 0 < hi  # two random models: the data cannot tell them apart
    with pytest.raises(ValueError, match="level"):
        gap_intervals(ref, ref, labels, level=1.5)


def test_the_table_shows_each_gap_with_its_interval():
    logits = {"fast-correction": {"teacher": _sets(True)}, "retrained": {"teacher": _sets(False)}}
    rows = verification_rows(logits, LABELS)
    fast = next(r for r in rows if r["variant"] == "fast-correction")
    assert fast["d_acc_forgotten_ci"][0] <= fast["d_acc_forgotten"] <= fast["d_acc_forgotten_ci"][1]
    assert next(r for r in rows if r["variant"] == "retrained")["d_mia_auc_ci"] is None
    table = markdown_table(rows).splitlines()
    assert "95% interval" in table[0] and "[+" in table[2] and "| - |" in table[3]
