"""TypiClust's parts (common/typical.py): k-means on a case with a known answer, typicality as density."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.common.typical import TypicalError, kmeans, typical_select, typicality


def test_kmeans_separates_well_apart_groups():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(loc=c, scale=0.1, size=(20, 2)) for c in (-5.0, 0.0, 5.0)])
    assign, centres = kmeans(points, 3, seed=0)
    groups = [set(assign[20 * g : 20 * g + 20].tolist()) for g in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set().union(*groups)) == 3
    assert np.allclose(np.sort(centres[:, 0]), [-5, 0, 5], atol=0.1)


def test_kmeans_keeps_every_cluster_used_with_duplicates():
    points = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]])
    assign, _ = kmeans(points, 3, seed=0)
    assert len(np.unique(assign)) >= 2 and assign[5] != assign[0]


def test_typicality_is_highest_at_the_dense_spot():
    points = np.array([[0.0], [0.1], [-0.1], [0.2], [3.0]])
    score = typicality(points, neighbours=2)
    assert score.argmax() == 0 and score.argmin() == 4
    assert typicality(points[:1]).tolist() == [1.0]


@pytest.mark.parametrize(
    ("pool", "kwargs", "match"),
    [
        (np.zeros((0, 3)), {}, "N >= 1"),
        (np.ones(3), {}, r"\(N, D\)"),
        (np.ones((4, 3)), {"labelled": np.ones((2, 2))}, r"\(M, 3\)"),
        (np.array([[np.inf, 0.0]]), {}, "NaN or infinite"),
        (np.ones((4, 3)), {"k": 0}, "k must be an integer >= 1"),
    ],
)
def test_bad_input_is_named(pool, kwargs, match):
    with pytest.raises(TypicalError, match=match):
        typical_select(pool, **({"k": 2} | kwargs))
