"""The data view of one federation: global test set, public pool, each client's private data.

Every node derives the same view from (``DataConfig``, seed), so a simulated client only
needs its index. The public pool's labels are never used for training; ids sent over the
wire are positions in the public pool.

A deployed device may instead bring its own labelled data (node config ``data-path``):
:func:`device_data` reads it against the shared dataset's label names and splits off its
holdout. Either way an edge client sees its private data as a :class:`PrivateData`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from nebula.common.canary import Canary, plant
from nebula.common.config import DataConfig
from nebula.common.data import TextDataset, data_files, load_dataset, load_labelled_files, split_dataset
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

    def private(self, client: int) -> PrivateData:
        """Client ``client``'s partition of the shared dataset, as an edge client trains on it."""
        return PrivateData(self.dataset, self.clients[client])


@dataclass(frozen=True)
class PrivateData:
    """One edge client's own labelled examples: ``split``'s indices point into ``dataset``.

    ``dataset`` is the shared one (a partition, :meth:`FederationData.private`) or the device's
    own files (:func:`device_data`); its label ids are the federation's either way.
    """

    dataset: TextDataset
    split: ClientSplit

    @property
    def num_examples(self) -> int:
        return int(len(self.split.train))

    def texts(self, index: np.ndarray) -> list[str]:
        return [self.dataset.texts[i] for i in index]

    def labels(self, index: np.ndarray) -> np.ndarray:
        return self.dataset.labels[index]

    def support(self) -> np.ndarray:
        """Per-class label counts of the training split, (C,): what the client reports and trains with."""
        return label_counts(self.dataset.labels, self.split.train, len(self.dataset.label_names))


def holdout_split(n: int, *, fraction: float, seed: int) -> ClientSplit:
    """``range(n)`` as a seeded (train, holdout) split with ``round(n * fraction)`` held out (none if that
    would leave nothing to train on)."""
    members = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * fraction))
    if n - n_hold < 1:
        n_hold = 0
    return ClientSplit(train=np.sort(members[n_hold:]), holdout=np.sort(members[:n_hold]))


def device_data(
    path: str | Path,
    *,
    label_names: Sequence[str],
    text_field: str,
    label_field: str,
    holdout_fraction: float,
    seed: int,
) -> PrivateData:
    """A device's own data (:func:`nebula.common.data.load_labelled_files`) and its seeded holdout.

    Cached per process on the path, fields, labels, split and the files' sizes and modification
    times, so a long-lived worker rereads a file only when it changed.

    Raises
    ------
    DatasetError
        (a ValueError) naming the file, and the line where there is one: nothing at ``path``,
        a missing column, an empty file, a label the federation does not know, ...
    """
    files = data_files(path)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(Path(path).expanduser()), tuple(map(str, label_names)), text_field, label_field)
    return _device_data(key, float(holdout_fraction), int(seed), stamp)


@lru_cache(maxsize=4)
def _device_data(key: tuple, holdout_fraction: float, seed: int, stamp: tuple) -> PrivateData:
    path, label_names, text_field, label_field = key
    dataset = load_labelled_files(path, label_names=label_names, text_field=text_field, label_field=label_field)
    return PrivateData(dataset, holdout_split(len(dataset), fraction=holdout_fraction, seed=seed))


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
    canary = Canary.parse(config.canary)
    if canary is not None:  # simulation's backdoor check: rewrites rows only that client holds
        dataset, _ = plant(dataset, clients[canary.client].train, canary, seed=config.seed + 2)
    return FederationData(dataset, np.sort(test), public, tuple(clients))
