"""What the methods share: their result type, a learner reset to its initial state, evaluation, the
public inputs of a round, and the per-round bookkeeping (curve, seconds, progress callback)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.metrics import scores
from nebula.common.wire import payload_nbytes
from nebula.learning.models import Learner, learner_for, load_trainable_state
from nebula.learning.training import Encoded, encode, predict_logits

OnRound = Callable[[dict], None]


class Score(float):
    """An accuracy (the float's value) that also carries the macro-F1 and top-class share of the same
    predictions (:func:`nebula.common.metrics.scores`): what :func:`evaluate` returns, so a baseline that
    stores its accuracy stores the other two with it."""

    f1: float
    top_share: float

    def __new__(cls, accuracy: float, f1: float = float("nan"), top_share: float = float("nan")) -> Score:
        score = super().__new__(cls, accuracy)
        score.f1, score.top_share = float(f1), float(top_share)
        return score


def _f1(value: float | None) -> float | None:
    return value.f1 if isinstance(value, Score) else None


def _top_share(value: float | None) -> float | None:
    return value.top_share if isinstance(value, Score) else None


@dataclass
class BaselineResult:
    """One method's final numbers. The F1 and top-class-share fields default to those carried by the
    accuracies when they are :class:`Score` values (as :func:`evaluate` returns).

    ``curve`` is the accuracy per round on the global test set of the model named by ``curve_of``: the
    global model where the method has one (``global_student``), else the mean over clients
    (``mean_client``; NaN in a round where clients were not evaluated, ``train.eval_every``).
    ``round_seconds`` is the wall time from the start of the run to the end of each round.
    """

    name: str
    mean_client_acc: float | None = None  # on the global test set
    min_client_acc: float | None = None
    mean_client_acc_own: float | None = None  # on each client's held-out split
    student_acc: float | None = None  # the one global model, where there is one
    bytes_up_per_client: float = 0.0  # per round
    bytes_down_per_client: float = 0.0
    seconds: float = 0.0
    curve: list[float] = field(default_factory=list)  # accuracy per round
    mean_client_f1: float | None = None  # macro-F1 on the global test set
    student_f1: float | None = None
    client_top_shares: list[float] = field(default_factory=list)  # each client's top-class share on the test set
    student_top_share: float | None = None
    kind: str = ""  # logit-only, weights or bound (registry.KINDS)
    min_client_acc_own: float | None = None
    teacher_acc: float | None = None  # a model that labels the public pool, where there is one (the oracle's)
    curve_of: str = "global_student"
    round_seconds: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # method-specific: tuning grid and choice, temperatures ...

    def __post_init__(self) -> None:
        if self.mean_client_f1 is None:
            self.mean_client_f1 = _f1(self.mean_client_acc)
        if not self.client_top_shares and _top_share(self.mean_client_acc) is not None:
            self.client_top_shares = [_top_share(self.mean_client_acc)]
        if self.student_f1 is None:
            self.student_f1 = _f1(self.student_acc)
        if self.student_top_share is None:
            self.student_top_share = _top_share(self.student_acc)


def fresh_learner(config: NebulaConfig, data: FederationData) -> Learner:
    learner = learner_for(config, config.model.student, data.num_classes)
    load_trainable_state(learner.model, learner.init_state)
    return learner


def encoded(learner: Learner, data: FederationData, index: np.ndarray, max_length: int) -> Encoded:
    return encode(learner.tokenizer, data.texts(index), max_length=max_length)


def evaluate(learner: Learner, data: FederationData, index: np.ndarray, max_length: int) -> Score:
    """Accuracy on ``index`` (NaN if empty), carrying macro-F1 and top-class share (:class:`Score`)."""
    if len(index) == 0:
        return Score(float("nan"))
    logits = predict_logits(learner.model, encoded(learner, data, index, max_length))
    return Score(*scores(logits, data.labels(index)))


def train_kwargs(config: NebulaConfig) -> dict:
    t = config.train
    return dict(lr=t.lr, batch_size=t.batch_size, micro_batch_size=t.micro_batch_size)


def public_ids(config: NebulaConfig, round_index: int) -> np.ndarray:
    """Round ``round_index``'s (1-based) public inputs, positions in the public pool: the same ids the
    federation's server asks its clients about (``Federation.public_ids``)."""
    k, pool = config.federation.public_per_round, config.data.public_size
    return (np.arange((round_index - 1) * k, round_index * k) % pool).astype(np.int64)


def logits_nbytes(config: NebulaConfig, num_classes: int) -> int:
    """Bytes of one round's logits (or soft labels) in Nebula's wire format: ``public_per_round`` rows of
    ``num_classes`` at ``federation.wire_dtype``, with their ids and header (``payload_nbytes``)."""
    f = config.federation
    return payload_nbytes(f.public_per_round, num_classes, dtype=f.wire_dtype)


def evaluates(config: NebulaConfig, round_index: int) -> bool:
    """Whether clients are evaluated after round ``round_index``: every ``train.eval_every`` rounds and the last."""
    return round_index % config.train.eval_every == 0 or round_index == config.federation.rounds


def optimizer(learner: Learner, config: NebulaConfig) -> torch.optim.Optimizer:
    """A fresh AdamW over the learner's trainable parameters at ``train.lr`` (one per client round, as an edge
    client makes one per round and shares it between digest and revisit)."""
    return torch.optim.AdamW([p for p in learner.model.parameters() if p.requires_grad], lr=config.train.lr)


def mean_or_none(values: list[float]) -> float | None:
    """The mean of the finite ``values``; None if there is none."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


class Rounds:
    """Per-round bookkeeping of one run: the accuracy curve, the wall time at the end of each round, the
    bytes per client of each round, and the ``on_round`` callback (``{"round", "acc", "seconds"}``)."""

    def __init__(self, on_round: OnRound | None = None) -> None:
        self.t0 = time.perf_counter()
        self.on_round = on_round
        self.curve: list[float] = []
        self.seconds: list[float] = []
        self.up: list[float] = []
        self.down: list[float] = []

    def done(self, round_index: int, acc: float, *, up: float = 0.0, down: float = 0.0) -> None:
        self.curve.append(acc)
        self.seconds.append(time.perf_counter() - self.t0)
        self.up.append(float(up))
        self.down.append(float(down))
        if self.on_round is not None:
            self.on_round({"round": round_index, "acc": float(acc), "seconds": self.seconds[-1]})

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def bytes_per_round(self) -> tuple[float, float]:
        """Mean uplink and downlink bytes per client per round (as the federation's results row averages them)."""
        return (float(np.mean(self.up)) if self.up else 0.0, float(np.mean(self.down)) if self.down else 0.0)
