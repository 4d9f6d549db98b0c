"""An edge client's round: digest the targets, revisit private data, answer soft logits.

Only the logits on the requested public inputs (and a few metrics) leave the device. The
adapter lives in ``context.state`` between rounds; the frozen base model is loaded once
per process (:func:`nebula.learning.models.load_learner`).

The private data is the device's own file when the node config names one (``data-path``,
:func:`nebula.client.node.data_source`), labelled in the shared dataset's label names; else the
client's partition of the shared dataset (simulation). The public pool and the global test set
are always the shared dataset's (``data.dataset``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context

from nebula.client.node import DataSource, data_source
from nebula.common import keys
from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData, PrivateData, build_federation_data, device_data
from nebula.common.metrics import scores
from nebula.common.priors import prior_shift
from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits, encode_logits
from nebula.learning.models import learner_for, load_trainable_state, save_adapter, trainable_state
from nebula.learning.training import accuracy, encode, fit, predict_logits

STATE_KEY = "edge-adapter"


@dataclass
class RoundOutput:
    logits_blob: bytes
    metrics: dict[str, float]


def private_data(config: NebulaConfig, index: int, data: FederationData, source: DataSource | None) -> PrivateData:
    """The client's own labelled data: ``source``'s files in ``data``'s label names, else partition ``index``.

    A device file's holdout is ``data.holdout_fraction`` of it, seeded by ``data.seed``. Raises
    ValueError (a DatasetError) naming the file and what is wrong with it.
    """
    if source is None:
        return data.private(index)
    text_field, label_field = source.fields(config.data.text_field, config.data.label_field)
    return device_data(
        source.path,
        label_names=data.dataset.label_names,
        text_field=text_field,
        label_field=label_field,
        holdout_fraction=config.data.holdout_fraction,
        seed=config.data.seed,
    )


class EdgeClient:
    """One edge client's learner, bound to its own data (a device file or its partition) and the shared public pool.

    ``source``: the device's data; by default what ``context``'s node config names (``data-path``), if anything.
    """

    def __init__(self, config: NebulaConfig, index: int, context: Context, *, source: DataSource | None = None) -> None:
        if not 0 <= index < config.data.num_clients:
            raise ValueError(f"client index {index} outside 0..{config.data.num_clients - 1}")
        self.config, self.index, self.context = config, index, context
        self.data: FederationData = build_federation_data(config.data)
        self.source = source if source is not None else data_source(context.node_config)
        self.private = private_data(config, index, self.data, self.source)  # before the model: errors come fast
        self.split = self.private.split
        self.shift: np.ndarray | None = None  # log pi_k - log pi, set each round (logit adjustment)
        self.model_name = config.model.student_for_client(index)
        self.learner = learner_for(config, self.model_name, self.data.num_classes)
        state = context.state.get(STATE_KEY)
        load_trainable_state(
            self.learner.model, state.to_torch_state_dict() if state is not None else self.learner.init_state
        )

    # -- what the server needs to know once -------------------------------------------
    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "num_examples": self.private.num_examples,
            "label_counts": [int(c) for c in self.private.support()],
        }

    # -- one round --------------------------------------------------------------------
    def run_round(
        self,
        *,
        round_index: int,
        targets: bytes | None,
        query_ids: np.ndarray,
        evaluate: bool,
        start_from: dict[str, torch.Tensor] | None = None,
        class_counts: np.ndarray | None = None,
    ) -> RoundOutput:
        """One round.

        ``start_from``: the global student's trainable state to start from (same base model).
        ``class_counts``: the federation's label counts (C,); with ``train.logit_adjust`` the
        revisit fits this client's labels through ``logits + log pi_k - log pi`` (:mod:`nebula.common.priors`).
        """
        cfg, t0, cpu0 = self.config, time.perf_counter(), time.process_time()
        self.shift = self._prior_shift(class_counts)
        if start_from is not None:
            load_trainable_state(self.learner.model, start_from)
        seed = cfg.data.seed * 1000 + round_index * 10 + self.index
        metrics: dict[str, float] = {}
        params = [p for p in self.learner.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr)
        common = dict(
            lr=cfg.train.lr, batch_size=cfg.train.batch_size, micro_batch_size=cfg.train.micro_batch_size, optimizer=opt
        )
        if targets is not None:  # (1) digest the refined targets on last round's public inputs
            metrics["digest_loss"] = self._digest(targets, seed=seed, common=common)
        # (2) revisit private data, (3) answer soft logits on this round's public inputs
        metrics["train_loss"] = self._revisit(round_index, seed=seed + 1, common=common)
        blob = self._answer(query_ids)
        # The round's computation (digest, revisit, answer) in CPU seconds of this process, evaluation not counted:
        # what forgetting by retraining would cost this device again (simulation/unlearning_levels.py).
        metrics["compute_seconds"] = time.process_time() - cpu0
        if evaluate:
            metrics.update(self.evaluate())
        self.context.state[STATE_KEY] = ArrayRecord(torch_state_dict=trainable_state(self.learner.model))
        metrics["seconds"] = time.perf_counter() - t0
        return RoundOutput(blob, metrics)

    def _digest(self, targets: bytes, *, seed: int, common: dict) -> float:
        """The round's step (1): fit the refined targets on last round's public inputs; the mean loss."""
        cfg, tok, model = self.config, self.learner.tokenizer, self.learner.model
        decoded = decode_logits(targets, num_classes=self.data.num_classes)
        self._check_ids(decoded.ids)
        probs = softmax(decoded.logits, temperature=cfg.train.temperature)
        enc = encode(tok, self.data.public_texts(decoded.ids), max_length=cfg.data.max_length)
        res = fit(
            model,
            enc,
            targets=probs,
            epochs=cfg.train.digest_epochs,
            temperature=cfg.train.temperature,
            seed=seed,
            **common,
        )
        return res.mean_loss

    def _revisit(self, round_index: int, *, seed: int, common: dict) -> float:
        """The round's step (2): revisit the private training split; the mean loss."""
        # From round 2 on, also distill from the round-start model's own predictions on these inputs
        # (alpha), so fitting skewed local labels does not erase what was downloaded and digested
        # (FedNTD, Lee et al. 2022; FedLSD). Nothing extra is sent.
        cfg, tok, model = self.config, self.learner.tokenizer, self.learner.model
        enc = encode(tok, self.private.texts(self.split.train), max_length=cfg.data.max_length)
        keep = None
        if round_index > 1 and cfg.train.alpha > 0:
            keep = softmax(predict_logits(model, enc), temperature=cfg.train.temperature)  # (n_train, C)
        res = fit(
            model,
            enc,
            labels=self.private.labels(self.split.train),
            targets=keep,
            alpha=cfg.train.alpha,
            logit_shift=self.shift,
            temperature=cfg.train.temperature,
            epochs=cfg.train.local_epochs,
            seed=seed,
            **common,
        )
        return res.mean_loss

    def _answer(self, query_ids: np.ndarray) -> bytes:
        """The round's step (3): the wire blob of soft logits on this round's public inputs."""
        cfg, tok, model = self.config, self.learner.tokenizer, self.learner.model
        self._check_ids(query_ids)
        logits = predict_logits(model, encode(tok, self.data.public_texts(query_ids), max_length=cfg.data.max_length))
        return encode_logits(query_ids, logits, dtype=cfg.federation.wire_dtype)

    def _prior_shift(self, class_counts: np.ndarray | None) -> np.ndarray | None:
        if not self.config.train.logit_adjust or class_counts is None:
            return None
        if class_counts.shape != (self.data.num_classes,):
            raise ValueError(
                f"{keys.CLASS_COUNTS} has {class_counts.shape} entries, this client has {self.data.num_classes} classes"
            )
        return prior_shift(self.private.support(), class_counts)

    def evaluate(self) -> dict[str, float]:
        """Accuracy, macro-F1 and top-class share (:mod:`nebula.common.metrics`) on the global test set (the
        model as is: the federation's posterior), and accuracy on the client's own held-out split
        (personalised: plus its prior shift, when it trains with one)."""
        tok, model, max_len = self.learner.tokenizer, self.learner.model, self.config.data.max_length
        test = self.data.test
        logits = predict_logits(model, encode(tok, self.data.texts(test), max_length=max_len))
        acc, f1, share = scores(logits, self.data.labels(test))
        out = {"acc_global": acc, "f1_global": f1, "top_share": share}
        if len(self.split.holdout):
            hold = self.split.holdout
            logits = predict_logits(model, encode(tok, self.private.texts(hold), max_length=max_len))  # (n_hold, C)
            out["acc_own"] = accuracy(logits if self.shift is None else logits + self.shift, self.private.labels(hold))
        return out

    def save(self, folder: Path) -> Path:
        return save_adapter(
            self.learner, folder, label_names=self.data.dataset.label_names, config=self.config, role="client"
        )

    def _check_ids(self, ids: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.data.public)):
            raise ValueError(f"public ids outside 0..{len(self.data.public) - 1}: min {ids.min()}, max {ids.max()}")
