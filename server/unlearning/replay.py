"""``exact-replay``: re-aggregate, then retrain the teacher and global student from the last clean checkpoint.

After ``reaggregate`` has cleaned the ledger, the teacher and the global student go back to the
federation's checkpoint of the last round taught before the earliest affected round (the round of
the client's first contribution, or an earlier round another request revised), or to their seeded
initial state when that is round 1. Every later round that still has a consensus is then taught
again, offline, from the ledger's revised consensus, with the teacher node's own round function
(:func:`nebula.learning.distill_step.teach_step`: same gathered targets in the same order, seeds, epochs,
learning rates and temperature, the student distilled on the public pool). No edge client is needed.
A round whose consensus the re-aggregation removed (too few contributions left) is skipped, as the
federation would have skipped it.

The federation's checkpoints are kept; the replayed rounds and the final states are written under
``unlearning/<request_id>/`` (server/unlearning/models.py), and the certificate's ``models`` field
names that folder, the checkpoint restored, the rounds replayed and the state hashes before and after.

What the replay holds fixed: the consensus of the other clients. In the federation they answered
round *r* after digesting the teacher's targets of round *r - 1*, which the forgotten client had
shaped; the ledger keeps their answers as given, so that influence stays (README.md beside this file).
Bitwise: with the same states, consensus and torch threads the replay is bit-identical (tested);
from a real run's ledger the teacher's targets differ by float32 rounding, as the ledger stores the
consensus in float32 and the server sent the teacher the log of its float64 form.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nebula.common.probabilities import merge_consensus, teacher_targets
from nebula.common.run_folder import CHECKPOINT_NAMES, checkpoint_file, round_checkpoint
from nebula.server.exceptions import UnlearningError
from nebula.server.ledger import Ledger
from nebula.server.unlearning import models as store
from nebula.server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from nebula.server.unlearning.reaggregate import ReaggregateMode
from nebula.server.unlearning.registry import register


@register
class ExactReplayMode(UnlearnMode):
    name: ClassVar[str] = "exact-replay"
    summary: ClassVar[str] = (
        "reaggregate, then restore teacher and global student to the checkpoint before the client's first round "
        "and replay every later round from the cleaned ledger"
    )
    changes_models: ClassVar[bool] = True

    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        ledger_outcome = ReaggregateMode().apply(ctx)
        run = store.open_run(ctx)
        models = store.resume(run, ctx.request_id) or replay(ctx, run)
        ctx.checkpoint("replayed")
        return UnlearnOutcome(tombstones=ledger_outcome.tombstones, revisions=ledger_outcome.revisions, models=models)


@dataclass
class Replay:
    """What :func:`replay_rounds` did; ``teacher`` and ``student`` are the learners, holding the replayed states."""

    teacher: Any
    student: Any
    restored_from: str
    rounds: list[int]
    steps: dict[str, int]


def replay_rounds(
    ledger: Ledger,
    run: store.RunModels,
    *,
    first_round: int,
    out: Path,
    on_round: Callable[[int], None] = lambda r: None,
) -> Replay:
    """Restore the models of the last round taught before ``first_round`` and teach every stored round
    from ``first_round`` on again from the ledger's consensus, each round's states written to
    ``out/round-NNN/{teacher,student}.pt``. With nothing removed, this reproduces the run's own
    checkpoints (tests/server/unlearning/test_model_modes.py)."""
    from nebula.learning.distill_step import teach_step
    from nebula.learning.models import load_trainable_state, trainable_state

    teacher, student, data = store.learners(run)
    taught = ledger.consensus_round_indices(run.run_id)
    earlier = [r for r in taught if r < first_round]
    if earlier:
        restore = run.checkpoint(earlier[-1])
        if not checkpoint_file(restore, CHECKPOINT_NAMES[0]).is_file():
            raise UnlearningError(
                f"run {run.run_id}: round {earlier[-1]} was taught but {restore} holds no checkpoint to restore"
            )
        teacher_state, student_state = store.load_states(restore)
        restored_from = run.relative(restore)
    else:
        teacher_state, student_state = teacher.init_state, student.init_state
        restored_from = f"initial state (seed {run.config.data.seed})"
    load_trainable_state(teacher.model, teacher_state)
    load_trainable_state(student.model, student_state)
    ids: np.ndarray | None = None
    probs: np.ndarray | None = None
    result = Replay(teacher, student, restored_from, [], {"teacher": 0, "student": 0})
    for r in taught:
        round_ids, consensus = ledger.consensus(run.run_id, r)
        ids, probs = merge_consensus(ids, probs, round_ids, teacher_targets(consensus))
        if r < first_round:
            continue  # taught before the restored checkpoint: only its targets are gathered again
        step = teach_step(
            teacher,
            student,
            data,
            run.config,
            gathered_ids=ids,
            gathered_probs=probs,
            round_ids=round_ids,
            round_index=r,
        )
        store.save_states(round_checkpoint(out, r), trainable_state(teacher.model), trainable_state(student.model))
        result.rounds.append(r)
        result.steps["teacher"] += step.teacher_fit.steps
        result.steps["student"] += step.student_fit.steps
        on_round(r)
    return result


def replay(ctx: UnlearnContext, run: store.RunModels) -> dict[str, Any]:
    """Restore and replay ``run`` as the module docstring says; returns the certificate's ``models`` field."""
    from nebula.learning.models import trainable_state

    affected = store.affected_rounds(ctx, run)
    if not affected:
        return store.unchanged(run, ExactReplayMode.name, ctx.client_id)
    t0, cpu0 = time.perf_counter(), time.process_time()
    before_teacher, before_student, before = store.current_states(run)
    done = replay_rounds(
        ctx.ledger,
        run,
        first_round=affected[0],
        out=run.paths.request_checkpoints(ctx.request_id),
        on_round=lambda r: ctx.checkpoint(f"replayed round {r}"),
    )
    manifest = {
        "run_id": run.run_id,
        "after_round": store.last_finished_round(ctx.ledger, run),
        "method": ExactReplayMode.name,
        "changed": True,
        "before": before,
        "output": run.relative(run.request_dir(ctx.request_id)),
        "restored_from": done.restored_from,
        "rounds_replayed": done.rounds,
        "teacher": store.hashes(run.config.model.teacher, before_teacher, trainable_state(done.teacher.model)),
        "student": store.hashes(run.config.model.student, before_student, trainable_state(done.student.model)),
        "optimizer_steps": done.steps,
        "seconds": f"{time.perf_counter() - t0:.3f}",
        "cpu_seconds": f"{time.process_time() - cpu0:.3f}",  # this process's CPU time, all its threads
        **store.exactness(run, ExactReplayMode.name),
    }
    return store.publish(run, ctx.request_id, done.teacher, done.student, manifest)
