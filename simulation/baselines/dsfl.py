"""DS-FL with entropy-reduction aggregation (Itahara, Nishio, Koda, Morikura & Yamamoto, 2021,
"Distillation-Based Semi-Supervised Federated Learning for Communication-Efficient Collaborative
Training With Non-IID Private Data", IEEE Transactions on Mobile Computing, 2021).

Each client keeps its own model. A round: every client digests the last global soft labels on their
public inputs, trains on its private data and uploads its soft labels (softmax outputs) on the round's
public inputs; the server aggregates them with ERA and distills its own global model on the result.

ERA (entropy-reduction aggregation): the mean of the clients' soft labels,
sharpened by a softmax at a temperature ``T_ERA < 1`` (the paper uses 0.1) so that non-IID clients'
disagreement does not flatten the targets into uninformative ones::

    r_n = softmax( (1/K) sum_k p_{k,n} / T_ERA )        p_{k,n}: client k's softmax output, (C,)

Note that the softmax is applied to the mean *probabilities*, not to their logarithm: server/aggregation's
``entropy`` rule (confidence weights, then ``p^(1/T)`` renormalised) is a different rule; ERA is written
here as the paper defines it. Its output is never one-hot: with probabilities in [0, 1] the largest
logit gap is ``1 / T_ERA``.

On the federation's schedule and budget (clients.py): digest (``train.digest_epochs``, KL at T = 1:
ERA already chose the temperature), revisit (``train.local_epochs``), answer. The global model is the
student base with its own adapter, distilled ``train.student_epochs`` epochs per round on the round's
ERA targets at ``train.lr``; it is the ``global_student`` figure.

Shares: up, the client's soft labels on ``public_per_round`` inputs; down, the ERA targets on them
(from round 2 on). Bytes: Nebula's wire format at ``federation.wire_dtype`` (``payload_nbytes``).
Kind: logit-only.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.probabilities import softmax
from nebula.learning.models import load_trainable_state, trainable_state
from nebula.learning.training import fit
from nebula.simulation.baselines.clients import LocalClients, Targets, client_figures
from nebula.simulation.baselines.common import (
    BaselineResult,
    OnRound,
    Rounds,
    evaluate,
    evaluates,
    logits_nbytes,
    public_ids,
)
from nebula.simulation.baselines.registry import Method, register

DIGEST_TEMPERATURE = 1.0  # ERA sets the targets' temperature; clients and server fit them as they are


def era(probs: np.ndarray, *, temperature: float) -> np.ndarray:
    """DS-FL's entropy-reduction aggregation: ``softmax(mean_k p_k / T)`` row by row.

    Parameters
    ----------
    probs : (K, N, C) float
        Every client's soft labels (rows sum to 1) on the same N public inputs.
    temperature : float
        ``T_ERA > 0``; below 1 it lowers the entropy of the mean.

    Returns
    -------
    (N, C) float, rows sum to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise ValueError(f"probs must be (K, N, C) with K >= 1, got shape {probs.shape}")
    if not temperature > 0:
        raise ValueError(f"ERA temperature must be > 0, got {temperature}")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=2), 1.0, atol=1e-4):
        raise ValueError("probs must be probabilities: >= 0, rows sum to 1")
    return softmax(probs.mean(axis=0), temperature=temperature)


@register
class DSFL(Method):
    """Persistent client models, ERA-aggregated soft labels, a server model distilled on them.

    Parameters
    ----------
    era_temperature : float
        ``T_ERA`` (the paper's 0.1).
    """

    name: ClassVar[str] = "dsfl"
    kind: ClassVar[str] = "logit-only"

    def __init__(self, *, era_temperature: float = 0.1) -> None:
        if not era_temperature > 0:
            raise ValueError(f"dsfl: era_temperature must be > 0, got {era_temperature}")
        self.era_temperature = float(era_temperature)

    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        rounds, clients = Rounds(on_round), LocalClients(config, data, seed=seed)
        learner, max_len = clients.learner, config.data.max_length
        server_state = trainable_state(learner.model)  # the initial adapter, like every client's
        payload = logits_nbytes(config, data.num_classes)
        targets, scores, student = None, None, None
        for r in range(1, config.federation.rounds + 1):
            for index in range(len(clients)):
                clients.update(index, r, targets, temperature=DIGEST_TEMPERATURE)
            ids = public_ids(config, r)
            soft = softmax_all(clients.answers(ids))  # (K, N, C)
            down = payload if targets is not None else 0
            targets = Targets(ids, era(soft, temperature=self.era_temperature))
            load_trainable_state(learner.model, server_state)
            fit(
                learner.model,
                clients.pool.subset(ids),
                targets=targets.probs,
                epochs=config.train.student_epochs,
                temperature=DIGEST_TEMPERATURE,
                seed=seed * 1000 + 500 + r,
                lr=config.train.lr,
                batch_size=config.train.batch_size,
                micro_batch_size=config.train.micro_batch_size,
            )
            server_state = trainable_state(learner.model)
            student = evaluate(learner, data, data.test, max_len)
            scores = clients.scores() if evaluates(config, r) else scores
            rounds.done(r, student, up=payload, down=down)
        up, down = rounds.bytes_per_round()
        return BaselineResult(
            self.name,
            kind=self.kind,
            **client_figures(scores),
            student_acc=student,
            bytes_up_per_client=up,
            bytes_down_per_client=down,
            seconds=rounds.elapsed(),
            curve=rounds.curve,
            round_seconds=rounds.seconds,
            details={"era_temperature": self.era_temperature},
        )


def softmax_all(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (T = 1) of every client's logits, (K, N, C) -> (K, N, C)."""
    return np.stack([softmax(z) for z in logits])
