"""The teacher node: distills the clients' consensus, refines targets, keeps a global student.

Each round the teacher
1. adds the round's consensus (probabilities on public inputs) to everything it has seen,
2. trains its own LoRA toward all consensus targets gathered so far (KL at T),
3. answers refined targets: its own logits on this round's public inputs,
4. distills the global student (same architecture as the edge students) from its own
   predictions on the whole public pool (``train.student_inputs = "pool"``: the pool is
   public and unlabeled, so the teacher may label all of it) or on the inputs seen so far,
5. evaluates teacher and student on the global test set and checkpoints both adapters.

Steps 2-4 are :func:`nebula.learning.distill_step.teach_step`, which unlearning's exact replay runs
offline from the ledger (server/unlearning/replay.py); this class adds the node's state
(``context.state``), evaluation and checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import build_federation_data
from nebula.common.metrics import scores
from nebula.common.probabilities import merge_consensus, softmax
from nebula.common.run_folder import RunFolder, adapter_dirs
from nebula.common.wire import decode_logits, encode_logits
from nebula.learning.distill_step import teach_step
from nebula.learning.models import (
    Learner,
    learner_for,
    load_checkpoint,
    load_trainable_state,
    save_adapter,
    save_checkpoint,
    trainable_state,
)
from nebula.learning.training import encode, predict_logits

TEACHER_KEY, STUDENT_KEY, CONSENSUS_KEY = "teacher-adapter", "student-adapter", "consensus"


@dataclass(frozen=True)
class TeachAnswer:
    """What the teacher answers for a round."""

    refined: bytes  # wire-format logits on the round's public inputs: the next round's targets
    metrics: dict[str, float]
    student_state: dict[str, torch.Tensor]  # the global student's trainable state
    checkpoint: str  # the checkpoint folder it wrote, relative to the run folder


class TeacherNode:
    def __init__(self, config: NebulaConfig, context: Context) -> None:
        self.config, self.context = config, context
        self.data = build_federation_data(config.data)
        self.teacher = self._restore(config.model.teacher, TEACHER_KEY)
        self.student = self._restore(config.model.student, STUDENT_KEY)

    def _restore(self, model_name: str, key: str) -> Learner:
        learner = learner_for(self.config, model_name, self.data.num_classes)
        state = self.context.state.get(key)
        load_trainable_state(learner.model, state.to_torch_state_dict() if state is not None else learner.init_state)
        return learner

    def describe(self) -> dict:
        return {"model": self.config.model.teacher, "num_examples": 0, "label_counts": [0] * self.data.num_classes}

    def _gathered(self, ids: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Merge this round's consensus into all earlier ones (a re-sent id is replaced)."""
        rec = self.context.state.get(CONSENSUS_KEY)
        old = (rec["ids"].numpy(), rec["probs"].numpy()) if rec is not None else (None, None)
        ids, probs = merge_consensus(*old, ids, probs)
        self.context.state[CONSENSUS_KEY] = ArrayRecord({"ids": Array(ids), "probs": Array(probs)})
        return ids, probs

    def teach(self, *, round_index: int, consensus: bytes, output_dir: Path) -> TeachAnswer:
        """Train on the round's consensus, checkpoint, answer: see :class:`TeachAnswer`."""
        cfg, t0, cpu0 = self.config, time.perf_counter(), time.process_time()
        decoded = decode_logits(consensus, num_classes=self.data.num_classes)
        if len(decoded.ids) and (decoded.ids.min() < 0 or decoded.ids.max() >= len(self.data.public)):
            raise ValueError(f"consensus ids outside the public pool 0..{len(self.data.public) - 1}")
        # The consensus travels as log-probabilities: softmax at T=1 recovers it exactly.
        round_probs = softmax(decoded.logits)
        ids, probs = self._gathered(decoded.ids, round_probs)
        step = teach_step(
            self.teacher,
            self.student,
            self.data,
            cfg,
            gathered_ids=ids,
            gathered_probs=probs,
            round_ids=decoded.ids,
            round_index=round_index,
        )
        refined = step.refined
        compute = time.process_time() - cpu0  # the round's training in CPU seconds, evaluation not counted
        metrics = self.evaluate()
        metrics["consensus_size"] = float(len(ids))
        self.context.state[TEACHER_KEY] = ArrayRecord(torch_state_dict=trainable_state(self.teacher.model))
        self.context.state[STUDENT_KEY] = ArrayRecord(torch_state_dict=trainable_state(self.student.model))
        folder = RunFolder(output_dir)
        cpu1 = time.process_time()
        self.checkpoint(folder.checkpoint(round_index))
        metrics["compute_seconds"] = compute + time.process_time() - cpu1
        metrics["seconds"] = time.perf_counter() - t0
        refined_blob = encode_logits(decoded.ids, refined, dtype=cfg.federation.wire_dtype)
        return TeachAnswer(
            refined_blob, metrics, trainable_state(self.student.model), folder.relative(folder.checkpoint(round_index))
        )

    def restore(
        self, *, round_index: int, gathered: bytes | None, output_dir: Path, states_dir: str = "", keep: bool = False
    ) -> dict[str, torch.Tensor]:
        """After a server restart or an unlearning request: load round ``round_index``'s checkpoint (0: the
        initial states), or the states in ``output_dir / states_dir`` (an unlearning request's), or keep the
        current ones (``keep``), and the consensus gathered so far (wire-format log-probabilities, replacing
        what this node had gathered); returns the global student's state."""
        current = {"teacher": trainable_state(self.teacher.model), "student": trainable_state(self.student.model)}
        states = current if keep else {"teacher": self.teacher.init_state, "student": self.student.init_state}
        folder = None
        if states_dir and not keep:
            folder = output_dir / states_dir
        elif round_index and not keep:
            folder = RunFolder(output_dir).checkpoint(round_index)
        if folder is not None:
            try:
                states["teacher"], states["student"] = load_checkpoint(folder)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc} on this teacher node to restore") from exc
        load_trainable_state(self.teacher.model, states["teacher"])
        load_trainable_state(self.student.model, states["student"])
        self.context.state[TEACHER_KEY] = ArrayRecord(torch_state_dict=trainable_state(self.teacher.model))
        self.context.state[STUDENT_KEY] = ArrayRecord(torch_state_dict=trainable_state(self.student.model))
        self.context.state.pop(CONSENSUS_KEY, None)
        if gathered is not None:
            decoded = decode_logits(gathered, num_classes=self.data.num_classes)
            self._gathered(decoded.ids, softmax(decoded.logits))
        return trainable_state(self.student.model)

    def answer(self, ids: np.ndarray) -> bytes:
        """The teacher's logits on public inputs ``ids`` ``(N,)``, wire format: the next round's targets
        when the teacher's states changed between rounds (a live unlearning request)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.data.public)):
            raise ValueError(f"query ids outside the public pool 0..{len(self.data.public) - 1}")
        enc = encode(self.teacher.tokenizer, self.data.public_texts(ids), max_length=self.config.data.max_length)
        return encode_logits(ids, predict_logits(self.teacher.model, enc), dtype=self.config.federation.wire_dtype)

    def evaluate(self) -> dict[str, float]:
        test, labels, max_len = self.data.test, self.data.labels(self.data.test), self.config.data.max_length
        out = {}
        for name, learner in (("teacher", self.teacher), ("student", self.student)):
            enc = encode(learner.tokenizer, self.data.texts(test), max_length=max_len)
            acc, f1, share = scores(predict_logits(learner.model, enc), labels)
            out |= {f"acc_{name}": acc, f"f1_{name}": f1, f"top_share_{name}": share}
        return out

    def checkpoint(self, folder: Path) -> None:
        """Trainable states of teacher and student (small: LoRA + head), for resume and replay."""
        save_checkpoint(folder, trainable_state(self.teacher.model), trainable_state(self.student.model))

    def save(self, folder: Path) -> None:
        """Both adapters into a models folder (``RunFolder.models``): ``teacher/`` and ``global-student/``."""
        teacher_dir, student_dir = adapter_dirs(folder)
        names = self.data.dataset.label_names
        save_adapter(self.teacher, teacher_dir, label_names=names, config=self.config, role="teacher")
        save_adapter(self.student, student_dir, label_names=names, config=self.config, role="global-student")
