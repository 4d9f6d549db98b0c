"""Distillation losses (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

Shapes: ``B`` examples in a batch, ``C`` classes. Logits are raw scores ``(B, C)``; targets
are probabilities ``(B, C)`` whose rows sum to 1 (already softened at the temperature the
sender chose, e.g. with :func:`soft_targets`).

The knowledge-distillation term is multiplied by ``T^2``. The gradient of the softened
KL with respect to a student logit is ``(p_i - q_i) / T``, which shrinks like ``1 / T^2``
once ``p - q`` itself shrinks like ``1 / T``; the ``T^2`` factor cancels this, so that

    dL/ds_i = T (p_i - q_i) / B  ~  (s_i - t_i) / (B C)      for large T, zero-mean logits,

(Hinton et al. 2015, eq. 2-3, batch mean ``1 / B`` added) and the relative weight of the
soft and hard terms stays roughly unchanged when the temperature is tuned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ROW_SUM_ATOL = 1e-3  # float16 wire payloads, softened in float32, stay well inside this


def soft_targets(logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Softened probabilities ``softmax(z / T)`` along the last dimension.

    .. math:: q_{bc} = \\frac{\\exp(z_{bc} / T)}{\\sum_{c'} \\exp(z_{bc'} / T)}

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C)
    temperature : float
        ``T > 0``; larger ``T`` gives softer (higher-entropy) targets.

    Returns
    -------
    torch.Tensor, shape (B, C)
        Rows sum to 1.
    """
    _check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)


def kd_kl_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Temperature-scaled KL divergence of the student from soft targets, batch mean.

    .. math::

        L_{KD} = \\frac{T^2}{B} \\sum_b \\sum_c q_{bc}
                 \\left(\\log q_{bc} - \\log \\mathrm{softmax}(s_b / T)_c\\right)
               = T^2 \\, \\mathrm{KL}(q \\,\\|\\, \\mathrm{softmax}(s / T))

    with ``0 log 0 = 0``. The loss is 0 exactly when ``q = softmax(s / T)`` and positive
    otherwise; its gradient is ``dL/ds = T (softmax(s / T) - q) / B`` (see module docs for
    why ``T^2``).

    Parameters
    ----------
    student_logits : torch.Tensor, shape (B, C)
        Raw student scores ``s``.
    target_probs : torch.Tensor, shape (B, C)
        Target probabilities ``q``, rows sum to 1 (not logits).
    temperature : float
        ``T > 0``, the temperature applied to the student.

    Returns
    -------
    torch.Tensor, scalar
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target_probs)
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    q = target_probs.to(log_p.dtype)
    return F.kl_div(log_p, q, reduction="batchmean") * (temperature**2)


def distillation_loss(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float,
    alpha: float,
    logit_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al.'s combined loss: soft targets plus hard labels.

    .. math:: L = \\alpha \\, L_{KD}(s, q; T) + (1 - \\alpha) \\, \\mathrm{CE}(s + \\delta, y)

    where ``L_KD`` is :func:`kd_kl_loss` (``T^2``-scaled, batch mean) and ``CE`` is the
    mean cross-entropy of the unsoftened student logits (``T = 1``), shifted by ``delta``
    when given (logit-adjusted cross-entropy, see :mod:`nebula.common.priors`). A term whose
    coefficient is 0 is not computed, so ``alpha = 0`` is exactly cross-entropy and
    ``alpha = 1`` exactly ``L_KD``.

    Parameters
    ----------
    student_logits : torch.Tensor, shape (B, C)
    target_probs : torch.Tensor, shape (B, C)
        Soft targets, rows sum to 1.
    labels : torch.Tensor of int, shape (B,), optional
        Hard labels in ``[0, C)``. Without labels ``alpha`` must be 1.
    temperature : float
        ``T > 0``.
    alpha : float
        Weight of the distillation term, ``0 <= alpha <= 1``.
    logit_shift : torch.Tensor, shape (C,), optional
        ``delta`` added to the logits in the cross-entropy term only: the labels come from a
        distribution whose prior differs from the one the logits should estimate.

    Returns
    -------
    torch.Tensor, scalar
    """
    _check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_pair(student_logits, target_probs)
    _check_labels(labels, student_logits, alpha=alpha)
    _check_shift(logit_shift, student_logits)
    loss = None
    if alpha > 0.0:
        loss = alpha * kd_kl_loss(student_logits, target_probs, temperature=temperature)
    if alpha < 1.0:
        shifted = student_logits if logit_shift is None else student_logits + logit_shift.to(student_logits.dtype)
        ce = (1.0 - alpha) * F.cross_entropy(shifted, labels)  # (B, C) + (C,)
        loss = ce if loss is None else loss + ce
    return loss


def _check_labels(labels: torch.Tensor | None, student_logits: torch.Tensor, *, alpha: float) -> None:
    """Hard labels, where given, are integer class indices, one per row; without them ``alpha`` is 1."""
    if labels is None:
        if alpha != 1.0:
            raise ValueError(f"labels is None, so alpha must be 1 (pure distillation), got alpha={alpha}")
    elif labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({student_logits.shape[0]},) to match student_logits "
            f"{tuple(student_logits.shape)}, got {tuple(labels.shape)}"
        )
    elif labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")


def _check_shift(logit_shift: torch.Tensor | None, student_logits: torch.Tensor) -> None:
    """A logit shift, where given, has one entry per class."""
    if logit_shift is not None and logit_shift.shape != student_logits.shape[1:]:
        raise ValueError(f"logit_shift must have shape ({student_logits.shape[1]},), got {tuple(logit_shift.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_pair(student_logits: torch.Tensor, target_probs: torch.Tensor) -> None:
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must be (B, C), got shape {tuple(student_logits.shape)}")
    if target_probs.shape != student_logits.shape:
        raise ValueError(
            f"target_probs shape {tuple(target_probs.shape)} does not match "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    if target_probs.numel() == 0:
        return
    with torch.no_grad():
        sums = target_probs.detach().float().sum(dim=-1)  # (B,)
        bad = (target_probs < 0).any() or not torch.isfinite(sums).all() or (sums - 1).abs().max() > _ROW_SUM_ATOL
        if bad:
            raise ValueError(
                "target_probs must be probabilities (>= 0, rows sum to 1), got row sums in "
                f"[{sums.min().item():.4g}, {sums.max().item():.4g}]; pass soft_targets(logits), not logits"
            )
