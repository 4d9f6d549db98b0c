"""The global student's fit with intermediate-layer terms: :func:`nebula.learning.training.fit`'s loop with
:func:`~nebula.learning.deep_distill.deep_distill_loss` in place of the logit KL.

.. math::

    L = L_{KD}(s, \\mathrm{softmax}(t / T); T) + w_{hidn} L_{hidn} + w_{attn} L_{attn} + w_{rel} L_{rel}

(the terms are :mod:`nebula.learning.deep_losses`'s; ``w`` the ``train.student_*_weight`` settings). The teacher
runs on every micro-batch, on the student's own tokens, in eval mode and without gradients: only the student's
trainable parameters learn. The loop is :func:`~nebula.learning.training.fit`'s: the data order is a seeded
permutation per epoch, the torch random state (the student's dropout) is seeded inside a forked RNG, batches of
``batch_size`` split into micro-batches whose gradients accumulate, each scaled by its share of the batch. So the
same seed, states and thread count give bit-identical students.

What the federation's student step supports (:func:`deep_layer_pairs` checks it before anything trains):

- **one tokenizer.** Every term compares the two models position by position, so the teacher must tokenise
  the student's inputs exactly as the student does (MiniLM-L6 -> MiniLM-L3 do); otherwise ValueError. There is
  no mean-pooled fallback: the builtin teacher with another tokenizer (MPNet) also has another width, and a
  width change needs a projection (next point).
- **hidden states at the teacher's width.** Across widths TinyBERT learns a projection
  (:class:`~nebula.learning.deep_losses.HiddenProjection`); its parameters would have to persist across rounds
  and in the teacher node's checkpoints for resume and replay to stay exact, which this step does not do: it
  refuses, and the relation term (any width and head count) is the alternative.
- **attention maps at the teacher's head count.** ``transformers`` returns attention maps only from its eager
  implementation, so both models switch to it for the fit, and the student's attention-probability dropout is
  off (the maps must be distributions); both are restored afterwards.
- **relations** use as many relation heads as the student has attention heads (MiniLM v2 with ``A_r = H``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nebula.learning.deep_distill import DeepLoss, capture_qkv, deep_distill_loss
from nebula.learning.deep_losses import LayerMap, layer_map
from nebula.learning.models import Learner
from nebula.learning.schedule import LossWeights
from nebula.learning.training import Encoded, FitResult, collate, pad_id_of

# The configuration field behind each intermediate term, for error messages.
_FIELDS = {
    "hidden": "train.student_hidden_weight",
    "attention": "train.student_attention_weight",
    "relation": "train.student_relation_weight",
}


@dataclass(frozen=True)
class DeepFitResult(FitResult):
    terms: dict[str, float]  # each term's mean over the optimizer steps, before weighting


def deep_layer_pairs(
    teacher: Learner,
    student: Learner,
    teacher_data: Encoded,
    student_data: Encoded,
    *,
    weights: LossWeights,
    kind: str | tuple,
) -> LayerMap:
    """The layer map of :func:`deep_fit` for these two learners, after checking they support ``weights``.

    Parameters
    ----------
    teacher_data, student_data : Encoded
        The student's inputs as each learner's tokenizer encodes them: they must be equal.
    kind : str or tuple
        ``train.student_layer_map`` parsed (:meth:`nebula.common.config.TrainConfig.layer_map_kind`).

    Raises
    ------
    ValueError
        Naming both models and the setting that needs what they lack.
    """
    active = [_FIELDS[t] for t in ("hidden", "attention", "relation") if getattr(weights, t) > 0]
    pair = f"teacher {teacher.name!r} and student {student.name!r}"
    mismatch = next((k for k, (a, b) in enumerate(zip(teacher_data.input_ids, student_data.input_ids)) if a != b), None)
    if mismatch is not None or len(teacher_data) != len(student_data):
        raise ValueError(
            f"{pair} tokenise the student's inputs differently (first at input {mismatch}): {', '.join(active)} "
            "compare the two models token by token and need one tokenizer (e.g. teacher minilm-l6, student "
            "minilm-l3); set them to 0 for this pair"
        )
    t_cfg, s_cfg = teacher.model.config, student.model.config
    try:
        mapping = layer_map(t_cfg.num_hidden_layers, s_cfg.num_hidden_layers, kind)
    except ValueError as exc:
        raise ValueError(f"train.student_layer_map {kind!r} for {pair}: {exc}") from None
    if (weights.attention > 0 or weights.relation > 0) and any(0 in p for p in mapping):
        raise ValueError(f"train.student_layer_map pairs {mapping} include layer 0, the embeddings: no attention there")
    if weights.hidden > 0 and t_cfg.hidden_size != s_cfg.hidden_size:
        raise ValueError(
            f"{_FIELDS['hidden']} > 0 needs equal widths, {pair} have {t_cfg.hidden_size} and {s_cfg.hidden_size}: "
            f"a projection would have to persist across rounds, which the student step does not keep; use "
            f"{_FIELDS['relation']} (any width) instead"
        )
    if weights.attention > 0 and t_cfg.num_attention_heads != s_cfg.num_attention_heads:
        raise ValueError(
            f"{_FIELDS['attention']} > 0 needs equal head counts, {pair} have {t_cfg.num_attention_heads} and "
            f"{s_cfg.num_attention_heads}; use {_FIELDS['relation']} (any head count) instead"
        )
    if weights.relation > 0 and t_cfg.hidden_size % s_cfg.num_attention_heads:
        raise ValueError(
            f"{_FIELDS['relation']} > 0 splits both models' states into the student's {s_cfg.num_attention_heads} "
            f"heads, which does not divide the teacher's width {t_cfg.hidden_size} ({pair})"
        )
    return mapping


def deep_fit(
    student: nn.Module,
    teacher: nn.Module,
    data: Encoded,
    *,
    weights: LossWeights,
    mapping: LayerMap,
    epochs: int,
    lr: float,
    batch_size: int,
    micro_batch_size: int,
    temperature: float,
    seed: int,
) -> DeepFitResult:
    """Train the trainable parameters of ``student`` toward ``teacher`` on ``data`` (the module docstring).

    Parameters
    ----------
    student, teacher : ``transformers`` sequence classifiers (PEFT-wrapped or not), BERT-like encoders
    data : Encoded
        The inputs, tokenised once for both models (:func:`deep_layer_pairs` checked they agree).
    weights : LossWeights
        ``kd`` and the intermediate terms; ``ce`` must be 0 (no labels here).
    mapping : LayerMap
        From :func:`deep_layer_pairs`.
    epochs, lr, batch_size, micro_batch_size, temperature, seed
        As :func:`nebula.learning.training.fit`'s.
    """
    if weights.ce > 0:
        raise ValueError(f"deep_fit distils without labels: weights.ce must be 0, got {weights.ce}")
    n = len(data)
    if n == 0 or epochs == 0:
        return DeepFitResult(0, float("nan"), 0, {})
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(seed)
    step = {"weights": weights, "mapping": mapping, "temperature": temperature}
    step["relation_heads"] = student.config.num_attention_heads
    teacher.eval()
    student.train()
    seen: list[dict[str, float]] = []
    # Seeded inside a fork, as in fit: the student's dropout depends on this seed only.
    with torch.random.fork_rng(devices=[]), _attention_maps(student, teacher, on=weights.attention > 0):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                seen.append(_optimizer_step(student, teacher, opt, data, batch, micro_batch_size, step))
    terms = {name: float(np.mean([s[name] for s in seen])) for name in seen[0] if name != "total"}
    return DeepFitResult(len(seen), float(np.mean([s["total"] for s in seen])), n * epochs, terms)


def _optimizer_step(
    student: nn.Module,
    teacher: nn.Module,
    opt: torch.optim.Optimizer,
    data: Encoded,
    batch: np.ndarray,
    micro_batch_size: int,
    step: dict,
) -> dict[str, float]:
    """One optimizer step on ``batch``: gradients of its micro-batches accumulate, each scaled by its share of
    the batch. Returns the batch's mean loss (``"total"``) and terms."""
    opt.zero_grad(set_to_none=True)
    out: dict[str, float] = {}
    pad = pad_id_of(student)
    for m in range(0, len(batch), micro_batch_size):
        micro = batch[m : m + micro_batch_size]
        share = len(micro) / len(batch)
        ids, mask = collate([data.input_ids[i] for i in micro], pad)  # (b, L) each
        loss = _micro_batch_loss(student, teacher, ids, mask, **step)
        (loss.total * share).backward()
        for name, value in {"total": loss.total.item(), **loss.terms}.items():
            out[name] = out.get(name, 0.0) + value * share
    opt.step()
    return out


def _micro_batch_loss(
    student: nn.Module,
    teacher: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: LossWeights,
    mapping: LayerMap,
    temperature: float,
    relation_heads: int,
) -> DeepLoss:
    """The student's :class:`~nebula.learning.deep_distill.DeepLoss` on ``ids`` / ``mask`` (b, L)."""
    forward = {"output_hidden_states": weights.hidden > 0, "output_attentions": weights.attention > 0}
    qkv = weights.relation > 0
    with torch.no_grad(), capture_qkv(teacher) if qkv else nullcontext() as t_states:
        t_out = teacher(input_ids=ids, attention_mask=mask, **forward)
    with capture_qkv(student) if qkv else nullcontext() as s_states:
        s_out = student(input_ids=ids, attention_mask=mask, **forward)
    return deep_distill_loss(
        s_out,
        t_out,
        weights=weights,
        mapping=mapping,
        temperature=temperature,
        attention_mask=mask,
        student_qkv={k: list(v) for k, v in s_states.items()} if qkv else None,
        teacher_qkv={k: list(v) for k, v in t_states.items()} if qkv else None,
        relation_heads=relation_heads,
    )


@contextmanager
def _attention_maps(student: nn.Module, teacher: nn.Module, *, on: bool) -> Iterator[None]:
    """Where ``on``: both models in ``transformers``' eager attention (the one that returns the maps) and the
    student's attention-probability dropout at 0, restored on exit (the learners are shared per process)."""
    if not on:
        yield
        return
    bases = [m.get_base_model() if hasattr(m, "get_base_model") else m for m in (student, teacher)]
    before = [b.config._attn_implementation for b in bases]
    drops = [
        (module, module.p)
        for name, module in student.named_modules()
        if isinstance(module, nn.Dropout) and name.endswith(("attention.self.dropout", "attention.attn.dropout"))
    ]
    try:
        for base in bases:
            base.set_attn_implementation("eager")
        for module, _ in drops:
            module.p = 0.0
        yield
    finally:
        for base, implementation in zip(bases, before):
            base.set_attn_implementation(implementation)
        for module, p in drops:
            module.p = p
