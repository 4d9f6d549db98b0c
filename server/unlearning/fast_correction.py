"""``fast-correction``: re-aggregate, then a bounded corrective distillation of the current models.

For when replaying every round since the client joined is too slow. After ``reaggregate`` has
cleaned the ledger, the run's current teacher (server/unlearning/models.py: the last request's
states, else the last checkpoint) trains toward the **revised** consensus of the affected rounds
(merged as the teacher node gathers them, later rounds winning), then the global student distills
from the corrected teacher on the public pool, as in a round. The work is bounded by a
:class:`CorrectionBudget`: at most ``teacher_steps`` optimizer steps for the teacher and
``student_steps`` for the student (one pass over a seeded random subset of ``steps x batch_size``
inputs each), with the run's learning rates, temperature and batch size.

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

from server.unlearning import models as store
from server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from server.unlearning.reaggregate import ReaggregateMode
from server.unlearning.registry import register


@dataclass(frozen=True)
class CorrectionBudget:
    """The bound of a fast correction, in optimizer steps (each of ``train.batch_size`` inputs)."""

    teacher_steps: int = 32
    student_steps: int = 16

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
        ledger_outcome = ReaggregateMode().apply(ctx)
        run = store.open_run(ctx)
        models = store.resume(run, ctx.request_id) or correct(ctx, run, self.budget)
        ctx.checkpoint("corrected")
        return UnlearnOutcome(tombstones=ledger_outcome.tombstones, revisions=ledger_outcome.revisions, models=models)


def correction_subset(n: int, *, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Positions of at most ``steps * batch_size`` of ``n`` inputs, a seeded random choice: one pass
    over them takes at most ``steps`` optimizer steps."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: steps * batch_size])


def correct(ctx: UnlearnContext, run: store.RunModels, budget: CorrectionBudget) -> dict[str, Any]:
    """The corrective distillation; returns the certificate's ``models`` field."""
    import torch

    from client.teacher_step import merge_consensus, teacher_targets
    from common.models import load_trainable_state, trainable_state
    from common.training import encode, fit, predict_logits, softmax_np

    affected = store.affected_rounds(ctx, run)
    taught = set(ctx.ledger.consensus_round_indices(run.run_id))
    rounds = [r for r in affected if r in taught]  # a round whose consensus was removed has no target left
    if not affected:
        return store.unchanged(run, FastCorrectionMode.name, ctx.client_id)
    t0 = time.perf_counter()
    before_teacher, before_student, before = store.current_states(run)
    teacher, student, data = store.learners(run)
    load_trainable_state(teacher.model, before_teacher)
    load_trainable_state(student.model, before_student)
    cfg, max_len = run.config.train, run.config.data.max_length
    seed = run.config.data.seed * 1000 + 997  # apart from every round's seed (round_seed)
    steps = {"teacher": 0, "student": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids: np.ndarray | None = None
        probs: np.ndarray | None = None
        for r in rounds:
            round_ids, consensus = ctx.ledger.consensus(run.run_id, r)
            ids, probs = merge_consensus(ids, probs, round_ids, teacher_targets(consensus))
        if ids is not None and probs is not None:
            pick = correction_subset(len(ids), steps=budget.teacher_steps, batch_size=cfg.batch_size, seed=seed)
            result = fit(
                teacher.model, encode(teacher.tokenizer, data.public_texts(ids[pick]), max_length=max_len), targets=probs[pick],
                epochs=1, temperature=cfg.temperature, lr=cfg.teacher_lr, batch_size=cfg.batch_size,
                micro_batch_size=cfg.micro_batch_size, seed=seed,
            )
            steps["teacher"] = result.steps
        pool = correction_subset(len(data.public), steps=budget.student_steps, batch_size=cfg.batch_size, seed=seed + 1)
        texts = data.public_texts(pool)
        teacher_logits = predict_logits(teacher.model, encode(teacher.tokenizer, texts, max_length=max_len))  # (S, C)
        result = fit(
            student.model, encode(student.tokenizer, texts, max_length=max_len),
            targets=softmax_np(teacher_logits, temperature=cfg.temperature), epochs=1, temperature=cfg.temperature,
            lr=cfg.lr, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, seed=seed + 1,
        )
        steps["student"] = result.steps
    manifest = {
        "run_id": run.run_id, "method": FastCorrectionMode.name, "changed": True, "before": before,
        "output": run.relative(run.request_dir(ctx.request_id)), "rounds_corrected": rounds,
        "budget": {"teacher_steps": budget.teacher_steps, "student_steps": budget.student_steps},
        "teacher": store.hashes(run.config.model.teacher, before_teacher, trainable_state(teacher.model)),
        "student": store.hashes(run.config.model.student, before_student, trainable_state(student.model)),
        "optimizer_steps": steps, "seconds": f"{time.perf_counter() - t0:.3f}",
    }
    return store.publish(run, ctx.request_id, teacher, student, manifest)
