"""The oracle: what the global student could reach if the consensus were perfect. A model trained on
every client's private data pooled (centralized.py's, the student base) labels the public pool with its
soft predictions; a fresh student distils them as Nebula's global student distils the teacher's:
``train.student_epochs`` epochs over the whole pool per round, at ``train.lr``, KL at
``train.temperature``. The upper bound of any method whose global model learns from predictions on the
public pool (Nebula's, DS-FL's); the labelling model is reported as its ``teacher``.

Shares: nothing (the private data is pooled); bytes are not counted. Kind: bound.
"""

from __future__ import annotations

from typing import ClassVar

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.probabilities import softmax
from nebula.learning.models import load_trainable_state
from nebula.learning.training import fit, predict_logits
from nebula.simulation.baselines.centralized import train_centralized
from nebula.simulation.baselines.common import BaselineResult, OnRound, Rounds, encoded, evaluate, fresh_learner
from nebula.simulation.baselines.registry import Method, register


@register
class Oracle(Method):
    """Centralized labels on the public pool teaching a fresh student."""

    name: ClassVar[str] = "oracle"
    kind: ClassVar[str] = "bound"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        rounds, labeller = Rounds(on_round), Rounds()
        learner, t, max_len = fresh_learner(config, data), config.train, config.data.max_length
        train_centralized(learner, data, config, seed=seed, rounds=labeller)
        pool = encoded(learner, data, data.public, max_len)
        targets = softmax(predict_logits(learner.model, pool), temperature=t.temperature)  # (P, C)
        load_trainable_state(learner.model, learner.init_state)
        for r in range(1, config.federation.rounds + 1):
            fit(
                learner.model,
                pool,
                targets=targets,
                epochs=t.student_epochs,
                temperature=t.temperature,
                seed=seed * 1000 + 500 + r,
                lr=t.lr,
                batch_size=t.batch_size,
                micro_batch_size=t.micro_batch_size,
            )
            rounds.done(r, evaluate(learner, data, data.test, max_len))
        return BaselineResult(
            self.name,
            kind=self.kind,
            student_acc=rounds.curve[-1],
            teacher_acc=labeller.curve[-1],
            seconds=rounds.elapsed(),
            curve=rounds.curve,
            round_seconds=rounds.seconds,
            details={"labeller_seconds": labeller.seconds[-1]},
        )
