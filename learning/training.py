"""Training and inference loops shared by edge clients, the teacher and the baselines.

One loop (:func:`fit`) serves supervised training and distillation: the loss is chosen by
what the caller passes (labels, soft targets or both). Large batches are split into
micro-batches whose gradients accumulate, so a device with little memory trains with the
same effective batch as a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nebula.learning.losses import distillation_loss


@dataclass(frozen=True)
class Encoded:
    """Tokenised texts, unpadded; batches are padded on the fly to their longest row."""

    input_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> Encoded:
        return Encoded([self.input_ids[i] for i in index])


def encode(tokenizer, texts: Sequence[str], *, max_length: int) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids)


def collate(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask  # (B, L), (B, L)


def pad_id_of(model) -> int:
    return getattr(model.config, "pad_token_id", None) or 0


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` for the block, restored after (a fixed count keeps
    reductions, hence results, repeatable; a benchmark's latency is measured at a stated count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def predict_logits(model, data: Encoded, *, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) as float32. Sorts by length so padding is small, then restores order."""
    model.eval()
    order = np.argsort([len(r) for r in data.input_ids], kind="stable")
    out: list[torch.Tensor] = []
    for start in range(0, len(order), batch_size):
        ids, mask = collate([data.input_ids[i] for i in order[start : start + batch_size]], pad_id_of(model))
        out.append(model(input_ids=ids, attention_mask=mask).logits.float())
    logits = torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels), np.float32)
    result = np.empty_like(logits)
    result[order] = logits
    return result


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


@dataclass(frozen=True)
class FitResult:
    steps: int
    mean_loss: float
    examples: int


def fit(
    model,
    data: Encoded,
    *,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    epochs: int,
    lr: float,
    batch_size: int,
    micro_batch_size: int,
    temperature: float = 1.0,
    alpha: float = 1.0,
    logit_shift: np.ndarray | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train the trainable parameters of ``model`` on ``data``.

    Parameters
    ----------
    labels : (N,) int, optional
        Hard labels: cross-entropy.
    targets : (N, C) float, optional
        Soft target probabilities: KL at ``temperature`` (x T^2). With both, the loss is
        ``alpha * KL + (1 - alpha) * CE`` (:func:`nebula.learning.losses.distillation_loss`).
    logit_shift : (C,) float, optional
        Added to the logits in the cross-entropy only (logit-adjusted CE, :mod:`nebula.common.priors`).
    micro_batch_size : int
        Examples per forward pass; gradients of ``batch_size / micro_batch_size`` passes
        accumulate before each optimizer step, each scaled by its share of the batch.
    """
    if labels is None and targets is None:
        raise ValueError("fit needs labels, targets or both")
    n = len(data)
    if n == 0 or epochs == 0:
        return FitResult(0, float("nan"), 0)
    _check_lengths(n, labels=labels, targets=targets)
    loss = _loss_settings(labels, targets, temperature=temperature, alpha=alpha, logit_shift=logit_shift)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(seed)
    pad = pad_id_of(model)
    model.train()
    losses, steps = [], 0
    # Dropout draws from torch's global generator: seeded here, inside a fork that restores it afterwards, so a
    # fit depends on its own seed only, not on what ran before in the process (a simulation worker serves several
    # clients in turn). Deterministic rounds rest on it (tests/simulation/test_isolated_forgetting.py).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                batch_loss = _optimizer_step(
                    model, opt, data, batch, pad=pad, micro_batch_size=micro_batch_size, **loss
                )
                steps += 1
                losses.append(batch_loss)
                if on_step is not None:
                    on_step(steps, batch_loss)
    return FitResult(steps, float(np.mean(losses)), n * epochs)


def _check_lengths(n: int, *, labels: np.ndarray | None, targets: np.ndarray | None) -> None:
    """Labels and targets, where given, have one row per input."""
    for name, arr in (("labels", labels), ("targets", targets)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows for {n} inputs")


def _loss_settings(
    labels: np.ndarray | None,
    targets: np.ndarray | None,
    *,
    temperature: float,
    alpha: float,
    logit_shift: np.ndarray | None,
) -> dict:
    """The loss's settings for :func:`_optimizer_step`: its terms, the KL weight ``alpha`` and the logit shift."""
    return {
        "labels": labels,
        "targets": targets,
        "alpha": 0.0 if targets is None else 1.0 if labels is None else alpha,
        "shift": None if logit_shift is None else torch.as_tensor(np.asarray(logit_shift), dtype=torch.float32),  # (C,)
        "temperature": temperature,
    }


def _optimizer_step(
    model,
    opt: torch.optim.Optimizer,
    data: Encoded,
    batch: np.ndarray,
    *,
    pad: int,
    micro_batch_size: int,
    labels: np.ndarray | None,
    targets: np.ndarray | None,
    shift: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> float:
    """One optimizer step on ``batch``: gradients of its micro-batches accumulate, each scaled by
    its share of the batch. Returns the batch's mean loss."""
    opt.zero_grad(set_to_none=True)
    batch_loss = 0.0
    for m in range(0, len(batch), micro_batch_size):
        micro = batch[m : m + micro_batch_size]
        ids, mask = collate([data.input_ids[i] for i in micro], pad)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (b, C)
        y = torch.as_tensor(labels[micro]) if labels is not None else None
        if targets is None:
            loss = F.cross_entropy(logits if shift is None else logits + shift, y)
        else:
            t = torch.as_tensor(targets[micro], dtype=torch.float32)
            loss = distillation_loss(logits, t, y, temperature=temperature, alpha=alpha, logit_shift=shift)
        (loss * (len(micro) / len(batch))).backward()
        batch_loss += loss.item() * len(micro) / len(batch)
    opt.step()
    return batch_loss
