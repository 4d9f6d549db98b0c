"""Label priors and the logit shift between a client's prior and the federation's.

Under label skew (clients hold different class mixtures, the same texts per class) a
client's posterior differs from the federation's only by its prior:

.. math::

    \\log p_k(y \\mid x) = \\log p(x \\mid y) + \\log \\pi_k(y) - \\log p_k(x)
                      = \\log p(y \\mid x)
                         + \\underbrace{\\log \\pi_k(y) - \\log \\pi(y)}_{\\delta_k(y)}
                         + \\mathrm{const}(x)

so a model whose logits ``z`` estimate the federation's posterior fits the client's labels
through ``z + delta_k`` (logit-adjusted cross-entropy, Menon et al. 2021, "Long-tail
learning via logit adjustment"; in federated learning FedLC, Zhang et al. 2022). The
client then learns what separates its classes instead of its prior, its answers on public
inputs are on the federation's scale, and ``z + delta_k`` is its personalised prediction.

Priors are Laplace-smoothed (``+ smoothing`` per class) so that a class a client never
saw gets a large negative shift, not ``-inf``: its cross-entropy then hardly pushes that
class down, which is right, since the client has no evidence about it.
"""

from __future__ import annotations

import numpy as np


def class_prior(counts: np.ndarray, *, smoothing: float = 1.0) -> np.ndarray:
    """Smoothed class distribution ``(n_c + s) / (n + C s)`` of label counts ``(C,)``."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"label counts must be a non-empty vector (C,), got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError(f"label counts must be finite and >= 0, got {c.tolist()}")
    if smoothing < 0 or (smoothing == 0 and c.sum() == 0):
        raise ValueError(f"smoothing must be > 0 (or >= 0 with some counts), got {smoothing}")
    return (c + smoothing) / (c.sum() + smoothing * len(c))


def prior_shift(local_counts: np.ndarray, global_counts: np.ndarray, *, smoothing: float = 1.0) -> np.ndarray:
    """``delta_k = log pi_k - log pi`` (C,), float32: add it to the logits to get the client's posterior."""
    local, glob = np.asarray(local_counts), np.asarray(global_counts)
    if local.shape != glob.shape:
        raise ValueError(f"local label counts {local.shape} and federation label counts {glob.shape} differ in shape")
    shift = np.log(class_prior(local, smoothing=smoothing)) - np.log(class_prior(glob, smoothing=smoothing))
    return shift.astype(np.float32)
