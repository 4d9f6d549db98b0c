"""What the baselines share: their result type and a learner reset to its initial state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData
from nebula.learning.models import Learner, learner_for, load_trainable_state
from nebula.learning.training import Encoded, accuracy, encode, predict_logits


@dataclass
class BaselineResult:
    name: str
    mean_client_acc: float | None = None  # on the global test set
    min_client_acc: float | None = None
    mean_client_acc_own: float | None = None  # on each client's held-out split
    student_acc: float | None = None  # the one global model, where there is one
    bytes_up_per_client: float = 0.0  # per round
    bytes_down_per_client: float = 0.0
    seconds: float = 0.0
    curve: list[float] = field(default_factory=list)  # accuracy per round


def fresh_learner(config: NebulaConfig, data: FederationData) -> Learner:
    learner = learner_for(config, config.model.student, data.num_classes)
    load_trainable_state(learner.model, learner.init_state)
    return learner


def encoded(learner: Learner, data: FederationData, index: np.ndarray, max_length: int) -> Encoded:
    return encode(learner.tokenizer, data.texts(index), max_length=max_length)


def evaluate(learner: Learner, data: FederationData, index: np.ndarray, max_length: int) -> float:
    if len(index) == 0:
        return float("nan")
    return accuracy(predict_logits(learner.model, encoded(learner, data, index, max_length)), data.labels(index))


def train_kwargs(config: NebulaConfig) -> dict:
    t = config.train
    return dict(lr=t.lr, batch_size=t.batch_size, micro_batch_size=t.micro_batch_size)
