"""The data view of one federation: global test set, public pool, each client's private data.

Every node derives the same view from (``DataConfig``, seed), so a simulated client only
needs its index. The public pool's labels are never used for training; ids sent over the
wire are positions in the public pool.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nebula.common.config import DataConfig
from nebula.common.data import TextDataset, load_dataset, split_dataset
from nebula.common.partition import label_counts, partition_indices


@dataclass(frozen=True)
class ClientSplit:
    train: np.ndarray  # indices into the dataset, (n_train,)
    holdout: np.ndarray  # indices into the dataset, (n_holdout,): the client's own test


@dataclass(frozen=True)
class FederationData:
    dataset: TextDataset
    test: np.ndarray  # dataset indices of the global test set
    public: np.ndarray  # dataset indices of the public pool; wire id i -> public[i]
    clients: tuple[ClientSplit, ...]

    @property
    def num_classes(self) -> int:
        return len(self.dataset.label_names)

    def texts(self, index: np.ndarray) -> list[str]:
        return [self.dataset.texts[i] for i in index]

    def labels(self, index: np.ndarray) -> np.ndarray:
        return self.dataset.labels[index]

    def public_texts(self, ids: np.ndarray) -> list[str]:
        return self.texts(self.public[ids])

    def support(self, client: int) -> np.ndarray:
        """Per-class label counts of a client's training split, (C,)."""
        split = self.clients[client]
        return label_counts(self.dataset.labels, split.train, self.num_classes)

    def pooled_train(self) -> np.ndarray:
        return np.sort(np.concatenate([c.train for c in self.clients]))


def build_federation_data(config: DataConfig) -> FederationData:
    """Split and partition as ``config`` says (cached per process)."""
    return _build(dataclasses.astuple(config))


@lru_cache(maxsize=4)
def _build(key: tuple) -> FederationData:
    config = DataConfig(*key)
    dataset = load_dataset(config.dataset, text_field=config.text_field, label_field=config.label_field)
    test, public, private = split_dataset(
        len(dataset.labels), test=config.test_size, public=config.public_size, seed=config.seed
    )
    if config.private_size:
        if config.private_size > len(private):
            raise ValueError(
                f"data.private_size={config.private_size} but only {len(private)} examples remain "
                f"after test ({config.test_size}) and public ({config.public_size})"
            )
        private = private[: config.private_size]
    parts = partition_indices(
        dataset.labels[private],
        config.num_clients,
        scheme=config.partition,
        seed=config.seed,
        alpha=config.dirichlet_alpha,
        shards_per_client=config.shards_per_client,
    )
    rng = np.random.default_rng(config.seed + 1)
    clients = []
    for part in parts:
        members = rng.permutation(private[part])
        n_hold = int(round(len(members) * config.holdout_fraction))
        if len(members) - n_hold < 1:
            n_hold = 0
        clients.append(ClientSplit(train=np.sort(members[n_hold:]), holdout=np.sort(members[:n_hold])))
    return FederationData(dataset, np.sort(test), public, tuple(clients))
