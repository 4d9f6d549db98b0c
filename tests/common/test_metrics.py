"""Macro-F1 and the top-class share (common/metrics.py), against hand-computed cases."""

import numpy as np
import pytest

from nebula.common.metrics import macro_f1, majority_rate, one_class, scores, top_class_share


def test_macro_f1_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 1])
    # class 0: TP 2, 3 present, 2 predicted -> 2*2/(3+2) = 0.8
    # class 1: TP 2, 2 present, 4 predicted -> 2*2/(2+4) = 2/3
    # class 2: present, never predicted -> 0; class 3: never present nor predicted -> left out
    assert macro_f1(labels, predictions, num_classes=4) == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert top_class_share(predictions) == pytest.approx(4 / 6)


def test_perfect_and_one_class_predictions():
    labels = np.array([0, 1, 2, 0])
    assert macro_f1(labels, labels, 3) == 1.0
    always_0 = np.zeros(4, dtype=int)
    # class 0: 2*2/(2+4) = 2/3; classes 1 and 2: present, never predicted -> 0
    assert macro_f1(labels, always_0, 3) == pytest.approx(2 / 9)
    assert top_class_share(always_0) == 1.0 and one_class(1.0)
    assert majority_rate(labels) == 0.5


def test_one_class_threshold_and_unknowns():
    assert one_class(0.95) and not one_class(0.949)
    assert not one_class(None) and not one_class(float("nan"))


def test_scores_from_logits_and_empty_sets():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    acc, f1, share = scores(logits, np.array([0, 1, 1]))
    assert acc == pytest.approx(2 / 3)
    assert f1 == pytest.approx((2 * 1 / (1 + 2) + 2 * 1 / (2 + 1)) / 2)
    assert share == pytest.approx(2 / 3)
    assert all(np.isnan(x) for x in scores(np.zeros((0, 2)), np.zeros(0, dtype=int)))
    assert np.isnan(macro_f1(np.zeros(0), np.zeros(0)))
    with pytest.raises(ValueError, match="shape"):
        macro_f1(np.array([0, 1]), np.array([0]))
