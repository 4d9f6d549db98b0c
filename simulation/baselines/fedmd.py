"""FedMD (Li & Wang, 2019, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS
2019 Workshop on Federated Learning for Data Privacy and Confidentiality).

Each client keeps its own model for the whole run (no global model). A round of the paper:
communicate (every client's class scores on the round's public inputs), aggregate (the consensus is
the unweighted mean of the scores), distribute, digest (every client fits the consensus on those
inputs), revisit (every client trains a few epochs on its private data).

.. math:: \\tilde f(x_j) = \\frac{1}{K} \\sum_{k=1}^{K} f_k(x_j)        (the consensus, (N, C))

On the federation's schedule and budget (clients.py): in round ``r`` a client digests round ``r-1``'s
consensus (``train.digest_epochs``), revisits its private data (``train.local_epochs``) and answers its
scores on round ``r``'s public inputs; round 1's revisit is the private training the paper does
before its first round. Two departures from the paper: there is no transfer-learning phase on a
*labelled* public set (the public pool is unlabelled here), and the digest fits
``softmax(consensus / T)`` with the KL at ``T`` that Nebula's clients digest with, instead of an L1
loss on the scores; both pull a client's scores toward the consensus (the KL up to a shift per row).

Shares: up, the client's logits on ``public_per_round`` inputs; down, the consensus on them (from
round 2 on). Bytes: both in Nebula's wire format at ``federation.wire_dtype`` (``payload_nbytes``),
so they compare with the federation's own figures. Kind: logit-only.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.probabilities import softmax
from nebula.simulation.baselines.clients import LocalClients, Targets, client_figures
from nebula.simulation.baselines.common import BaselineResult, OnRound, Rounds, evaluates, logits_nbytes, public_ids
from nebula.simulation.baselines.registry import Method, register


def mean_consensus(scores: np.ndarray) -> np.ndarray:
    """FedMD's consensus: the unweighted mean over clients of their class scores.

    Parameters
    ----------
    scores : (K, N, C) float
        Every client's logits on the same N public inputs.

    Returns
    -------
    (N, C) float
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[0] == 0:
        raise ValueError(f"scores must be (K, N, C) with K >= 1, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores.mean(axis=0)


@register
class FedMD(Method):
    """Persistent client models; digest the mean consensus, then revisit private data."""

    name: ClassVar[str] = "fedmd"
    kind: ClassVar[str] = "logit-only"

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        rounds, clients = Rounds(on_round), LocalClients(config, data, seed=seed)
        T = config.train.temperature
        payload = logits_nbytes(config, data.num_classes)
        targets, scores = None, None
        for r in range(1, config.federation.rounds + 1):
            for index in range(len(clients)):
                clients.update(index, r, targets, temperature=T)
            ids = public_ids(config, r)
            consensus = mean_consensus(clients.answers(ids))  # (N, C)
            down = payload if targets is not None else 0
            targets = Targets(ids, softmax(consensus, temperature=T))
            scores = clients.scores() if evaluates(config, r) else None
            rounds.done(r, scores.mean if scores is not None else float("nan"), up=payload, down=down)
        up, down = rounds.bytes_per_round()
        return BaselineResult(
            self.name,
            kind=self.kind,
            **client_figures(scores),
            bytes_up_per_client=up,
            bytes_down_per_client=down,
            seconds=rounds.elapsed(),
            curve=rounds.curve,
            curve_of="mean_client",
            round_seconds=rounds.seconds,
        )
