"""Reputation weighting (server/reputation.py): the pure steps on small arrays, then rounds through a real ledger."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.common.wire import encode_logits
from nebula.server.aggregation import get_rule
from nebula.server.consensus import round_consensus
from nebula.server.ledger import Contribution, Ledger
from nebula.server.reputation import Reputation, agreements, loudness_caps, scores, trust

N, C = 60, 3
IDS = np.arange(N, dtype=np.int64)
CLIENTS = [f"client-{k}" for k in range(5)]
TRUTH = np.random.default_rng(42).integers(0, C, size=N)  # (N,)


def _honest(k: int, r: int) -> np.ndarray:
    """Client ``k``'s logits in round ``r``: the truth by a margin of 3, plus noise (about 90% agree)."""
    noise = np.random.default_rng([k, r]).normal(0.0, 1.0, size=(N, C))
    return 3.0 * np.eye(C)[TRUTH] + noise  # (N, C)


def _onehot_probs(answers: list[list[int]]) -> np.ndarray:
    return np.eye(C)[np.array(answers)] * 0.97 + 0.01  # (K, N, C), rows sum to 1


# -- the pure steps ---------------------------------------------------------------------


def test_agreement_is_the_share_of_inputs_matching_the_median_argmax():
    probs = _onehot_probs([[0, 1, 2, 0], [0, 1, 2, 1], [0, 1, 1, 0], [2, 2, 0, 1]])
    np.testing.assert_allclose(agreements(probs), [1.0, 0.75, 0.75, 0.0])


def test_scores_are_a_moving_average_from_each_clients_first_round():
    history = [{"a": 1.0, "b": 0.0}, {"a": 0.0}, {"a": 1.0, "b": 1.0, "c": 0.5}]
    assert scores(history, memory=0.5) == {"a": 0.75, "b": 0.5, "c": 0.5}


@pytest.mark.parametrize(
    "score, classes, expected",
    [
        ({"a": 0.9, "b": 0.88, "c": 0.92, "d": 0.9}, 3, {"a": 1, "b": 1, "c": 1, "d": 1}),  # an honest cohort
        ({"a": 0.9, "b": 0.88, "c": 0.92, "d": 0.9, "e": 0.5}, 3, {"a": 1, "b": 1, "c": 1, "d": 1, "e": 0}),
        ({"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9, "e": 0.675}, 3, {"a": 1, "b": 1, "c": 1, "d": 1, "e": 0.5}),  # z=-4.5
        ({"a": 0.667, "b": 0.896, "c": 0.0}, 3, {"a": 1, "b": 1, "c": 0}),  # small cohort: below chance
        ({"a": 0.6, "b": 0.9, "c": 0.25}, 3, {"a": 1, "b": 1, "c": 0.5}),  # 3/4 of chance
        ({"a": 0.6, "b": 0.9, "c": 0.34}, 3, {"a": 1, "b": 1, "c": 1}),  # at chance, within the cohort's spread
        ({"a": 0.9, "b": 0.0}, 3, {"a": 1, "b": 1}),  # two clients: no majority to compare with
        ({"a": 0.2, "b": 0.25, "c": 0.3, "d": 0.9}, 5, {"a": 1, "b": 1, "c": 1, "d": 1}),  # agreeing more costs nothing
    ],
)
def test_trust_table(score, classes, expected):
    assert trust(score, num_classes=classes) == pytest.approx(expected)


def test_zero_trust_removes_a_client_from_the_consensus():
    logits = [_honest(k, 1) for k in range(3)] + [-3.0 * _honest(3, 1)]
    weights, support = [10.0, 20.0, 30.0, 40.0], np.full((4, C), 5.0)
    for rule in ("class-contrast", "mean", "class-support"):
        kwargs = dict(rule=get_rule(rule), temperature=1.0, min_replies=2)
        with_trust, _ = round_consensus(logits, weights, support=support, trust=[1, 1, 1, 0], **kwargs)
        without, _ = round_consensus(logits[:3], weights[:3], support=support[:3], trust=[1] * 3, **kwargs)
        np.testing.assert_allclose(with_trust, without, atol=1e-9)
        capped = [z * g for z, g in zip(logits, loudness_caps(logits, [1] * 4), strict=True)]
        unweighted, _ = round_consensus(capped, weights, support=support, **kwargs)
        np.testing.assert_allclose(
            round_consensus(logits, weights, support=support, trust=[1] * 4, **kwargs)[0], unweighted, atol=1e-12
        )


def test_loudness_caps_scale_only_the_louder_than_median_down_to_it():
    base = np.array([[2.0, 0.0, -2.0], [0.0, 1.0, 0.0]])  # (N=2, C=3)
    logits = [base, 2 * base, 0.5 * base, 10 * base, np.zeros_like(base)]
    caps = loudness_caps(logits)
    np.testing.assert_allclose(caps, [1.0, 0.5, 1.0, 0.1, 1.0])  # the median loudness is base's
    loud = [float(np.mean(np.std(z * g, axis=1))) for z, g in zip(logits, caps, strict=True)]
    assert max(loud) == pytest.approx(loud[0]) and loudness_caps([]).shape == (0,)


def test_a_confident_minority_cannot_flip_a_soft_majority():
    """Eight honest clients lean to the truth by 1 logit; two flip class 0 to class 1 by a margin of 6 (the
    ``flip`` attack's), agreeing elsewhere. Without reputation they carry the class-0 inputs; with it
    (every trust 1 here: only the loudness cap acts) the honest majority decides."""
    honest = [1.0 * np.eye(C)[TRUTH] + np.random.default_rng(k).normal(0, 0.2, (N, C)) for k in range(8)]
    flipped = []
    for k in range(2):
        z = honest[k].copy()
        rows = TRUTH == 0
        z[rows, 1] = z[rows].max(axis=1) + 6.0
        flipped.append(z)
    logits, weights = honest + flipped, [1.0] * 10
    kwargs = dict(rule=get_rule("class-contrast"), temperature=1.0, min_replies=2, support=np.ones((10, C)))
    plain, _ = round_consensus(logits, weights, **kwargs)
    held, _ = round_consensus(logits, weights, trust=[1.0] * 10, **kwargs)
    on_zero = TRUTH == 0
    assert (plain[on_zero].argmax(axis=1) == 1).mean() > 0.9  # the attack works on the plain rule
    assert (held.argmax(axis=1) == TRUTH).mean() > 0.9  # and not once the cap acts


# -- rounds through a ledger ------------------------------------------------------------


def _round_logits(r: int, bad: dict[int, str]) -> list[np.ndarray]:
    out = []
    for k in range(len(CLIENTS)):
        z = _honest(k, r)
        out.append(-3.0 * z if bad.get(k) == "inverted" else z)
    return out


def _play(ledger: Ledger, plan: list[dict[int, str]], *, run_id: str = "run", first: int = 1, reputation=None):
    """Round ``first + i`` with the adversaries ``plan[i]``: assess, then record as the federation does."""
    reputation = reputation or Reputation(ledger, temperature=1.0)
    tables = []
    for i, bad in enumerate(plan):
        r = first + i
        logits = _round_logits(r, bad)
        tables.append(reputation.assess(run_id, r, CLIENTS, logits).table)
        accepted = [
            Contribution(cid, k, IDS, encode_logits(IDS, z, dtype="float16"), 10.0)
            for k, (cid, z) in enumerate(zip(CLIENTS, logits, strict=True))
        ]
        ledger.record_round(
            run_id=run_id,
            round_index=r,
            accepted=accepted,
            rejected=[],
            rule="mean",
            consensus_ids=None,
            consensus=None,
        )
    return tables


def test_an_honest_cohort_keeps_full_trust(tmp_path):
    tables = _play(Ledger(tmp_path / "l.sqlite"), [{}] * 4)
    assert all(row["trust"] == 1.0 for table in tables for row in table.values())
    assert all(row["agreement"] > 0.7 for table in tables for row in table.values())


def test_a_consistent_disagreer_is_left_out_and_recovers_when_it_agrees_again(tmp_path):
    plan = [{4: "inverted"}] * 3 + [{}] * 4
    tables = _play(Ledger(tmp_path / "l.sqlite"), plan)
    bad = [t["client-4"]["trust"] for t in tables]
    assert bad[:3] == [0.0, 0.0, 0.0]  # caught in the first round it attacks
    assert 0.0 <= bad[3] < 1.0  # its score remembers
    assert bad[-1] == 1.0  # and forgets once it agrees again
    assert bad == sorted(bad)
    assert all(t[c]["trust"] == 1.0 for t in tables for c in CLIENTS[:4])


def test_the_same_rounds_give_the_same_trust(tmp_path):
    plan = [{4: "inverted", 1: "inverted"}, {4: "inverted"}, {}]
    first = _play(Ledger(tmp_path / "a.sqlite"), plan)
    second = _play(Ledger(tmp_path / "b.sqlite"), plan)
    assert first == second


def test_a_resumed_run_reads_the_same_state_back_from_the_ledger(tmp_path):
    plan = [{4: "inverted"}] * 3 + [{}] * 3
    uninterrupted = _play(Ledger(tmp_path / "a.sqlite"), plan)
    ledger = Ledger(tmp_path / "b.sqlite")
    before = _play(ledger, plan[:3])
    after = _play(ledger, plan[3:], first=4, reputation=Reputation(ledger, temperature=1.0))  # a new server process
    assert before + after == uninterrupted
    fresh = Reputation(ledger, temperature=1.0)
    assert fresh.trust_at("run", 2) == {c: row["trust"] for c, row in uninterrupted[1].items()}
    assert fresh.trust_at("run", 99) == {}


def test_forgetting_a_client_rereads_the_history(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    reputation = Reputation(ledger, temperature=1.0)
    _play(ledger, [{4: "inverted"}] * 2, reputation=reputation)
    ledger.purge_client("client-4", request_id="req-1")
    assert set(reputation.trust_at("run", 2)) == set(CLIENTS[:4])
