"""Coordinate-wise median over clients, renormalised.

.. math:: \\tilde p_{n,c} = \\mathrm{median}_k \\, p_{k,n,c}, \\qquad
          \\bar p_{n,c} = \\tilde p_{n,c} / \\textstyle\\sum_{c'} \\tilde p_{n,c'}

Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates" (ICML): the coordinate-wise median tolerates a minority of arbitrary (Byzantine)
clients, whose values cannot drag a coordinate past the honest clients' range. The median
is unweighted (``weights`` are validated but not used): a weighted median would let a
client claim a large weight and win. A row whose medians are all zero (possible with
one-hot outputs that disagree) falls back to the unweighted mean.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.server.aggregation.base import AggregationRule, normalise_rows
from nebula.server.aggregation.registry import register


@register
class MedianRule(AggregationRule):
    """Coordinate-wise median over the K clients (unweighted), rows renormalised."""

    name: ClassVar[str] = "median"

    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        return normalise_rows(np.median(p, axis=0), p.mean(axis=0))
