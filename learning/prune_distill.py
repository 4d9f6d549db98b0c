"""Prune, then recover by distillation: a merged classifier made smaller and taught back its own outputs.

On unlabelled texts ``X`` (tokenised, :class:`~nebula.learning.training.Encoded`):

1. the unpruned model's logits ``t = f(X)`` (N, C) are kept: it is the teacher;
2. every head and FFN neuron is scored with the label-free ``magnitude`` criterion of
   :func:`nebula.learning.pruning.importance`, batch by batch; a unit's score over all texts is the mean of its
   batch scores weighted by their real-token counts (each batch score is a mean over real tokens, so this is the
   mean over all real tokens);
3. :func:`~nebula.learning.pruning.plan_for` turns the scores and a :class:`~nebula.learning.prune_spec.PruneSpec`
   into a plan, and :func:`~nebula.learning.pruning.prune` applies it to the model in place: the student;
4. recovery: ``epochs`` passes of :func:`~nebula.learning.training.fit` on ``X`` with the soft targets
   ``q = softmax(t / T)``, i.e. the loss of :func:`~nebula.learning.losses.kd_kl_loss`,

   .. math:: L = T^2 \\, \\mathrm{KL}(q \\,\\|\\, \\mathrm{softmax}(s / T)),

   ``s`` the pruned model's logits (B, C). Every parameter trains except the embeddings: the texts are few against
   a vocabulary of tens of thousands of rows, and the embedding table is what vocabulary pruning cuts after.

How far the student is from the teacher is measured as ``KL(softmax(t) || softmax(s))`` (T = 1), mean over the
texts, before and after recovery (:class:`PruneResult`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from nebula.learning.losses import kd_kl_loss, soft_targets
from nebula.learning.prune_spec import PruneSpec
from nebula.learning.pruning import Importance, PruningPlan, bert_layers, importance, plan_for, prune
from nebula.learning.training import Encoded, collate, fit, pad_id_of, predict_logits

TEMPERATURE = 2.0  # of the recovery's soft targets: softer than the logits, the usual range of Hinton et al.
BATCH_SIZE = 16


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_and_recover` did: the plan, the sizes, the recovery and the distance to the teacher."""

    spec: str
    plan: PruningPlan
    texts: int
    heads_before: int  # per layer
    neurons_before: int  # per layer
    parameters_before: int
    parameters_after: int
    recovery_epochs: int
    recovery_steps: int
    recovery_lr: float
    temperature: float
    kl_before: float  # KL(teacher || pruned) at T = 1, mean over the texts, before recovery
    kl_after: float  # the same after recovery (= kl_before without recovery)

    def to_dict(self) -> dict:
        """JSON-ready, with a per-layer summary of what was kept beside the plan's indices."""
        plan = self.plan
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("plan", "heads_before", "neurons_before")},
            "kept": {
                "layers": list(plan.layers),
                "of_layers": plan.original_layers,
                "heads_per_layer": [len(plan.heads[i]) for i in plan.layers],
                "of_heads": self.heads_before,
                "neurons_per_layer": [len(plan.neurons[i]) for i in plan.layers],
                "of_neurons": self.neurons_before,
            },
            "plan": asdict(plan),
        }


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def importance_over(model: torch.nn.Module, data: Encoded, *, batch_size: int = 32) -> Importance:
    """``magnitude`` scores of ``model``'s heads and neurons over all of ``data``: the real-token-weighted mean of
    :func:`~nebula.learning.pruning.importance` on length-sorted batches (little padding)."""
    if len(data) == 0:
        raise ValueError("importance needs at least one text")
    order = np.argsort([len(r) for r in data.input_ids], kind="stable")
    heads, neurons, total = None, None, 0
    for start in range(0, len(order), batch_size):
        ids, mask = collate([data.input_ids[i] for i in order[start : start + batch_size]], pad_id_of(model))
        scores, tokens = importance(model, ids, mask), int(mask.sum())  # (layers, H), (layers, I); real tokens
        heads = scores.heads * tokens if heads is None else heads + scores.heads * tokens
        neurons = scores.neurons * tokens if neurons is None else neurons + scores.neurons * tokens
        total += tokens
    return Importance(heads / total, neurons / total)


def kl_to_teacher(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """``KL(softmax(t) || softmax(s))`` at T = 1, mean over the rows of the (N, C) logits (:func:`kd_kl_loss`)."""
    s, t = torch.from_numpy(student_logits), torch.from_numpy(teacher_logits)
    return float(kd_kl_loss(s, soft_targets(t, temperature=1.0), temperature=1.0))


def recover(
    model: torch.nn.Module,
    data: Encoded,
    teacher_logits: np.ndarray,
    *,
    epochs: int,
    lr: float,
    temperature: float = TEMPERATURE,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> int:
    """Distil ``model`` towards ``teacher_logits`` (N, C) on ``data`` for ``epochs`` (module docstring, step 4);
    returns the optimizer steps taken. The model ends in eval mode with no trainable parameter."""
    if epochs < 0:
        raise ValueError(f"recovery epochs must be >= 0, got {epochs}")
    targets = soft_targets(torch.from_numpy(teacher_logits), temperature=temperature).numpy()  # (N, C)
    model.requires_grad_(True)
    model.base_model.embeddings.requires_grad_(False)
    try:
        done = fit(model, data, targets=targets, temperature=temperature, epochs=epochs, lr=lr,
                   batch_size=batch_size, micro_batch_size=batch_size, seed=seed)  # fmt: skip
    finally:
        model.eval()
        model.requires_grad_(False)
    return done.steps


def prune_and_recover(
    model: torch.nn.Module,
    data: Encoded,
    spec: PruneSpec,
    *,
    recover_epochs: int,
    lr: float,
    temperature: float = TEMPERATURE,
    seed: int = 0,
) -> PruneResult:
    """Prune ``model`` in place by ``spec`` and recover it by distillation from itself before pruning, all on the
    unlabelled ``data`` (module docstring).

    Raises
    ------
    ValueError
        ``model`` is not a BERT-family encoder, ``spec`` keeps more layers than it has, or ``data`` is empty.
    """
    if len(data) == 0:
        raise ValueError("structured pruning needs at least one text to score and recover on")
    layers = bert_layers(model)  # refuses a model of another family before any work, as does the spec's check
    heads, neurons = layers[0].attention.self.num_attention_heads, layers[0].intermediate.dense.out_features
    spec.counts(layers=len(layers), heads=heads, neurons=neurons)
    teacher = predict_logits(model, data)  # (N, C), before anything is cut
    before = parameter_count(model)
    scores = importance_over(model, data)
    plan = plan_for(scores, spec)
    prune(model, plan).eval().requires_grad_(False)  # prune_linear_layer makes the new linears trainable
    kl_before = kl_to_teacher(predict_logits(model, data), teacher)
    steps = 0
    if recover_epochs > 0:
        steps = recover(model, data, teacher, epochs=recover_epochs, lr=lr, temperature=temperature, seed=seed)
    kl_after = kl_to_teacher(predict_logits(model, data), teacher) if steps else kl_before
    return PruneResult(
        spec=str(spec), plan=plan, texts=len(data), heads_before=heads, neurons_before=neurons,
        parameters_before=before, parameters_after=parameter_count(model), recovery_epochs=recover_epochs,
        recovery_steps=steps, recovery_lr=lr, temperature=temperature, kl_before=kl_before, kl_after=kl_after,
    )  # fmt: skip
