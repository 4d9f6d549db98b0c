"""FedAvg of LoRA adapters, tuned fairly, and FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith,
2020, "Federated Optimization in Heterogeneous Networks", MLSys 2020) tuned the same way.

FedAvg's rule and bytes are fedavg_lora.py's (McMahan et al. 2017). Its local epochs and learning
rate are chosen on data the clients hold, never on the test set: each client sets aside
``val_fraction`` of its private training split (seeded), every cell of the grid ``local_epochs x lr``
runs FedAvg on what remains, and the cell whose final global model scores best on the clients' pooled
validation examples wins (ties: the first in grid order, the cheaper). The winner then runs on the
full training splits; that run gives the figures. The grid, every cell's validation accuracy and the
choice are in the result's ``details``.

FedProx adds ``mu / 2 * ||w - w_global||^2`` to every client's local objective (``ProximalAdamW``),
which keeps a client's update near the global model when the local data are skewed; ``fedprox`` is
this method with ``mu = 0.01``.

Shares: up, the client's adapter; down, the global adapter; float32 both ways, every round (the tuning
runs' traffic is not counted: a deployment would tune once). Kind: weights.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import ClassVar, TypeVar

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData, holdout_split
from nebula.simulation.baselines.common import BaselineResult, OnRound, Rounds, evaluate, fresh_learner
from nebula.simulation.baselines.fedavg_lora import fedavg_result, run_fedavg
from nebula.simulation.baselines.registry import Method, register

K = TypeVar("K", bound=Hashable)


def pick_cell(scores: Mapping[K, float]) -> K:
    """The key of the highest score; NaN ranks lowest, ties go to the first key in ``scores``' order.

    Raises ValueError for an empty grid.
    """
    if not scores:
        raise ValueError("pick_cell: no grid cell was scored")
    best, best_score = None, -np.inf
    for key, score in scores.items():
        value = float(score) if np.isfinite(score) else -np.inf
        if best is None or value > best_score:
            best, best_score = key, value
    return best


def validation_splits(data: FederationData, *, fraction: float, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each client's training indices less its validation share, and the pooled validation indices."""
    fits, vals = [], []
    for index, client in enumerate(data.clients):
        part = holdout_split(len(client.train), fraction=fraction, seed=seed * 1000 + 700 + index)
        fits.append(client.train[part.train])
        vals.append(client.train[part.holdout])
    return fits, np.sort(np.concatenate(vals))


@register
class FedAvgTuned(Method):
    """FedAvg with local epochs and learning rate chosen on the clients' validation data.

    Parameters
    ----------
    local_epochs, lrs : sequences
        The grid (default {1, 2, 5} x {1e-3, 2e-3, 5e-3}).
    mu : float
        FedProx's proximal weight (0: FedAvg).
    val_fraction : float
        Share of each client's training split held out for the choice.
    tune_rounds : int, optional
        Rounds of each tuning run (default ``federation.rounds``).
    """

    name: ClassVar[str] = "fedavg-tuned"
    kind: ClassVar[str] = "weights"
    default_mu: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        local_epochs: Sequence[int] = (1, 2, 5),
        lrs: Sequence[float] = (1e-3, 2e-3, 5e-3),
        mu: float | None = None,
        val_fraction: float = 0.2,
        tune_rounds: int | None = None,
    ) -> None:
        if not local_epochs or not lrs or any(e < 1 for e in local_epochs) or any(not lr > 0 for lr in lrs):
            raise ValueError(f"{self.name}: the grid needs epochs >= 1 and lr > 0, got {local_epochs} x {lrs}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"{self.name}: val_fraction must be in (0, 1), got {val_fraction}")
        self.grid = [(int(e), float(lr)) for e, lr in itertools.product(local_epochs, lrs)]
        self.mu = self.default_mu if mu is None else float(mu)
        if self.mu < 0:
            raise ValueError(f"{self.name}: mu must be >= 0, got {self.mu}")
        self.val_fraction, self.tune_rounds = float(val_fraction), tune_rounds

    def tune(self, data: FederationData, config: NebulaConfig, *, seed: int) -> dict:
        """Every cell's validation accuracy and the chosen cell (``details`` of the result)."""
        t0, max_len = time.perf_counter(), config.data.max_length
        fits, val = validation_splits(data, fraction=self.val_fraction, seed=seed)
        scores = {}
        for epochs, lr in self.grid:
            learner = fresh_learner(config, data)
            kw = dict(epochs=epochs, lr=lr, mu=self.mu, seed=seed, num_rounds=self.tune_rounds)
            run_fedavg(learner, data, config, fits, **kw)
            scores[(epochs, lr)] = float(evaluate(learner, data, val, max_len))
        epochs, lr = pick_cell(scores)
        return {
            "grid": {"local_epochs": sorted({e for e, _ in self.grid}), "lr": sorted({lr for _, lr in self.grid})},
            "validation": [{"local_epochs": e, "lr": lr, "acc": a} for (e, lr), a in scores.items()],
            "chosen": {"local_epochs": epochs, "lr": lr},
            "val_fraction": self.val_fraction,
            "val_examples": int(len(val)),
            "tune_rounds": self.tune_rounds or config.federation.rounds,
            "mu": self.mu,
            "tune_seconds": time.perf_counter() - t0,
        }

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        details = self.tune(data, config, seed=seed)
        chosen, rounds = details["chosen"], Rounds(on_round)
        learner = fresh_learner(config, data)
        trains = [c.train for c in data.clients]
        run_fedavg(
            learner,
            data,
            config,
            trains,
            epochs=chosen["local_epochs"],
            lr=chosen["lr"],
            mu=self.mu,
            seed=seed,
            rounds=rounds,
        )
        result = fedavg_result(self.name, self.kind, learner, data, config, rounds, details=details)
        result.seconds += details["tune_seconds"]
        return result


@register
class FedProx(FedAvgTuned):
    """FedAvg with FedProx's proximal term (``mu`` = 0.01 by default), tuned like ``fedavg-tuned``."""

    name: ClassVar[str] = "fedprox"
    default_mu: ClassVar[float] = 0.01
