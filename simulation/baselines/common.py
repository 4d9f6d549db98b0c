"""What the baselines share: their result type and a learner reset to its initial state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.common.metrics import scores
from nebula.learning.models import Learner, learner_for, load_trainable_state
from nebula.learning.training import Encoded, encode, predict_logits


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
    """One baseline's final numbers. The F1 and top-class-share fields default to those carried by the
    accuracies when they are :class:`Score` values (as :func:`evaluate` returns)."""

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
