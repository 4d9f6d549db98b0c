"""One round of the teacher node as a function: what :class:`nebula.client.teacher.TeacherNode` runs each
round, and what unlearning's exact replay (server/unlearning/replay.py) runs offline from the ledger.

A round, given every consensus target gathered so far (``gathered_ids``, ``gathered_probs``) and
the ids of this round's public inputs:

1. the teacher trains its LoRA ``train.teacher_epochs`` epochs toward all gathered targets (KL at T),
2. it labels the student's inputs (the whole public pool, ``train.student_inputs = "pool"``, or the
   gathered ids) and answers its logits on this round's inputs as the refined targets,
3. the global student distills ``train.student_epochs`` epochs from the teacher's ``softmax(z / T)``: with
   :func:`~nebula.learning.training.fit` on the logits alone while ``train.student_hidden_weight``,
   ``student_attention_weight`` and ``student_relation_weight`` are all 0 (the default), else with
   :func:`~nebula.learning.deep_fit.deep_fit`, which adds those intermediate-layer terms (teacher and student
   must then share a tokenizer: checked, with the rest of what the terms need, before anything trains).
   ``train.student_phases`` orders those terms over the rounds as :class:`~nebula.learning.schedule.DistillSchedule`
   orders them over epochs (one round is one of its epochs): a warm-up round trains the intermediate-layer terms
   alone, a fine-tune round the logits alone (plain ``fit``), the rounds between both (:func:`student_weights`).

**Deterministic.** The data order of each fit comes from :func:`round_seed`, and the torch random
state (dropout of the base model in train mode) is seeded from the same number inside a forked RNG,
so the same inputs, states and thread count give bit-identical states, in any process, whatever ran
in it before (a Ray worker shares its process with other virtual nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.probabilities import softmax
from nebula.learning.deep_fit import deep_fit, deep_layer_pairs
from nebula.learning.deep_losses import LayerMap
from nebula.learning.models import Learner
from nebula.learning.schedule import DistillSchedule, LossWeights
from nebula.learning.training import Encoded, FitResult, encode, fit, predict_logits


@dataclass(frozen=True)
class TeachResult:
    refined: np.ndarray  # (N_round, C) float32: the teacher's logits on this round's inputs
    teacher_fit: FitResult
    student_fit: FitResult


def round_seed(config: NebulaConfig, round_index: int) -> int:
    """Seed of round ``round_index``'s teacher fit; the student's is this plus one."""
    return config.data.seed * 1000 + round_index


def teach_step(
    teacher: Learner,
    student: Learner,
    data: FederationData,
    config: NebulaConfig,
    *,
    gathered_ids: np.ndarray,
    gathered_probs: np.ndarray,
    round_ids: np.ndarray,
    round_index: int,
) -> TeachResult:
    """Train ``teacher`` and ``student`` in place for one round; see the module docstring.

    Parameters
    ----------
    gathered_ids : (M,) int64 public-pool ids of every consensus target gathered so far.
    gathered_probs : (M, C) float32 target probabilities, row ``m`` for ``gathered_ids[m]``.
    round_ids : (N,) this round's public inputs; each must be in ``gathered_ids`` (pool mode) or
        among the student's inputs.
    round_index : the round (from 1): its seed (:func:`round_seed`) and the student's phase.
    """
    cfg, seed = config.train, round_seed(config, round_index)
    T, max_len = cfg.temperature, config.data.max_length
    student_ids = np.arange(len(data.public)) if cfg.student_inputs == "pool" else gathered_ids
    texts = data.public_texts(student_ids)
    enc_teacher, enc_student = (encode(x.tokenizer, texts, max_length=max_len) for x in (teacher, student))
    deep = _deep_plan(teacher, student, enc_teacher, enc_student, config)  # raises before anything trains
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc_all = encode(teacher.tokenizer, data.public_texts(gathered_ids), max_length=max_len)
        teacher_fit = fit(
            teacher.model,
            enc_all,
            targets=gathered_probs,
            epochs=cfg.teacher_epochs,
            temperature=T,
            lr=cfg.teacher_lr,
            batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size,
            seed=seed,
        )
        teacher_logits = predict_logits(teacher.model, enc_teacher)  # (S, C)
        pos = {int(i): k for k, i in enumerate(student_ids)}
        refined = teacher_logits[[pos[int(i)] for i in round_ids]]  # (N_round, C)
        fit_args = dict(
            epochs=cfg.student_epochs,
            temperature=T,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size,
            seed=seed + 1,
        )
        weights = student_weights(config, round_index)
        if deep is None or weights is None:
            student_fit = fit(student.model, enc_student, targets=softmax(teacher_logits, temperature=T), **fit_args)
        else:
            student_fit = deep_fit(
                student.model, teacher.model, enc_student, weights=weights, mapping=deep[1], **fit_args
            )
    return TeachResult(refined, teacher_fit, student_fit)


def student_weights(config: NebulaConfig, round_index: int) -> LossWeights | None:
    """The global student's loss weights in round ``round_index`` (from 1), or None for the logits alone: the
    round's phase of ``train.student_phases`` (module docstring, 3); a round past ``federation.rounds`` (a resumed
    run given more) is a fine-tune round if there is one, else a distill round."""
    deep = config.train.deep_student_weights()
    if not any(w > 0 for w in deep.values()):
        return None
    warmup, finetune = config.train.student_phase_rounds()
    rounds = max(config.federation.rounds, warmup + finetune)
    schedule = DistillSchedule(
        warmup_epochs=warmup,
        distill_epochs=rounds - warmup - finetune,
        finetune_epochs=finetune,
        warmup=LossWeights(kd=0.0, **deep) if warmup else LossWeights(),
        distill=LossWeights(kd=1.0, **deep),
        finetune=LossWeights(kd=1.0),
    )
    weights = schedule.weights_at(min(max(round_index, 1), schedule.total_epochs) - 1)
    return None if weights.active() == ("kd",) else weights


def _deep_plan(
    teacher: Learner, student: Learner, enc_teacher: Encoded, enc_student: Encoded, config: NebulaConfig
) -> tuple[LossWeights, LayerMap] | None:
    """The student's loss weights and layer map where ``train`` weighs an intermediate-layer term, else None
    (the logits-only :func:`~nebula.learning.training.fit`). ValueError where the two learners cannot support
    the terms (:func:`~nebula.learning.deep_fit.deep_layer_pairs`)."""
    deep = config.train.deep_student_weights()
    if not any(w > 0 for w in deep.values()):
        return None
    weights = LossWeights(kd=1.0, **deep)
    kind = config.train.layer_map_kind()
    return weights, deep_layer_pairs(teacher, student, enc_teacher, enc_student, weights=weights, kind=kind)
