"""The persistent clients of the logit-sharing peers (FedMD, DS-FL): each keeps its own adapter between
rounds, digests what the server sent, revisits its private data and answers on public inputs.

They are the federation's clients in everything the peers do not change: the same private train and
holdout splits, the same student base model and initial adapter (``learner_for`` seeded by
``data.seed``), the same public ids per round, the same epochs, learning rate, batch sizes and seeds
per (round, client) as an edge client (client/edge.py), and one AdamW per client round shared by the
digest and the revisit. What differs is the peer's rule: the revisit is plain cross-entropy (no
logit adjustment, no keep-what-you-downloaded term), and a client never downloads a global model.

One frozen base model serves every client (and a peer's server model); only the trainable states
(LoRA matrices and the head) are swapped in and out, as one simulation worker serves many clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.metrics import scores
from nebula.learning.models import Learner, load_trainable_state, trainable_state
from nebula.learning.training import Encoded, fit, predict_logits
from nebula.simulation.baselines.common import (
    Score,
    encoded,
    evaluate,
    fresh_learner,
    mean_or_none,
    optimizer,
)


@dataclass(frozen=True)
class Targets:
    """What a client digests: soft targets ``probs`` (N, C) on the public inputs ``ids`` (N,)."""

    ids: np.ndarray
    probs: np.ndarray


@dataclass(frozen=True)
class ClientScores:
    """The clients' accuracies: on the global test set (:class:`Score` each) and on their own holdouts."""

    test: list[Score]
    own: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.test))

    @property
    def minimum(self) -> float:
        return float(np.min(self.test))


class LocalClients:
    """K clients' own adapters over one shared learner; ``seed`` is the training-order seed."""

    def __init__(self, config: NebulaConfig, data: FederationData, *, seed: int) -> None:
        self.config, self.data, self.seed = config, data, seed
        self.learner: Learner = fresh_learner(config, data)
        max_len = config.data.max_length
        self.states = [trainable_state(self.learner.model) for _ in data.clients]
        self.train = [encoded(self.learner, data, c.train, max_len) for c in data.clients]
        self.pool: Encoded = encoded(self.learner, data, data.public, max_len)  # wire id i -> row i

    def __len__(self) -> int:
        return len(self.states)

    def update(self, index: int, round_index: int, targets: Targets | None, *, temperature: float) -> None:
        """Client ``index``'s round ``round_index`` (1-based): digest ``targets`` (KL at ``temperature``,
        ``train.digest_epochs``), then revisit its private data (cross-entropy, ``train.local_epochs``)."""
        cfg, model = self.config, self.learner.model
        load_trainable_state(model, self.states[index])
        seed = self.seed * 1000 + round_index * 10 + index  # an edge client's seed for this round
        common = dict(
            lr=cfg.train.lr,
            batch_size=cfg.train.batch_size,
            micro_batch_size=cfg.train.micro_batch_size,
            optimizer=optimizer(self.learner, cfg),
        )
        if targets is not None:
            fit(
                model,
                self.pool.subset(targets.ids),
                targets=targets.probs,
                epochs=cfg.train.digest_epochs,
                temperature=temperature,
                seed=seed,
                **common,
            )
        split = self.data.clients[index]
        fit(
            model,
            self.train[index],
            labels=self.data.labels(split.train),
            epochs=cfg.train.local_epochs,
            seed=seed + 1,
            **common,
        )
        self.states[index] = trainable_state(model)

    def answer(self, index: int, ids: np.ndarray) -> np.ndarray:
        """Client ``index``'s logits (N, C) on the public inputs ``ids``."""
        load_trainable_state(self.learner.model, self.states[index])
        return predict_logits(self.learner.model, self.pool.subset(ids))

    def answers(self, ids: np.ndarray) -> np.ndarray:
        """Every client's logits on ``ids``, (K, N, C)."""
        return np.stack([self.answer(i, ids) for i in range(len(self))])

    def scores(self) -> ClientScores:
        """Every client's accuracy on the global test set and on its own holdout."""
        test, own = [], []
        test_enc = encoded(self.learner, self.data, self.data.test, self.config.data.max_length)
        labels = self.data.labels(self.data.test)
        for index, split in enumerate(self.data.clients):
            load_trainable_state(self.learner.model, self.states[index])
            test.append(Score(*scores(predict_logits(self.learner.model, test_enc), labels)))
            own.append(evaluate(self.learner, self.data, split.holdout, self.config.data.max_length))
        return ClientScores(test, own)


def client_figures(scores_: ClientScores) -> dict:
    """The result fields that the clients' final scores fill."""
    own = [v for v in scores_.own if np.isfinite(v)]
    return dict(
        mean_client_acc=scores_.mean,
        min_client_acc=scores_.minimum,
        mean_client_f1=float(np.mean([s.f1 for s in scores_.test])),
        client_top_shares=[s.top_share for s in scores_.test],
        mean_client_acc_own=mean_or_none(scores_.own),
        min_client_acc_own=float(np.min(own)) if own else None,
    )
