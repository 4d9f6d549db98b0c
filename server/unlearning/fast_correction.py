"""``fast-correction``: re-aggregate, then a bounded corrective distillation of the current models.

For when replaying every round since the client joined is too slow. After ``reaggregate`` has
cleaned the ledger, the run's current teacher (server/unlearning/models.py: the last request's
states, else the last checkpoint) trains toward the **revised** consensus of the affected rounds
(merged as the teacher node gathers them, later rounds winning), then the global student distills
from the corrected teacher, as in a round. The work is bounded by a :class:`CorrectionBudget`: at
most ``teacher_steps`` optimizer steps for the teacher and ``student_steps`` for the student, one
pass each over ``steps x batch_size`` inputs, with the run's learning rates, temperature and batch
size. The inputs are **targeted**, not drawn at random: those whose consensus the client's removal
changed most, ``KL(before || after)`` of the round's consensus read just before and after the
re-aggregation (held in memory only), i.e. where the client's logits had moved the targets the
teacher learnt. The teacher trains on the first ``teacher_steps x batch_size`` of them toward the
cleaned consensus, the student on the first ``student_steps x batch_size`` toward the corrected
teacher. When that change is not known (a request resumed after the re-aggregation, or a removal
that changed no target), the teacher's own disagreement with the cleaned consensus ranks the
inputs instead (one forward pass over them; :func:`rank_by_divergence` for both rankings).

What it guarantees: the ledger's guarantees of ``reaggregate``, and a teacher and student moved
toward what the cleaned consensus says on the affected inputs, within the budget. It does not
guarantee that they equal a replay or a retrained model: what the client's logits put into their
weights is reduced, not removed; the verification table (``nebula unlearn benchmark``) measures how
far they are from a model retrained without the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nebula.common.probabilities import gather_consensus, softmax
from nebula.server.unlearning import models as store
from nebula.server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from nebula.server.unlearning.reaggregate import ReaggregateMode
from nebula.server.unlearning.registry import register


@dataclass(frozen=True)
class CorrectionBudget:
    """The bound of a fast correction, in optimizer steps (each of ``train.batch_size`` inputs)."""

    teacher_steps: int = 48
    student_steps: int = 24

    def __post_init__(self) -> None:
        for name in ("teacher_steps", "student_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"CorrectionBudget.{name} must be >= 1, got {getattr(self, name)}")


@register
class FastCorrectionMode(UnlearnMode):
    name: ClassVar[str] = "fast-correction"
    summary: ClassVar[str] = (
        "reaggregate, then a bounded corrective distillation of teacher and global student toward the cleaned consensus"
    )
    changes_models: ClassVar[bool] = True

    def __init__(self, budget: CorrectionBudget | None = None) -> None:
        self.budget = budget or CorrectionBudget()

    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run = store.open_run(ctx)
        before = {
            r: ctx.ledger.consensus(run.run_id, r) for r in ctx.ledger.consensus_round_indices(run.run_id)
        }  # in memory only
        ledger_outcome = ReaggregateMode().apply(ctx)
        models = store.resume(run, ctx.request_id) or correct(ctx, run, self.budget, before=before)
        ctx.checkpoint("corrected")
        return UnlearnOutcome(tombstones=ledger_outcome.tombstones, revisions=ledger_outcome.revisions, models=models)


def _kl_rows(targets: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``KL(targets[n] || current[n])`` per row of two ``(N, C)`` probability arrays (floored at 1e-12)."""
    if targets.shape != current.shape or targets.ndim != 2:
        raise ValueError(f"targets {targets.shape} and current {current.shape} must be the same (N, C) shape")
    t = np.clip(targets.astype(np.float64), 1e-12, None)
    q = np.clip(current.astype(np.float64), 1e-12, None)
    return (t * (np.log(t) - np.log(q))).sum(axis=1)  # (N,)


def rank_by_divergence(targets: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Row positions of two ``(N, C)`` probability arrays, the largest ``KL(targets[n] || current[n])``
    first; among equal distances the lower position first."""
    return np.argsort(-_kl_rows(targets, current), kind="stable")


def consensus_change(
    before: dict[int, tuple[np.ndarray, np.ndarray] | None], ids: np.ndarray, after: np.ndarray
) -> np.ndarray | None:
    """Per gathered input ``ids`` ``(M,)`` with cleaned targets ``after`` ``(M, C)``: the target it had
    before the re-aggregation (the latest affected round that held it, as the teacher gathered them),
    as ``(M, C)`` probabilities; None when any input's former target is unknown."""

    old_ids, old = gather_consensus(before[r] for r in sorted(before) if before[r] is not None)
    if old_ids is None or old is None:
        return None
    pos = {int(i): k for k, i in enumerate(old_ids)}
    if any(int(i) not in pos for i in ids) or len(ids) != len(after):
        return None
    return old[[pos[int(i)] for i in ids]]


def correct(
    ctx: UnlearnContext,
    run: store.RunModels,
    budget: CorrectionBudget,
    before: dict[int, tuple[np.ndarray, np.ndarray] | None] | None = None,
) -> dict[str, Any]:
    """The corrective distillation; returns the certificate's ``models`` field. ``before``: each affected
    round's consensus as it was before the re-aggregation (see the module docstring).

    Reads the cleaned consensus and the current states, trains (:func:`_distill`), then writes the
    corrected models and their manifest (:func:`nebula.server.unlearning.models.publish`).
    """
    from nebula.learning.models import load_trainable_state, trainable_state

    affected = store.affected_rounds(ctx, run)
    taught = set(ctx.ledger.consensus_round_indices(run.run_id))
    rounds = [r for r in affected if r in taught]  # a round whose consensus was removed has no target left
    if not affected:
        return store.unchanged(run, FastCorrectionMode.name, ctx.client_id)
    t0, cpu0 = time.perf_counter(), time.process_time()
    before_teacher, before_student, before_dir = store.current_states(run)
    teacher, student, data = store.learners(run)
    load_trainable_state(teacher.model, before_teacher)
    load_trainable_state(student.model, before_student)
    ids, probs = gather_consensus(ctx.ledger.consensus(run.run_id, r) for r in rounds)
    old = None
    if ids is not None and probs is not None:  # else every affected round lost its consensus: nothing to fit
        old = consensus_change(
            {r: before[r] for r in rounds if r in before} if before else {}, ids, probs
        )  # same rounds as ids
    steps, targeting = _distill(teacher, student, data, run.config, budget, ids=ids, probs=probs, old=old)
    manifest = {
        "run_id": run.run_id,
        "after_round": store.last_finished_round(ctx.ledger, run),
        "method": FastCorrectionMode.name,
        "changed": True,
        **store.exactness(run, FastCorrectionMode.name),
        "before": before_dir,
        "output": run.relative(run.request_dir(ctx.request_id)),
        "rounds_corrected": rounds,
        "budget": {"teacher_steps": budget.teacher_steps, "student_steps": budget.student_steps},
        "targeting": targeting,
        "teacher": store.hashes(run.config.model.teacher, before_teacher, trainable_state(teacher.model)),
        "student": store.hashes(run.config.model.student, before_student, trainable_state(student.model)),
        "optimizer_steps": steps,
        "seconds": f"{time.perf_counter() - t0:.3f}",
        "cpu_seconds": f"{time.process_time() - cpu0:.3f}",  # this process's CPU time, all its threads
    }
    return store.publish(run, ctx.request_id, teacher, student, manifest)


def _distill(
    teacher,
    student,
    data,
    config,
    budget: CorrectionBudget,
    *,
    ids: np.ndarray | None,
    probs: np.ndarray | None,
    old: np.ndarray | None,
) -> tuple[dict[str, int], str]:
    """The training steps, under their own seed: the teacher toward the cleaned consensus ``probs`` of
    ``ids`` on the top-ranked inputs, then the student from the corrected teacher. ``old``: the targets
    before the re-aggregation, where known. Returns the optimizer steps per model and the targeting used."""
    import torch

    cfg, max_len, T = config.train, config.data.max_length, config.train.temperature
    seed = config.data.seed * 1000 + 997  # apart from every round's seed (round_seed)
    steps = {"teacher": 0, "student": 0}
    targeting = "none"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if ids is not None and probs is not None:
            targeting, ranking = _rank_inputs(teacher, data, ids, probs, old, max_len=max_len, temperature=T)
            pick = np.sort(ranking[: budget.teacher_steps * cfg.batch_size])
            steps["teacher"] = _one_pass(
                teacher, data.public_texts(ids[pick]), probs[pick], cfg, lr=cfg.teacher_lr, max_len=max_len, seed=seed
            )
            student_ids = ids[np.sort(ranking[: budget.student_steps * cfg.batch_size])]
        else:
            student_ids = np.sort(
                np.random.default_rng(seed).permutation(len(data.public))[: budget.student_steps * cfg.batch_size]
            )
        steps["student"] = _distill_student(
            teacher, student, data.public_texts(student_ids), cfg, max_len=max_len, seed=seed + 1
        )
    return steps, targeting


def _rank_inputs(
    teacher, data, ids: np.ndarray, probs: np.ndarray, old: np.ndarray | None, *, max_len: int, temperature: float
) -> tuple[str, np.ndarray]:
    """The targeting used and the positions of ``ids``, the most worth correcting first: by how much the
    client's removal changed their target, else by the teacher's disagreement with the cleaned consensus."""
    from nebula.learning.training import encode, predict_logits

    if old is not None and not np.array_equal(old, probs):
        return "consensus change", rank_by_divergence(old, probs)  # where the client had moved the targets most, first
    texts = data.public_texts(ids)
    current = softmax(
        predict_logits(teacher.model, encode(teacher.tokenizer, texts, max_length=max_len)), temperature=temperature
    )
    return "teacher disagreement", rank_by_divergence(probs, current)


def _distill_student(teacher, student, texts: list[str], cfg, *, max_len: int, seed: int) -> int:
    """One pass of the student over ``texts`` toward the corrected teacher; returns its optimizer steps."""
    from nebula.learning.training import encode, predict_logits

    corrected = softmax(
        predict_logits(teacher.model, encode(teacher.tokenizer, texts, max_length=max_len)), temperature=cfg.temperature
    )
    return _one_pass(student, texts, corrected, cfg, lr=cfg.lr, max_len=max_len, seed=seed)


def _one_pass(learner, texts: list[str], targets: np.ndarray, cfg, *, lr: float, max_len: int, seed: int) -> int:
    """One epoch of ``learner`` toward ``targets`` on ``texts`` at the run's temperature and batch sizes;
    returns its optimizer steps."""
    from nebula.learning.training import encode, fit

    result = fit(
        learner.model,
        encode(learner.tokenizer, texts, max_length=max_len),
        targets=targets,
        epochs=1,
        temperature=cfg.temperature,
        lr=lr,
        batch_size=cfg.batch_size,
        micro_batch_size=cfg.micro_batch_size,
        seed=seed,
    )
    return result.steps
