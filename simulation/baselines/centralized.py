"""Centralized: one student trained on all clients' private data pooled (what sharing the
data would give; the upper reference for the global student), same epochs per round as a
client. Bytes: none counted (the data itself would have to move once)."""

from __future__ import annotations

import time
from typing import ClassVar

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.learning.models import Learner
from nebula.learning.training import fit
from nebula.simulation.baselines.common import (
    BaselineResult,
    OnRound,
    Rounds,
    encoded,
    evaluate,
    fresh_learner,
    train_kwargs,
)
from nebula.simulation.baselines.registry import Method, register


def train_centralized(
    learner: Learner, data: FederationData, config: NebulaConfig, *, seed: int, rounds: Rounds
) -> None:
    """Train ``learner`` on the pooled private data for ``federation.rounds`` x ``local_epochs``, evaluating on
    the global test set after each round's epochs (recorded in ``rounds``)."""
    pooled, max_len = data.pooled_train(), config.data.max_length
    enc = encoded(learner, data, pooled, max_len)
    for r in range(config.federation.rounds):
        fit(
            learner.model,
            enc,
            labels=data.labels(pooled),
            epochs=config.train.local_epochs,
            seed=seed + r,
            **train_kwargs(config),
        )
        rounds.done(r + 1, evaluate(learner, data, data.test, max_len))


@register
class Centralized(Method):
    """The pooled-data model; its per-round curve is the accuracy after each round's epochs."""

    name: ClassVar[str] = "centralized"
    kind: ClassVar[str] = "bound"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        t0, rounds = time.perf_counter(), Rounds(on_round)
        learner = fresh_learner(config, data)
        train_centralized(learner, data, config, seed=seed, rounds=rounds)
        return BaselineResult(
            self.name,
            kind=self.kind,
            student_acc=rounds.curve[-1],
            seconds=time.perf_counter() - t0,
            curve=rounds.curve,
            round_seconds=rounds.seconds,
        )
