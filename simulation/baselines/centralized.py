"""Centralized: one student trained on all clients' private data pooled (what sharing the
data would give; the upper reference for the global student), same epochs as a client."""

from __future__ import annotations

import time

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import build_federation_data
from nebula.learning.training import fit
from nebula.simulation.baselines.common import BaselineResult, encoded, evaluate, fresh_learner, train_kwargs


def run(config: NebulaConfig) -> BaselineResult:
    t0, data, max_len = time.perf_counter(), build_federation_data(config.data), config.data.max_length
    pooled = data.pooled_train()
    learner = fresh_learner(config, data)
    curve = []
    enc = encoded(learner, data, pooled, max_len)
    for r in range(config.federation.rounds):
        fit(
            learner.model,
            enc,
            labels=data.labels(pooled),
            epochs=config.train.local_epochs,
            seed=config.data.seed + r,
            **train_kwargs(config),
        )
        curve.append(evaluate(learner, data, data.test, max_len))
    return BaselineResult("centralized", student_acc=curve[-1], seconds=time.perf_counter() - t0, curve=curve)
