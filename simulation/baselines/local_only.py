"""Local-only: each client trains alone on its private data, for the federation's budget
(rounds x local epochs), and shares nothing."""

from __future__ import annotations

import time

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import build_federation_data
from nebula.learning.training import fit
from nebula.simulation.baselines.common import BaselineResult, encoded, evaluate, fresh_learner, train_kwargs


def run(config: NebulaConfig) -> BaselineResult:
    t0, data, max_len = time.perf_counter(), build_federation_data(config.data), config.data.max_length
    acc_global, acc_own = [], []
    for index, split in enumerate(data.clients):
        learner = fresh_learner(config, data)
        fit(
            learner.model,
            encoded(learner, data, split.train, max_len),
            labels=data.labels(split.train),
            epochs=config.federation.rounds * config.train.local_epochs,
            seed=config.data.seed + index,
            **train_kwargs(config),
        )
        acc_global.append(evaluate(learner, data, data.test, max_len))
        acc_own.append(evaluate(learner, data, split.holdout, max_len))
    return BaselineResult(
        "local-only",
        mean_client_acc=float(np.mean(acc_global)),
        min_client_acc=float(np.min(acc_global)),
        mean_client_acc_own=float(np.nanmean(acc_own)),
        mean_client_f1=float(np.mean([a.f1 for a in acc_global])),
        client_top_shares=[a.top_share for a in acc_global],
        seconds=time.perf_counter() - t0,
    )
