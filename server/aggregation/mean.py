"""Weighted mean of client probabilities: the FedAvg of knowledge distillation.

.. math:: \\bar p_{n,c} = \\frac{\\sum_k w_k \\, p_{k,n,c}}{\\sum_k w_k}

The default of most federated distillation work (FedMD, Li & Wang 2019; FedDF, Lin et al.
2020), with ``w_k`` the client's number of private examples. A convex combination of
distributions is a distribution, so no renormalisation is needed beyond rounding.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.server.aggregation.base import AggregationRule, weighted_mean
from nebula.server.aggregation.registry import register


@register
class MeanRule(AggregationRule):
    """Weighted mean over clients; ``weights`` are honoured, ``support`` is ignored."""

    name: ClassVar[str] = "mean"

    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        consensus = weighted_mean(p, w)  # (N, C)
        return consensus / consensus.sum(axis=1, keepdims=True)
