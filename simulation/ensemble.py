"""The global student of a sharded federation (simulation/sharded.py): distilled from the shard teachers' ensemble.

The ensemble's target for a public input is the mean of the shard teachers' ``softmax(z / T)``
(:func:`ensemble_targets`). The student starts from the seeded initial state every global student starts from
(learning/models.py, ``learner_for``) and distils on the whole public pool for ``federation.rounds x
train.student_epochs`` epochs (the passes the collaborative loop's global student makes over the pool) with
learning/training.py's :func:`~nebula.learning.training.fit`, seed ``data.seed``, and the teacher node's torch
thread count: the same teachers give the same student, bit for bit. It is saved as every global student is
(``save_adapter``, role ``global-student``), with its trainable state beside it in ``student.pt``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.metrics import scores
from nebula.common.probabilities import softmax
from nebula.common.run_folder import RunFolder

STUDENT_STATE = "student.pt"


def ensemble_targets(logits: Sequence[np.ndarray], *, temperature: float) -> np.ndarray:
    """The shard teachers' ensemble: ``mean_s softmax(z_s / T)``, shape ``(N, C)`` from S arrays ``(N, C)``."""
    if not logits:
        raise ValueError("no shard teacher to distil from: every shard is empty")
    return np.mean([softmax(np.asarray(z, dtype=np.float64), temperature=temperature) for z in logits], axis=0)


def teacher_state(folder: Path) -> dict:
    """A shard's teacher now: the trainable state of its run's last checkpoint."""
    from nebula.learning.models import load_checkpoint

    run = RunFolder(folder)
    rounds = run.checkpoint_rounds()
    if not rounds:
        raise ValueError(f"{run.checkpoints} holds no checkpoint: shard run {folder} did not finish")
    return load_checkpoint(run.checkpoint(rounds[-1]))[0]


def teacher_logits(
    config: NebulaConfig, folders: Sequence[Path], texts: dict[str, list[str]], num_classes: int
) -> dict[str, list[np.ndarray]]:
    """``{set name: [(N, C) logits of each shard teacher]}`` on each set of ``texts``."""
    from nebula.learning.models import learner_for, load_trainable_state
    from nebula.learning.training import encode, predict_logits

    teacher = learner_for(config, config.model.teacher, num_classes)
    encoded = {name: encode(teacher.tokenizer, t, max_length=config.data.max_length) for name, t in texts.items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in texts}
    for folder in folders:
        load_trainable_state(teacher.model, teacher_state(folder))
        for name, enc in encoded.items():
            out[name].append(predict_logits(teacher.model, enc))
    load_trainable_state(teacher.model, teacher.init_state)  # the learner is this process's shared copy
    return out


def distil_global_student(config: NebulaConfig, shard_folders: Sequence[Path], out: Path) -> dict:
    """Distil the global student from the shard teachers' ensemble into ``out`` (an adapter folder with
    ``student.pt``); returns the figures on the global test set (accuracies as fractions)."""
    import torch

    from nebula.common.federation_data import build_federation_data
    from nebula.learning.models import learner_for, load_trainable_state, save_adapter, trainable_state
    from nebula.learning.training import encode, fit, predict_logits, torch_threads

    t0, cpu0, data, cfg = time.perf_counter(), time.process_time(), build_federation_data(config.data), config.train
    labels = data.labels(data.test)
    with torch_threads(cfg.teacher_threads or os.cpu_count() or 1):
        pool_texts = data.public_texts(np.arange(len(data.public)))
        logits = teacher_logits(
            config, shard_folders, {"pool": pool_texts, "test": data.texts(data.test)}, data.num_classes
        )
        on_pool, on_test = logits["pool"], logits["test"]
        targets = ensemble_targets(on_pool, temperature=cfg.temperature).astype(np.float32)  # (N_pool, C)
        student = learner_for(config, config.model.student, data.num_classes)
        load_trainable_state(student.model, student.init_state)
        max_len = config.data.max_length
        pool = encode(student.tokenizer, pool_texts, max_length=max_len)
        epochs = config.federation.rounds * cfg.student_epochs
        fit(
            student.model,
            pool,
            targets=targets,
            epochs=epochs,
            temperature=cfg.temperature,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size,
            seed=config.data.seed,
        )
        test_logits = predict_logits(
            student.model, encode(student.tokenizer, data.texts(data.test), max_length=max_len)
        )
    acc, f1, share = scores(test_logits, labels)
    per_teacher = [scores(z, labels) for z in on_test]  # (acc, f1, top share) of each shard teacher
    figures = {
        "student_acc": acc,
        "student_f1": f1,
        "student_top_share": share,
        "ensemble_acc": scores(ensemble_targets(on_test, temperature=1.0), labels)[0],
        "teacher_accs": [acc for acc, _, _ in per_teacher],
        "teacher_top_shares": [share for _, _, share in per_teacher],
        "distil_epochs": epochs,
    }
    note = f"Distilled from the ensemble of {len(shard_folders)} shard teachers ({config.federation.isolation})."
    save_adapter(student, out, label_names=data.dataset.label_names, config=config, role="global-student", note=note)
    torch.save(trainable_state(student.model), out / STUDENT_STATE)
    # cpu_seconds: this process's CPU time for all of it (the shard teachers' answers on the test set included)
    return figures | {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0}


def load_global_student(folder: Path) -> dict:
    """The trainable state a :func:`distil_global_student` folder holds."""
    import torch

    return torch.load(Path(folder) / STUDENT_STATE, map_location="cpu", weights_only=True)


def predict(
    config: NebulaConfig, shard_folders: Sequence[Path], student_dir: Path, texts: list[str]
) -> dict[str, np.ndarray]:
    """Answers on ``texts``: ``teacher`` the ensemble of the shard teachers in ``shard_folders``, ``(N, C)``
    probabilities; ``student`` the logits ``(N, C)`` of the global student in ``student_dir``."""
    from nebula.common.federation_data import build_federation_data
    from nebula.learning.models import learner_for, load_trainable_state
    from nebula.learning.training import encode, predict_logits, torch_threads

    num_classes = build_federation_data(config.data).num_classes
    with torch_threads(config.train.teacher_threads or os.cpu_count() or 1):
        each = teacher_logits(config, shard_folders, {"texts": texts}, num_classes)["texts"]  # S x (N, C)
        ensemble = ensemble_targets(each, temperature=1.0)  # (N, C)
        student = learner_for(config, config.model.student, num_classes)
        load_trainable_state(student.model, load_global_student(student_dir))
        logits = predict_logits(student.model, encode(student.tokenizer, texts, max_length=config.data.max_length))
        load_trainable_state(student.model, student.init_state)
    return {"teacher": ensemble, "student": logits}
