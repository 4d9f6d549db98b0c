"""The pure arithmetic of unlearning: hashes and consensus recomputation, no disk."""

import hashlib
import struct

import numpy as np
import pytest

from nebula.common.wire import encode_logits
from nebula.server.aggregation import available_rules, get_rule
from nebula.server.unlearning.arithmetic import (
    SUPPORT_LABEL_COUNTS,
    SUPPORT_NONE,
    consensus_sha256,
    digest_of,
    payload_sha256,
    recompute_consensus,
    support_matrix,
)

from .conftest import TEMPERATURE, C, N, reference_consensus

IDS = np.arange(N, dtype=np.int64)


def _payloads(k: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_logits(IDS, rng.normal(size=(N, C)) * 3) for _ in range(k)]


def test_hashes_are_over_the_stored_bytes():
    blob = b"NBLG payload"
    assert payload_sha256(blob) == hashlib.sha256(blob).hexdigest()
    probs = np.full((N, C), 1 / C, dtype=np.float32)
    expected = hashlib.sha256(
        b"NBCS" + struct.pack("<II", N, C) + IDS.astype("<i8").tobytes() + probs.astype("<f4").tobytes()
    )
    assert consensus_sha256(IDS, probs) == expected.hexdigest()
    assert consensus_sha256(IDS, probs.astype(np.float64)) == expected.hexdigest()  # hashed as stored: float32
    assert consensus_sha256(IDS[::-1], probs) != expected.hexdigest()


def test_digest_of_ignores_order():
    assert digest_of(["b", "a"]) == digest_of(["a", "b"]) != digest_of(["a"])


@pytest.mark.parametrize("rule", available_rules())
def test_recompute_equals_the_rule_on_the_given_clients(rule):
    payloads, weights = _payloads(4), [3.0, 1.0, 2.0, 5.0]
    support = np.array([[1, 2, 3], [0, 4, 1], [2, 2, 2], [5, 0, 0]], dtype=float)
    got = recompute_consensus(
        payloads,
        weights,
        ids=IDS,
        num_classes=C,
        rule=get_rule(rule),
        temperature=TEMPERATURE,
        min_replies=2,
        support=support,
    )
    assert got.dtype == np.float32 and got.shape == (N, C)
    np.testing.assert_array_equal(got, reference_consensus(payloads, weights, IDS, rule, support))


def test_rows_follow_the_given_id_order():
    payloads = _payloads(2)
    kwargs = dict(num_classes=C, rule=get_rule("mean"), temperature=1.0, min_replies=1)
    forward = recompute_consensus(payloads, [1, 1], ids=IDS, **kwargs)
    backward = recompute_consensus(payloads, [1, 1], ids=IDS[::-1].copy(), **kwargs)
    np.testing.assert_array_equal(forward[::-1], backward)


def test_too_few_contributions_give_no_consensus():
    kwargs = dict(ids=IDS, num_classes=C, rule=get_rule("mean"), temperature=1.0)
    assert recompute_consensus(_payloads(1), [1.0], min_replies=2, **kwargs) is None
    assert recompute_consensus([], [], min_replies=0, **kwargs) is None
    assert recompute_consensus(_payloads(2), [1.0, 1.0], min_replies=2, **kwargs) is not None
    assert recompute_consensus(_payloads(2), [0.0, 0.0], min_replies=2, **kwargs) is None  # weightless: not aggregated


def test_support_needs_every_client():
    counts = {"a": [1, 2], "b": [3, 4]}
    matrix, kind = support_matrix(["b", "a"], counts)
    assert kind == SUPPORT_LABEL_COUNTS
    np.testing.assert_array_equal(matrix, [[3, 4], [1, 2]])
    assert support_matrix(["a", "c"], counts) == (None, SUPPORT_NONE)
    assert support_matrix([], counts) == (None, SUPPORT_NONE)


def test_the_correction_ranks_the_rows_furthest_from_their_targets_first():
    from nebula.server.unlearning.fast_correction import rank_by_divergence

    targets = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.8, 0.2]])
    current = np.array([[0.9, 0.1], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])  # rows 2 and 3 disagree, row 2 the most
    assert rank_by_divergence(targets, current).tolist() == [2, 3, 0, 1]
    # equal distances: the lower position first; a zero probability is floored, not a division by zero
    assert rank_by_divergence(np.eye(2)[[0, 0, 0]], np.eye(2)[[1, 1, 0]]).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"same \(N, C\) shape"):
        rank_by_divergence(targets, current[:3])


def test_the_former_targets_are_gathered_as_the_teacher_gathered_them():
    from nebula.server.unlearning.fast_correction import consensus_change

    p = lambda *rows: np.array(rows, dtype=np.float32)
    before = {
        1: (np.array([0, 1]), p([0.9, 0.1], [0.2, 0.8])),
        2: (np.array([1, 2]), p([0.6, 0.4], [0.5, 0.5])),
        3: None,
    }
    after = p([0.7, 0.3], [0.5, 0.5], [0.5, 0.5])
    old = consensus_change(before, np.array([0, 1, 2]), after)
    np.testing.assert_allclose(old, [[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], atol=1e-6)  # id 1: round 2's, the later
    assert consensus_change(before, np.array([0, 7]), after[:2]) is None  # id 7 was never gathered before
    assert consensus_change({}, np.array([0]), after[:1]) is None
