"""A round's consensus from the clients' logits: the one rule the federation and unlearning share.

``server/federation.py`` applies it to a round's valid replies; unlearning's re-aggregation
(``server/unlearning/arithmetic.py``) applies it to the contributions left in the ledger, so a
revised round is computed exactly as the federation would have computed it without the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nebula.common.probabilities import softmax
from nebula.server.aggregation import AggregationRule


def round_consensus(
    logits: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    rule: AggregationRule,
    temperature: float,
    min_replies: int,
    support: np.ndarray | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """``(consensus (N, C) float64, None)``, or ``(None, why)`` where the round is not aggregated.

    Parameters
    ----------
    logits : K arrays (N, C), the clients' logits on the same public inputs.
    weights : (K,) their weights (example counts).
    support : (K, C) label counts, or None.

    A round is not aggregated with fewer than ``min_replies`` contributions, or when all of them
    weigh 0 (inference-only nodes hold no data).
    """
    if len(logits) < min_replies:
        return None, f"{len(logits)} valid replies < min_replies {min_replies}"
    if not sum(weights) > 0:
        return None, "every valid reply has weight 0 (inference-only nodes hold no data)"
    probs = np.stack([softmax(z, temperature=temperature) for z in logits])  # (K, N, C)
    return rule.aggregate(probs, weights=np.asarray(weights, dtype=float), support=support), None
