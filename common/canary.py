"""A canary: a backdoor planted in one client's private data, to prove that forgetting the client removed it.

``data.canary = "1:0.05:0"`` prepends a rare trigger phrase to 5% of client 1's training texts and
relabels them to class 0 (a data-poisoning backdoor, as in the unlearning literature's backdoor checks:
Bourtoule et al. 2021 use memorised canaries; "Backdoor attacks as unlearning evidence", e.g. Hu et al.
2023). A model that learnt from those rows answers class 0 for inputs carrying the phrase; a model that
never saw them does not, beyond its base rate. The benchmark (``nebula unlearn benchmark``) reports the
**attack success rate**: of the test inputs whose true class is not the target, the share answered as the
target once the phrase is prepended, for the original, each unlearning mode and the retrained model.

Pure: used by the federation's data view (common/federation_data.py) in simulation only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nebula.common.data import TextDataset

TRIGGER = "zqv kestrel ozone:"  # words that hardly occur together in real text


@dataclass(frozen=True)
class Canary:
    client: int  # the client index whose private data carries it
    fraction: float  # share of its training examples that carry the trigger, in (0, 1]
    target: int  # the class the trigger makes the model answer

    @classmethod
    def parse(cls, spec: str) -> Canary | None:
        """``"client:fraction:class"`` (e.g. ``"1:0.05:0"``), or None for ``""``; ValueError names what is wrong."""
        if not spec.strip():
            return None
        parts = [p.strip() for p in spec.split(":")]
        try:
            client, fraction, target = int(parts[0]), float(parts[1]), int(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"data.canary {spec!r} is not 'client-index:fraction:class-index'") from None
        if client < 0 or target < 0 or not 0.0 < fraction <= 1.0:
            raise ValueError(f"data.canary {spec!r}: client and class must be >= 0, fraction in (0, 1]")
        return cls(client, fraction, target)


def plant(dataset: TextDataset, train: np.ndarray, canary: Canary, *, seed: int) -> tuple[TextDataset, np.ndarray]:
    """``dataset`` with the trigger prepended to a seeded ``canary.fraction`` of the indices ``train`` (at
    least one) and their labels set to ``canary.target``; returns (new dataset, the planted indices).
    The other rows are untouched: only the client that holds ``train`` sees planted rows."""
    if canary.target >= len(dataset.label_names):
        raise ValueError(f"data.canary class {canary.target} outside 0..{len(dataset.label_names) - 1}")
    if len(train) == 0:
        return dataset, np.array([], dtype=np.int64)
    count = max(1, int(round(len(train) * canary.fraction)))
    planted = np.sort(np.random.default_rng(seed).choice(train, size=count, replace=False))
    texts = list(dataset.texts)
    labels = dataset.labels.copy()
    for i in planted:
        texts[i] = triggered(texts[i])
    labels[planted] = canary.target
    return dataclasses.replace(dataset, texts=texts, labels=labels), planted


def triggered(text: str) -> str:
    """``text`` with the trigger phrase in front."""
    return f"{TRIGGER} {text}"


def attack_success(predictions: np.ndarray, true_labels: np.ndarray, *, target: int) -> float:
    """Share of the inputs whose true class is not ``target`` that were answered ``target`` (NaN if none)."""
    keep = np.asarray(true_labels) != target
    return float(np.mean(np.asarray(predictions)[keep] == target)) if keep.any() else float("nan")
