"""Classification metrics beside accuracy, in numpy: macro-F1, the share of the top predicted class.

Accuracy alone flatters a model on a skewed test set: a model that answers the majority class for
every input scores the majority-class rate. The clients, the teacher node and the baselines all
report these with the same functions, so the results table compares like with like.
"""

from __future__ import annotations

import numpy as np

ONE_CLASS_SHARE = 0.95  # a model whose top class takes this share of its test predictions is flagged


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int | None = None) -> float:
    """Macro-F1: the mean over classes ``c`` of ``F1_c = 2 P_c R_c / (P_c + R_c) = 2 TP / (2 TP + FP + FN)``.

    ``labels``, ``predictions``: integer class ids ``(N,)``. A class neither present in ``labels`` nor
    predicted is left out of the mean (it says nothing about the model); a class present but never
    predicted (or predicted but never present) has ``F1_c = 0``. NaN for an empty test set.
    """
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    if len(labels) == 0:
        return float("nan")
    c = max(int(num_classes or 0), int(max(labels.max(), predictions.max())) + 1)
    tp = np.bincount(labels[labels == predictions], minlength=c).astype(float)
    support, predicted = np.bincount(labels, minlength=c), np.bincount(predictions, minlength=c)
    seen = (support + predicted) > 0
    return float(np.mean(2 * tp[seen] / (support[seen] + predicted[seen])))


def top_class_share(predictions: np.ndarray) -> float:
    """The share of ``predictions`` ``(N,)`` in the most predicted class (1.0: one answer for every input)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    return float(np.bincount(predictions).max() / len(predictions)) if len(predictions) else float("nan")


def majority_rate(labels: np.ndarray) -> float:
    """The share of the most frequent class in ``labels``: the accuracy of always answering it."""
    return top_class_share(labels)


def one_class(share: float | None) -> bool:
    """Whether a model with top-class share ``share`` answers (nearly) one class (None, NaN: unknown, False)."""
    return share is not None and bool(share >= ONE_CLASS_SHARE)


def scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """``(accuracy, macro-F1, top-class share)`` of ``logits`` ``(N, C)`` against ``labels`` ``(N,)``."""
    logits = np.asarray(logits)
    if len(labels) == 0:
        return float("nan"), float("nan"), float("nan")
    predictions = logits.argmax(axis=1)
    return (
        float((predictions == labels).mean()),
        macro_f1(labels, predictions, logits.shape[1]),
        top_class_share(predictions),
    )
