"""Per-class support weighting: trust, for each class, the clients that have seen it.

In federated distillation with label skew (FedMD, Li & Wang 2019; DS-FL, Itahara et al.
2021, and their class-aware variants), a client only learns the classes present in its
private data; its probability for a class it never saw is noise, yet the plain mean gives
it full weight. This rule weights each client *per class* by how many examples of that
class it holds, ``s_{k,c}`` (its label counts)::

    tilde p_{n,c} = sum_k s_{k,c} p_{k,n,c} / sum_k s_{k,c}
    bar p_{n,c}   = tilde p_{n,c} / sum_{c'} tilde p_{n,c'}

so the clients that saw class ``c`` decide how much mass ``c`` gets, and the rows are
renormalised at the end.

Fallbacks, so the rule is always defined:

* ``support is None``: ``s_{k,c} = w_k`` for every class, i.e. the weighted mean.
* a class with zero support at every client: that column is the ``weights``-weighted mean.
* a row that sums to zero (every client that saw some class put no mass on it, e.g.
  one-hot outputs): that row is the weighted mean.

``weights`` only enter through these fallbacks: label counts already carry data size.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.server.aggregation.base import AggregationRule, normalise_rows, weighted_mean
from nebula.server.aggregation.registry import register


@register
class ClassSupportRule(AggregationRule):
    """Column-wise weighted mean with per-class weights ``support[:, c]``."""

    name: ClassVar[str] = "class-support"

    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        mean = weighted_mean(p, w)  # (N, C)
        if support is None:
            return mean / mean.sum(axis=1, keepdims=True)
        s = support  # (K, C)
        totals = s.sum(axis=0)  # (C,)
        seen = totals > 0
        per_class = np.einsum("kc,knc->nc", s, p) / np.where(seen, totals, 1.0)  # (N, C)
        consensus = np.where(seen[None, :], per_class, mean)  # unseen class: plain weighted mean
        return normalise_rows(consensus, mean)
