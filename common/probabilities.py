"""Probabilities as Nebula passes them around: softmax, the log-probabilities sent to the teacher, and
the consensus targets a teacher gathers over rounds. numpy only: the server, the teacher node and
unlearning all use these, so each convention is written once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CLIP = 1e-12  # floor of a probability before its log: the consensus a teacher is sent never holds -inf


def softmax(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (N, C) logits at ``temperature``, numerically stable."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """What the teacher is sent for probabilities ``(N, C)``: ``log(max(p, CLIP))`` as float32.

    The teacher takes ``softmax`` of it at T = 1 (:func:`teacher_targets`).
    """
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), CLIP, None)).astype(np.float32)  # (N, C)


def teacher_targets(consensus: np.ndarray) -> np.ndarray:
    """What the teacher trains on for a round's consensus probabilities ``(N, C)``.

    The server sends :func:`log_probs` and the teacher takes ``softmax`` at T = 1, which gives
    ``p`` back up to float32 rounding; this is that path without the wire.
    """
    return softmax(log_probs(consensus))


def merge_consensus(
    old_ids: np.ndarray | None, old_probs: np.ndarray | None, ids: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All targets gathered so far plus a round's: ``(M,)`` ids, ``(M, C)`` probs; a re-sent id is replaced."""
    if old_ids is None or old_probs is None:
        return ids, probs
    keep = ~np.isin(old_ids, ids)
    return np.concatenate([old_ids[keep], ids]), np.concatenate([old_probs[keep], probs])


def gather_consensus(rounds: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Every target of ``rounds`` (``(ids (N,), consensus probs (N, C))`` each, in round order) as the teacher
    node gathers them (:func:`teacher_targets`, :func:`merge_consensus`): ``(ids (M,), probs (M, C))``, or
    ``(None, None)`` for no round."""
    ids: np.ndarray | None = None
    probs: np.ndarray | None = None
    for round_ids, consensus in rounds:
        ids, probs = merge_consensus(ids, probs, round_ids, teacher_targets(consensus))
    return ids, probs
