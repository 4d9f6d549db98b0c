"""A round's consensus from the clients' logits: the one rule the federation and unlearning share.

``server/federation.py`` applies it to a round's valid replies; unlearning's re-aggregation
(``server/unlearning/arithmetic.py``) applies it to the contributions left in the ledger, so a
revised round is computed exactly as the federation would have computed it without the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nebula.common.priors import class_prior
from nebula.common.probabilities import softmax
from nebula.server.aggregation import AggregationRule
from nebula.server.reputation import loudness_caps


def round_consensus(
    logits: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    rule: AggregationRule,
    temperature: float,
    min_replies: int,
    support: np.ndarray | None = None,
    trust: Sequence[float] | None = None,
    log_prior: np.ndarray | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """``(consensus (N, C) float64, None)``, or ``(None, why)`` where the round is not aggregated.

    Parameters
    ----------
    logits : K arrays (N, C), the clients' logits on the same public inputs.
    weights : (K,) their weights (example counts).
    support : (K, C) label counts, or None.
    trust : (K,) reputation factors in [0, 1] (server/reputation.py), or None (all 1): each client's
        weight and label counts are multiplied by its factor, so a rule that weighs clients by either
        gives a client of trust 0 no say. With trust given, each reply's logits are also scaled down to
        the cohort's median loudness (:func:`~nebula.server.reputation.loudness_caps`): reputation's
        bound on how sure one client may claim to be.
    log_prior : (C,) added to every client's logits before the softmax, or None. Under
        ``federation.isolation = isolated`` clients fit their labels against a uniform prior, so their logits
        estimate the class-balanced posterior ``log p(y|x) - log pi(y) + const``; adding the federation's
        ``log pi`` (:func:`federation_log_prior`) turns them back into the federation's posterior.

    A round is not aggregated with fewer than ``min_replies`` contributions, or when all of them
    weigh 0 (inference-only nodes hold no data).
    """
    if trust is not None:
        caps = loudness_caps(logits, trust)  # (K,)
        logits = [(z * g).astype(z.dtype, copy=False) for z, g in zip(logits, caps, strict=True)]
        factor = np.asarray(trust, dtype=float)  # (K,)
        weights = np.asarray(weights, dtype=float) * factor
        support = None if support is None else np.asarray(support, dtype=float) * factor[:, None]
    if len(logits) < min_replies:
        return None, f"{len(logits)} valid replies < min_replies {min_replies}"
    if not sum(weights) > 0:
        return None, "every valid reply has weight 0 (inference-only nodes hold no data; reputation left others out)"
    shift = 0.0 if log_prior is None else np.asarray(log_prior, dtype=np.float64)  # (C,)
    probs = np.stack([softmax(z + shift, temperature=temperature) for z in logits])  # (K, N, C)
    return rule.aggregate(probs, weights=np.asarray(weights, dtype=float), support=support), None


def federation_log_prior(class_counts: Sequence[int]) -> np.ndarray:
    """``log pi`` (C,) of the federation's label counts, smoothed as the clients smooth theirs (common/priors.py)."""
    return np.log(class_prior(np.asarray(class_counts, dtype=np.float64)))
