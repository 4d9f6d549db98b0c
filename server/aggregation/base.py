"""The interface every aggregation rule implements, and the validation they share.

An aggregation rule turns the soft predictions of ``K`` clients on the same ``N`` public
inputs into one consensus distribution per input. Shapes used throughout:

* ``probs``   ``(K, N, C)``: client ``k``'s probabilities on input ``n``; rows sum to 1.
* ``weights`` ``(K,)``: non-negative client weights (e.g. number of private examples),
  not all zero.
* ``support`` ``(K, C)``: optional non-negative per-client per-class label counts.
* result      ``(N, C)``: float64 consensus probabilities, rows sum to 1, finite.

Rules are small classes (their hyper-parameters are constructor arguments, keyword-only)
registered by name in :mod:`nebula.server.aggregation.registry`; the arithmetic is pure numpy.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

ROW_SUM_ATOL = 1e-3  # float16 logits softened in float32 stay far inside this


class AggregationError(ValueError):
    """Inputs or parameters of an aggregation rule are invalid; the message names which."""


class AggregationRule(abc.ABC):
    """A rule that maps client probabilities ``(K, N, C)`` to a consensus ``(N, C)``."""

    name: ClassVar[str]

    def aggregate(self, probs: np.ndarray, *, weights: np.ndarray, support: np.ndarray | None = None) -> np.ndarray:
        """Consensus probabilities of ``K`` clients.

        Parameters
        ----------
        probs : np.ndarray, shape (K, N, C)
            Each client's probabilities on the same ``N`` public inputs; rows sum to 1.
        weights : np.ndarray, shape (K,)
            Client weights, ``>= 0``, not all zero.
        support : np.ndarray, shape (K, C), optional
            Per-client per-class label counts, ``>= 0`` (some rules use it).

        Returns
        -------
        np.ndarray, shape (N, C)
            float64 consensus probabilities; rows sum to 1, all finite.

        Raises
        ------
        AggregationError
            When :func:`check_inputs` refuses the inputs.
        """
        check_inputs(probs, weights, support)
        p, w = np.asarray(probs, dtype=np.float64), np.asarray(weights, dtype=np.float64)  # (K, N, C), (K,)
        s = None if support is None else np.asarray(support, dtype=np.float64)  # (K, C)
        return self.combine(p, w, s)

    @abc.abstractmethod
    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        """The rule itself, on inputs :meth:`aggregate` checked: float64 ``p`` (K, N, C), ``w`` (K,),
        ``support`` (K, C) or None; returns the consensus (N, C)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def check_inputs(probs: np.ndarray, weights: np.ndarray, support: np.ndarray | None) -> None:
    """Validate the inputs of :meth:`AggregationRule.aggregate`.

    Checks shapes (``probs`` 3-D with K, N, C >= 1; ``weights`` (K,); ``support`` (K, C)),
    finiteness, non-negativity, that ``weights`` are not all zero, and that every row of
    ``probs`` sums to 1 within ``ROW_SUM_ATOL``.

    Raises
    ------
    AggregationError
        Naming the argument and what is wrong with it.
    """
    p = np.asarray(probs)
    if p.ndim != 3:
        raise AggregationError(f"probs must be (K, N, C), got shape {p.shape}")
    k, n, c = p.shape
    if min(k, n, c) < 1:
        raise AggregationError(f"probs must have K, N, C >= 1, got shape {p.shape}")
    _check_real("probs", p)
    sums = p.sum(axis=2)  # (K, N)
    worst = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
    if abs(sums[worst] - 1) > ROW_SUM_ATOL:
        raise AggregationError(
            f"probs rows must sum to 1: client {worst[0]}, input {worst[1]} sums to {sums[worst]:.6g}"
        )
    w = np.asarray(weights)
    if w.shape != (k,):
        raise AggregationError(f"weights must have shape ({k},) for {k} clients, got {w.shape}")
    _check_real("weights", w)
    if w.sum() <= 0:
        raise AggregationError("weights are all zero: at least one client must have positive weight")
    if support is not None:
        s = np.asarray(support)
        if s.shape != (k, c):
            raise AggregationError(f"support must have shape ({k}, {c}) for {k} clients and {c} classes, got {s.shape}")
        _check_real("support", s)


def normalise_rows(consensus: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rescale every row of ``consensus`` (N, C) to sum to 1.

    Rows whose sum is zero (possible for median-like rules, e.g. three clients with
    one-hots on three different classes) take the matching row of ``fallback`` (N, C),
    which must itself be a distribution.
    """
    sums = consensus.sum(axis=1, keepdims=True)  # (N, 1)
    ok = sums > 1e-12
    out = np.where(ok, consensus / np.where(ok, sums, 1.0), fallback)
    return out / out.sum(axis=1, keepdims=True)


def weighted_mean(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k p_k / sum_k w_k``: (K, N, C), (K,) -> (N, C), float64."""
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), np.asarray(probs, dtype=np.float64), axes=1)


def _check_real(name: str, a: np.ndarray) -> None:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise AggregationError(f"{name} must be real numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise AggregationError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite values (NaN or Inf)")
    if (a < 0).any():
        raise AggregationError(f"{name} must be >= 0, got minimum {a.min():.6g}")
