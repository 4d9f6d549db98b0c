"""FedDF (Lin, Kong, Stich & Jaggi, 2020, "Ensemble Distillation for Robust Model Fusion in Federated
Learning", NeurIPS 2020).

A round: every client starts from the global adapter and trains its local epochs on its private data
(as in FedAvg, fedavg_lora.py); the server averages the adapters weighted by example count, then
fine-tunes that average by distilling the ensemble of the clients' models on unlabelled public data:
the target is the softmax of the clients' averaged logits (the paper's AVGLOGITS)::

    theta_0 = sum_k n_k / n * theta_k,      target_n = softmax( (1/K) sum_k z_k(x_n) / T )

The server distillation runs ``train.student_epochs`` epochs at ``train.lr`` (KL at ``train.temperature``)
on the round's ``public_per_round`` public inputs: the same public budget per round as every other
method (the paper distils for up to 10^4 steps with early stopping on a validation set).

Shares: up, the client's trained adapter (LoRA matrices and head); down, the global adapter. Bytes:
their float32 tensors both ways every round (``state_nbytes``). Kind: weights. FedDF sends weights up,
so it is a reference for what weight sharing buys on top of distillation, not a logit-only peer.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.probabilities import softmax
from nebula.learning.models import Learner, load_trainable_state, state_nbytes, trainable_state
from nebula.learning.training import Encoded, fit, predict_logits
from nebula.simulation.baselines.common import (
    BaselineResult,
    OnRound,
    Rounds,
    encoded,
    evaluate,
    fresh_learner,
    public_ids,
)
from nebula.simulation.baselines.fedavg_lora import State, fedavg, fedavg_result, local_round
from nebula.simulation.baselines.registry import Method, register


def ensemble_targets(logits: np.ndarray, *, temperature: float) -> np.ndarray:
    """FedDF's distillation targets: ``softmax(mean_k z_k / T)``, (K, N, C) -> (N, C)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ValueError(f"logits must be (K, N, C) with K >= 1, got shape {logits.shape}")
    return softmax(logits.mean(axis=0), temperature=temperature)


def ensemble_logits(learner: Learner, states: list[State], inputs: Encoded) -> np.ndarray:
    """Every client model's logits on ``inputs``, (K, N, C)."""
    out = []
    for state in states:
        load_trainable_state(learner.model, state)
        out.append(predict_logits(learner.model, inputs))
    return np.stack(out)


@register
class FedDF(Method):
    """FedAvg of the adapters, then server-side ensemble distillation on the public pool."""

    name: ClassVar[str] = "feddf"
    kind: ClassVar[str] = "weights"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        rounds, learner = Rounds(on_round), fresh_learner(config, data)
        t, max_len = config.train, config.data.max_length
        global_state = trainable_state(learner.model)
        encs = [encoded(learner, data, c.train, max_len) for c in data.clients]
        labels = [data.labels(c.train) for c in data.clients]
        pool = encoded(learner, data, data.public, max_len)  # wire id i -> row i
        nbytes = float(state_nbytes(global_state))
        for r in range(config.federation.rounds):
            states, weights = local_round(
                learner, encs, labels, global_state, config, round_index=r, epochs=t.local_epochs, lr=t.lr, seed=seed
            )
            inputs = pool.subset(public_ids(config, r + 1))
            targets = ensemble_targets(ensemble_logits(learner, states, inputs), temperature=t.temperature)
            load_trainable_state(learner.model, fedavg(states, weights))
            fit(
                learner.model,
                inputs,
                targets=targets,
                epochs=t.student_epochs,
                temperature=t.temperature,
                seed=seed * 1000 + 500 + r,
                lr=t.lr,
                batch_size=t.batch_size,
                micro_batch_size=t.micro_batch_size,
            )
            global_state = trainable_state(learner.model)
            rounds.done(r + 1, evaluate(learner, data, data.test, max_len), up=nbytes, down=nbytes)
        return fedavg_result(self.name, self.kind, learner, data, config, rounds)
