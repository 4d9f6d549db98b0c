"""FedAvg of LoRA adapters (and the classification head): every round each client starts
from the global adapter, trains its local epochs, and uploads its adapter; the server
averages them weighted by example count (McMahan et al., 2017). Bytes are float32
tensors, both ways. All clients use ``model.student``: FedAvg cannot mix architectures."""

from __future__ import annotations

import time

import numpy as np
import torch

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import build_federation_data
from nebula.learning.models import load_trainable_state, state_nbytes, trainable_state
from nebula.learning.training import fit
from nebula.simulation.baselines.common import BaselineResult, encoded, evaluate, fresh_learner, train_kwargs


def run(config: NebulaConfig) -> BaselineResult:
    t0, data, max_len = time.perf_counter(), build_federation_data(config.data), config.data.max_length
    learner = fresh_learner(config, data)
    global_state = trainable_state(learner.model)
    encs = [encoded(learner, data, c.train, max_len) for c in data.clients]
    curve = []
    for r in range(config.federation.rounds):
        states, weights = [], []
        for index, split in enumerate(data.clients):
            load_trainable_state(learner.model, global_state)
            fit(
                learner.model,
                encs[index],
                labels=data.labels(split.train),
                epochs=config.train.local_epochs,
                seed=config.data.seed * 1000 + r * 10 + index,
                **train_kwargs(config),
            )
            states.append(trainable_state(learner.model))
            weights.append(float(len(split.train)))
        w = torch.tensor(weights) / sum(weights)
        global_state = {k: sum(w[i] * states[i][k] for i in range(len(states))) for k in global_state}
        load_trainable_state(learner.model, global_state)
        curve.append(evaluate(learner, data, data.test, max_len))
    own = [evaluate(learner, data, c.holdout, max_len) for c in data.clients]
    nbytes = float(state_nbytes(global_state))
    return BaselineResult(
        "fedavg-lora",
        mean_client_acc=curve[-1],
        min_client_acc=curve[-1],
        mean_client_acc_own=float(np.nanmean(own)),
        student_acc=curve[-1],
        bytes_up_per_client=nbytes,
        bytes_down_per_client=nbytes,
        seconds=time.perf_counter() - t0,
        curve=curve,
    )
