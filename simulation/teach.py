"""Teach a teacher of another base model offline, from a finished run's consensus in its ledger.

What a teacher node running ``base`` would have learnt from the same federation, without running
the federation again: the consensus targets of every round the ledger holds (a re-sent public
input keeps its latest target, as :func:`nebula.common.probabilities.merge_consensus` gathers them), ``epochs``
passes of the teacher's own fit (KL at the run's temperature, the run's teacher learning rate and
batch), then accuracy on the run's global test set and the adapter saved where
``PeftModel.from_pretrained`` loads it. Used to compare an export with a bigger teacher (the
fp32 MPNet teacher of ``nebula export --report``) than the one the run trained.

It differs from the run's own teacher in one way, stated in its result: the teacher fits every
gathered target ``epochs`` times in one go, where the run's teacher fitted each round's gathered
targets once a round (early targets more often).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.run_folder import RunFolder
from nebula.server.exceptions import LedgerError
from nebula.server.ledger import Ledger


@dataclass(frozen=True)
class TeachReport:
    run_id: str
    base: str
    targets: int  # public inputs with a consensus target
    target_agreement: float | None  # share of targets whose argmax is the input's true label (None: unknown)
    epochs: int
    steps: int
    test_accuracy: float
    test_size: int
    seconds: float
    adapter: str


def gathered_consensus(ledger: Ledger, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (M,), probs (M, C))``: every round's consensus of ``run_id``, as the teacher node gathers it."""
    from nebula.server.resume import gathered_consensus as gathered_up_to

    rounds = ledger.consensus_round_indices(run_id)
    ids, probs = gathered_up_to(ledger, run_id, up_to=max(rounds, default=0))
    if ids is None or probs is None:
        raise LedgerError(f"run {run_id} in {ledger.path} has no aggregated round: nothing to teach from")
    return ids, probs


def teach_from_run(
    run_folder: str | Path,
    *,
    base: str,
    out: str | Path,
    epochs: int = 2,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TeachReport:
    """Train a fresh ``base`` + LoRA teacher on the consensus of the last run in ``run_folder/ledger.sqlite``.

    ``on_step(step, total_steps, loss)`` is called after each optimizer step (progress).
    """
    from nebula.common.federation_data import build_federation_data
    from nebula.learning.models import learner_for, load_trainable_state, save_adapter
    from nebula.learning.training import accuracy, encode, predict_logits

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    run, ids, probs = _run_consensus(run_folder)
    config, t0 = run.config, time.perf_counter()
    data = build_federation_data(config.data)
    teacher = learner_for(config, base, data.num_classes)
    load_trainable_state(teacher.model, teacher.init_state)
    steps = _fit_teacher(teacher, data.public_texts(ids), probs, config=config, epochs=epochs, on_step=on_step)
    max_len = config.data.max_length
    test_logits = predict_logits(teacher.model, encode(teacher.tokenizer, data.texts(data.test), max_length=max_len))
    test_accuracy = accuracy(test_logits, data.labels(data.test))
    adapter = save_adapter(
        teacher,
        out,
        label_names=data.dataset.label_names,
        config=config,
        role="offline-teacher",
        metrics={"test_accuracy": test_accuracy},
    )
    true = data.labels(data.public[ids])
    report = TeachReport(
        run_id=run.run_id,
        base=base,
        targets=int(len(ids)),
        target_agreement=float(np.mean(probs.argmax(1) == true)),
        epochs=epochs,
        steps=steps,
        test_accuracy=test_accuracy,
        test_size=int(len(data.test)),
        seconds=time.perf_counter() - t0,
        adapter=str(adapter),
    )
    (Path(out) / "teach-report.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def _run_consensus(run_folder: str | Path):
    """The teacher's targets: the last run in ``run_folder``'s ledger and its gathered consensus ``(ids, probs)``."""
    from nebula.server.unlearning.models import run_of

    path = RunFolder(Path(run_folder)).ledger
    if not path.is_file():
        raise LedgerError(f"{run_folder}: no ledger.sqlite (the folder of a finished run is needed)")
    ledger = Ledger(path)
    try:
        run = run_of(ledger, Path(run_folder))
        ids, probs = gathered_consensus(ledger, run.run_id)
    finally:
        ledger.close()
    return run, ids, probs


def _fit_teacher(
    teacher,
    texts: list[str],
    probs: np.ndarray,
    *,
    config: NebulaConfig,
    epochs: int,
    on_step: Callable[[int, int, float], None] | None,
) -> int:
    """The teacher's fit to the consensus ``probs`` on the public ``texts``; its number of optimizer steps."""
    from nebula.learning.training import encode, fit

    cfg = config.train
    total = epochs * -(-len(texts) // cfg.batch_size)
    result = fit(
        teacher.model,
        encode(teacher.tokenizer, texts, max_length=config.data.max_length),
        targets=probs,
        epochs=epochs,
        temperature=cfg.temperature,
        lr=cfg.teacher_lr,
        batch_size=cfg.batch_size,
        micro_batch_size=cfg.micro_batch_size,
        seed=config.data.seed,
        on_step=None if on_step is None else (lambda step, loss: on_step(step, total, loss)),
    )
    return result.steps
