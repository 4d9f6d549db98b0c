"""FedAvg of LoRA adapters (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"), and FedProx's proximal term (Li et al., 2020, "Federated Optimization in
Heterogeneous Networks") for the tuned variant (fedavg_tuned.py).

Every round each client starts from the global adapter (LoRA matrices and the classification head),
trains its local epochs on its private data, and uploads its adapter; the server averages them
weighted by example count. All clients use ``model.student``: FedAvg cannot mix architectures.

Shares: up, the client's trained adapter; down, the global adapter. Bytes: the adapter's float32
tensors (``state_nbytes``), both ways, every round. A ``weights`` method: a reference for what
sharing weights buys, not a peer under Nebula's rules (nothing but logits leaves a Nebula client).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.learning.models import Learner, load_trainable_state, state_nbytes, trainable_state
from nebula.learning.training import Encoded, fit
from nebula.simulation.baselines.common import BaselineResult, OnRound, Rounds, encoded, evaluate, fresh_learner
from nebula.simulation.baselines.registry import Method, register

State = dict[str, torch.Tensor]


def fedavg(states: Sequence[State], weights: Sequence[float]) -> State:
    """The example-weighted mean of client states (McMahan et al. 2017, Algorithm 1).

    .. math:: \\theta = \\sum_k \\frac{n_k}{\\sum_j n_j} \\theta_k

    Parameters
    ----------
    states : sequence of K dicts name -> tensor
        The clients' trainable states, same names and shapes.
    weights : sequence of K floats
        ``n_k``, each client's number of training examples (> 0).
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"fedavg needs one weight per state, got {len(states)} states and {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise ValueError(f"fedavg weights must be > 0, got {list(weights)}")
    for k, state in enumerate(states[1:], start=1):
        if state.keys() != states[0].keys():
            raise ValueError(f"fedavg: state {k} has other tensor names than state 0")
    w = torch.tensor(weights) / sum(weights)  # (K,)
    return {name: sum(w[i] * states[i][name] for i in range(len(states))) for name in states[0]}


class ProximalAdamW(torch.optim.AdamW):
    """AdamW on ``loss + mu / 2 * ||w - w_anchor||^2`` (FedProx's local objective, Li et al. 2020): before each step
    every gradient gets :func:`proximal_gradient` added. ``mu = 0`` is plain AdamW."""

    def __init__(self, params: Sequence[torch.Tensor], *, anchor: Sequence[torch.Tensor], mu: float, lr: float):
        params = list(params)
        if len(params) != len(anchor):
            raise ValueError(f"ProximalAdamW: {len(params)} parameters but {len(anchor)} anchor tensors")
        if not mu >= 0:
            raise ValueError(f"ProximalAdamW: mu must be >= 0, got {mu}")
        super().__init__(params, lr=lr)
        self.prox = list(zip(params, [a.detach().clone() for a in anchor]))
        self.mu = float(mu)

    @torch.no_grad()
    def step(self, closure=None):
        for param, anchor in self.prox:
            if param.grad is not None:
                param.grad.add_(proximal_gradient(param, anchor, mu=self.mu))
        return super().step(closure)


def proximal_gradient(param: torch.Tensor, anchor: torch.Tensor, *, mu: float) -> torch.Tensor:
    """The gradient of FedProx's term ``mu / 2 * ||w - w_anchor||^2``: ``mu * (w - w_anchor)``."""
    return mu * (param.detach() - anchor)


def local_round(
    learner: Learner,
    client_encs: Sequence[Encoded],
    client_labels: Sequence[np.ndarray],
    global_state: State,
    config: NebulaConfig,
    *,
    round_index: int,
    epochs: int,
    lr: float,
    mu: float = 0.0,
    seed: int,
) -> tuple[list[State], list[float]]:
    """Every client's update of one round (0-based ``round_index``) from ``global_state``: its trained state
    and its number of examples. With ``mu > 0`` the local objective has FedProx's proximal term."""
    states, weights = [], []
    t = config.train
    for index, (enc, labels) in enumerate(zip(client_encs, client_labels)):
        load_trainable_state(learner.model, global_state)
        opt = None
        if mu > 0:
            params = [p for p in learner.model.parameters() if p.requires_grad]
            opt = ProximalAdamW(params, anchor=[p.detach() for p in params], mu=mu, lr=lr)
        fit(
            learner.model,
            enc,
            labels=labels,
            epochs=epochs,
            seed=seed * 1000 + round_index * 10 + index,
            lr=lr,
            batch_size=t.batch_size,
            micro_batch_size=t.micro_batch_size,
            optimizer=opt,
        )
        states.append(trainable_state(learner.model))
        weights.append(float(len(labels)))
    return states, weights


def run_fedavg(
    learner: Learner,
    data: FederationData,
    config: NebulaConfig,
    trains: Sequence[np.ndarray],
    *,
    epochs: int,
    lr: float,
    mu: float = 0.0,
    seed: int,
    rounds: Rounds | None = None,
    num_rounds: int | None = None,
) -> State:
    """FedAvg over the clients' ``trains`` (dataset indices, one array per client) for ``num_rounds`` (default
    ``federation.rounds``); the global state at the end. With ``rounds``, the global model is evaluated on the
    global test set after each round and the round's bytes recorded."""
    max_len = config.data.max_length
    global_state = trainable_state(learner.model)
    encs = [encoded(learner, data, train, max_len) for train in trains]
    labels = [data.labels(train) for train in trains]
    nbytes = float(state_nbytes(global_state))
    for r in range(num_rounds or config.federation.rounds):
        states, weights = local_round(
            learner, encs, labels, global_state, config, round_index=r, epochs=epochs, lr=lr, mu=mu, seed=seed
        )
        global_state = fedavg(states, weights)
        load_trainable_state(learner.model, global_state)
        if rounds is not None:
            rounds.done(r + 1, evaluate(learner, data, data.test, max_len), up=nbytes, down=nbytes)
    return global_state


def fedavg_result(
    name: str, kind: str, learner: Learner, data: FederationData, config: NebulaConfig, rounds: Rounds, **extra
) -> BaselineResult:
    """The figures of a FedAvg-style run whose global model is loaded in ``learner``: every client holds the
    global model, so mean and min client accuracy on the test set are the global model's."""
    own = [evaluate(learner, data, c.holdout, config.data.max_length) for c in data.clients]
    up, down = rounds.bytes_per_round()
    final = rounds.curve[-1]
    return BaselineResult(
        name,
        kind=kind,
        mean_client_acc=final,
        min_client_acc=final,
        mean_client_acc_own=float(np.nanmean(own)),
        min_client_acc_own=float(np.nanmin(own)),
        student_acc=final,
        bytes_up_per_client=up,
        bytes_down_per_client=down,
        seconds=rounds.elapsed(),
        curve=rounds.curve,
        round_seconds=rounds.seconds,
        **extra,
    )


@register
class FedAvgLoRA(Method):
    """FedAvg of the adapters with the federation's own learning rate and local epochs (untuned)."""

    name: ClassVar[str] = "fedavg-lora"
    kind: ClassVar[str] = "weights"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        rounds = Rounds(on_round)
        learner = fresh_learner(config, data)
        trains = [c.train for c in data.clients]
        t = config.train
        run_fedavg(learner, data, config, trains, epochs=t.local_epochs, lr=t.lr, seed=seed, rounds=rounds)
        return fedavg_result(self.name, self.kind, learner, data, config, rounds)
