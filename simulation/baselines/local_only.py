"""Local-only: each client trains alone on its private data, for the federation's budget
(rounds x local epochs), and shares nothing: the lower bound of every federated method.
Bytes: none either way."""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.learning.training import fit
from nebula.simulation.baselines.common import (
    BaselineResult,
    OnRound,
    encoded,
    evaluate,
    fresh_learner,
    mean_or_none,
    train_kwargs,
)
from nebula.simulation.baselines.registry import Method, register


@register
class LocalOnly(Method):
    """Every client's own model, trained on its own data only (no rounds: no per-round curve)."""

    name: ClassVar[str] = "local-only"
    kind: ClassVar[str] = "bound"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        t0, max_len = time.perf_counter(), config.data.max_length
        acc_global, acc_own = [], []
        for index, split in enumerate(data.clients):
            learner = fresh_learner(config, data)
            fit(
                learner.model,
                encoded(learner, data, split.train, max_len),
                labels=data.labels(split.train),
                epochs=config.federation.rounds * config.train.local_epochs,
                seed=seed + index,
                **train_kwargs(config),
            )
            acc_global.append(evaluate(learner, data, data.test, max_len))
            acc_own.append(evaluate(learner, data, split.holdout, max_len))
        return BaselineResult(
            self.name,
            kind=self.kind,
            mean_client_acc=float(np.mean(acc_global)),
            min_client_acc=float(np.min(acc_global)),
            mean_client_acc_own=float(np.nanmean(acc_own)),
            min_client_acc_own=float(np.nanmin(acc_own)) if mean_or_none(acc_own) is not None else None,
            mean_client_f1=float(np.mean([a.f1 for a in acc_global])),
            client_top_shares=[a.top_share for a in acc_global],
            seconds=time.perf_counter() - t0,
            curve_of="mean_client",
        )
