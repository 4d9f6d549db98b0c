"""Tests of seeded data partitioning: coverage, reproducibility, skew, errors."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.common.partition import PARTITION_SCHEMES, label_counts, partition_indices

NUM_CLASSES = 10


def _labels(n: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, NUM_CLASSES, size=n)


def _label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the entropy (nats) of the client's label distribution."""
    out = []
    for part in parts:
        p = label_counts(labels, part, NUM_CLASSES) / len(part)
        p = p[p > 0]
        out.append(-(p * np.log(p)).sum())
    return float(np.mean(out))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
@pytest.mark.parametrize("num_clients", [1, 3, 10])
def test_disjoint_and_covering(scheme, num_clients):
    labels = _labels()
    parts = partition_indices(labels, num_clients, scheme=scheme, seed=0)
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert (np.diff(part) > 0).all()  # sorted, no repeats
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(labels)))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_reproducible_with_seed(scheme):
    labels = _labels()
    a = partition_indices(labels, 7, scheme=scheme, seed=42)
    b = partition_indices(labels, 7, scheme=scheme, seed=42)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_another_seed_differs(scheme):
    labels = _labels()
    a = partition_indices(labels, 7, scheme=scheme, seed=1)
    b = partition_indices(labels, 7, scheme=scheme, seed=2)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, b))


def test_iid_sizes_even():
    sizes = [len(p) for p in partition_indices(_labels(1003), 10, scheme="iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_more_skewed():
    labels = _labels(5000)
    skewed = np.mean(
        [_label_entropy(labels, partition_indices(labels, 10, scheme="dirichlet", seed=s, alpha=0.1)) for s in range(3)]
    )
    flat = np.mean(
        [
            _label_entropy(labels, partition_indices(labels, 10, scheme="dirichlet", seed=s, alpha=100.0))
            for s in range(3)
        ]
    )
    assert skewed < flat - 0.5
    assert flat > 0.95 * np.log(NUM_CLASSES)  # large alpha approaches iid


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("min_size", [1, 5, 20])
def test_dirichlet_min_size_respected(alpha, min_size):
    labels = _labels(600)
    parts = partition_indices(labels, 10, scheme="dirichlet", seed=3, alpha=alpha, min_size=min_size)
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_unreachable_min_size_errors():
    labels = np.zeros(100, dtype=int)  # one class: shares are a single Dir(alpha) draw
    with pytest.raises(ValueError, match="min_size=9.*tries"):
        partition_indices(labels, 10, scheme="dirichlet", seed=0, alpha=0.01, min_size=9)
    with pytest.raises(ValueError, match="min_size=11"):
        partition_indices(labels, 10, scheme="dirichlet", seed=0, min_size=11)


def test_shards_give_few_classes_per_client():
    labels = _labels(2000)
    parts = partition_indices(labels, 20, scheme="shards", seed=0, shards_per_client=2)
    classes = [np.count_nonzero(label_counts(labels, p, NUM_CLASSES)) for p in parts]
    assert max(classes) <= 4  # two shards, each spanning at most two adjacent labels
    assert _label_entropy(labels, parts) < _label_entropy(labels, partition_indices(labels, 20, scheme="iid", seed=0))


def test_label_counts():
    labels = np.array([0, 2, 2, 1, 2, 0])
    np.testing.assert_array_equal(label_counts(labels, np.array([1, 2, 5]), 4), [1, 0, 2, 0])
    assert label_counts(labels, np.array([], dtype=int), 3).dtype == np.int64
    with pytest.raises(ValueError, match="num_classes=2"):
        label_counts(labels, np.arange(6), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": -2}, "num_clients"),
        ({"num_clients": 11}, "num_clients=11 exceeds the number of samples"),
        ({"scheme": "pathological"}, "scheme must be one of"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": -1.0}, "alpha must be > 0"),
        ({"scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"scheme": "shards", "shards_per_client": 3, "num_clients": 4}, "shards_per_client=3"),
        ({"labels": np.zeros((5, 2), dtype=int)}, "labels must be 1-D"),
        ({"labels": np.array([0.0, 1.0, 1.0])}, "labels must be integers"),
        ({"labels": np.array([0, -1, 1])}, "labels must be >= 0"),
    ],
)
def test_errors(kwargs, match):
    args = {"labels": np.arange(10) % 3, "num_clients": 2, "scheme": "iid", "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        partition_indices(args.pop("labels"), args.pop("num_clients"), **args)
