"""Coordinate-wise trimmed mean over clients, renormalised.

For each coordinate ``(n, c)`` the K client values are sorted, the ``b = floor(trim K)``
smallest and largest are dropped (``b`` is capped so at least one value stays), and the
rest are averaged::

    tilde p_{n,c} = 1 / (K - 2b) * sum_{j=b}^{K-b-1} p_{(j),n,c},   bar p_{n,c} = tilde p_{n,c} / sum_c' tilde p_{n,c'}

Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates" (ICML): with ``trim`` above the fraction of Byzantine clients, their values are
cut before averaging. ``trim = 0`` is the unweighted mean; ``trim`` close to 0.5 tends to
the median. Unweighted for the same reason as the median; a row that trims to all zeros
falls back to the unweighted mean.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.server.aggregation.base import AggregationError, AggregationRule, normalise_rows
from nebula.server.aggregation.registry import register


@register
class TrimmedMeanRule(AggregationRule):
    """Coordinate-wise trimmed mean.

    Parameters
    ----------
    trim : float
        Fraction of clients cut from *each* end, ``0 <= trim < 0.5``.
    """

    name: ClassVar[str] = "trimmed-mean"

    def __init__(self, *, trim: float = 0.2) -> None:
        if not 0.0 <= trim < 0.5:
            raise AggregationError(f"trimmed-mean: trim must be in [0, 0.5), got {trim}")
        self.trim = float(trim)

    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        p = np.sort(p, axis=0)  # (K, N, C), sorted per coordinate
        k = p.shape[0]
        b = min(int(np.floor(self.trim * k)), (k - 1) // 2)  # keeps K - 2b >= 1
        return normalise_rows(p[b : k - b].mean(axis=0), p.mean(axis=0))
