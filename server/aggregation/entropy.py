"""Confidence-weighted aggregation with optional entropy-reduction sharpening (DS-FL).

Itahara et al., 2021, "Distillation-Based Semi-Supervised Federated Learning for
Communication-Efficient Collaborative Training with Non-IID Private Data" (DS-FL, IEEE
TMC) observe that averaging non-IID clients' outputs gives high-entropy, uninformative
targets, and propose entropy-reduction aggregation (ERA). This rule combines a per-sample
confidence weighting with ERA:

1. Confidence of client ``k`` on input ``n`` (1 for a one-hot, 0 for the uniform)::

       h_{k,n} = 1 - H(p_{k,n}) / log C,      H(p) = -sum_c p_c log p_c

2. Per-sample weights ``a_{k,n} = w_k (h_{k,n} + eps)``; ``eps`` keeps the rule defined
   when every client is uniform (it then reduces to the weighted mean)::

       bar p_{n,c} = sum_k a_{k,n} p_{k,n,c} / sum_k a_{k,n}

3. ERA sharpening, ``softmax(log bar p_n / T_sharp)`` = ``bar p_n^{1/T} / sum_c bar p_{n,c}^{1/T}``;
   ``T_sharp < 1`` lowers the entropy, ``T_sharp = 1`` (the default) leaves it unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.server.aggregation.base import AggregationError, AggregationRule
from nebula.server.aggregation.registry import register

_TINY = 1e-300  # log(0) guard; exp(log(_TINY) / T) underflows to 0, as it should


@register
class EntropyRule(AggregationRule):
    """Per-sample confidence weighting, then optional sharpening.

    Parameters
    ----------
    sharpen_temperature : float
        ``T_sharp > 0`` of the ERA step; 1.0 turns sharpening off.
    epsilon : float
        ``eps >= 0`` added to every confidence; must be > 0 for all-uniform inputs to
        stay defined (the default 1e-6 is negligible otherwise).
    """

    name: ClassVar[str] = "entropy"

    def __init__(self, *, sharpen_temperature: float = 1.0, epsilon: float = 1e-6) -> None:
        if not sharpen_temperature > 0:
            raise AggregationError(f"entropy: sharpen_temperature must be > 0, got {sharpen_temperature}")
        if not epsilon > 0:
            raise AggregationError(f"entropy: epsilon must be > 0, got {epsilon}")
        self.sharpen_temperature = float(sharpen_temperature)
        self.epsilon = float(epsilon)

    def combine(self, p: np.ndarray, w: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        c = p.shape[2]
        confidence = 1.0 - _entropy(p) / np.log(c) if c > 1 else np.ones(p.shape[:2])  # (K, N)
        a = w[:, None] * (np.clip(confidence, 0.0, 1.0) + self.epsilon)  # (K, N)
        consensus = np.einsum("kn,knc->nc", a, p) / a.sum(axis=0)[:, None]  # (N, C)
        if self.sharpen_temperature != 1.0:
            logits = np.log(np.maximum(consensus, _TINY)) / self.sharpen_temperature  # (N, C)
            consensus = np.exp(logits - logits.max(axis=1, keepdims=True))
        return consensus / consensus.sum(axis=1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats along the last axis, with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(axis=-1)
