"""Typical-example selection for small labelling budgets (TypiClust: Hacohen, Dekel & Weinshall, ICML 2022).

With few labels, the most uncertain inputs of a weak model are mostly ambiguous or noisy ones, and the
farthest-first (k-center) picks are outliers; what helps most is covering the data with *typical* examples,
one per region not yet labelled. Given embeddings of the unlabelled pool ``X`` (N, D) and of the rows already
labelled ``L`` (M, D):

1. cluster ``X ∪ L`` into ``K = M + k`` clusters with k-means (k-means++ seeding, Lloyd iterations;
   Arthur & Vassilvitskii 2007), at most ``max_clusters``;
2. ``k`` times: take the cluster that holds the fewest labelled rows (ties: the largest), among clusters of
   at least ``min_cluster_size`` rows (all clusters where none is that large), and pick its most typical
   unlabelled row,

   ``typicality(x) = ( (1 / K') * sum_{x_i in KNN(x)} ||x - x_i|| )^-1``, ``K' = min(neighbours, |cluster| - 1)``,

   the inverse mean distance to its ``K'`` nearest neighbours within the cluster (a density estimate); the
   pick counts as labelled from then on.

Embeddings are L2-normalised first (sentence embeddings compare by cosine). numpy only, deterministic for a
given ``seed``; 1.4-2 s for 2,100 rows x 384 dimensions x 300 clusters, measured on the 2-core
machine beside another benchmark.
"""

from __future__ import annotations

import numpy as np


class TypicalError(ValueError):
    """Bad input to :func:`typical_select`: names what was wrong."""


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from k-means++ seeding: ``(assignment (N,) int64, centres (k, D))``.

    A cluster left empty by an iteration is moved to the point farthest from its centre (so ``k`` stay used).
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(n)]
    closest = ((points - centres[0]) ** 2).sum(axis=1)  # (N,) squared distance to the nearest centre
    for j in range(1, k):
        total = closest.sum()
        nxt = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[j] = points[nxt]
        closest = np.minimum(closest, ((points - centres[j]) ** 2).sum(axis=1))
    assign = np.full(n, -1, dtype=np.int64)
    sq_points = (points**2).sum(axis=1)[:, None]  # (N, 1)
    for _ in range(iterations):
        dist = sq_points - 2 * points @ centres.T + (centres**2).sum(axis=1)[None, :]  # (N, k)
        new = dist.argmin(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = assign == j
            if members.any():
                centres[j] = points[members].mean(axis=0)
            else:  # re-seed on the worst-served point
                far = int(dist[np.arange(n), assign].argmax())
                centres[j], assign[far] = points[far], j
    return assign, centres


def typicality(points: np.ndarray, *, neighbours: int = 20) -> np.ndarray:
    """(n, D) -> (n,): inverse mean Euclidean distance to each row's ``min(neighbours, n - 1)`` nearest others.

    A lone row (n = 1) gets typicality 1.
    """
    n = len(points)
    if n == 1:
        return np.ones(1)
    sq = (points**2).sum(axis=1)
    dist = np.sqrt(np.clip(sq[:, None] - 2 * points @ points.T + sq[None, :], 0.0, None))  # (n, n)
    np.fill_diagonal(dist, np.inf)
    near = np.sort(dist, axis=1)[:, : min(neighbours, n - 1)]  # (n, K')
    return 1.0 / (near.mean(axis=1) + 1e-12)


def typical_select(
    pool: np.ndarray,
    k: int,
    *,
    labelled: np.ndarray | None = None,
    seed: int = 0,
    neighbours: int = 20,
    min_cluster_size: int = 5,
    max_clusters: int = 500,
) -> np.ndarray:
    """Indices into ``pool`` (N, D) of ``min(k, N)`` typical rows, one per least-covered cluster (module docstring).

    Parameters
    ----------
    pool : np.ndarray, shape (N, D)
        Embeddings of the unlabelled candidates.
    k : int
        Rows to pick.
    labelled : np.ndarray, shape (M, D), optional
        Embeddings of the rows already labelled (the device's own data): regions they cover come last.
    seed : int
        Of the k-means seeding.

    Returns
    -------
    np.ndarray of int64, shape (min(k, N),), in the order picked
    """
    pool = np.asarray(pool, dtype=np.float64)
    if pool.ndim != 2 or len(pool) == 0:
        raise TypicalError(f"pool must be (N, D) embeddings with N >= 1, got shape {pool.shape}")
    done = np.zeros((0, pool.shape[1])) if labelled is None else np.asarray(labelled, dtype=np.float64)
    if done.ndim != 2 or done.shape[1] != pool.shape[1]:
        raise TypicalError(f"labelled must be (M, {pool.shape[1]}) like the pool, got shape {done.shape}")
    if not (np.isfinite(pool).all() and np.isfinite(done).all()):
        raise TypicalError("embeddings hold NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TypicalError(f"k must be an integer >= 1, got {k!r}")
    k = min(int(k), len(pool))
    points = np.concatenate([pool, done])
    points = points / np.clip(np.linalg.norm(points, axis=1, keepdims=True), 1e-12, None)
    n_pool = len(pool)
    assign, _ = kmeans(points, min(len(done) + k, max_clusters, len(points)), seed=seed)
    clusters = np.unique(assign)
    size = np.bincount(assign, minlength=clusters.max() + 1)
    covered = np.bincount(assign[n_pool:], minlength=len(size)).astype(np.int64)  # labelled rows per cluster
    eligible = [c for c in clusters if size[c] >= min_cluster_size] or list(clusters)
    taken = np.zeros(n_pool, dtype=bool)
    score_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    picked: list[int] = []
    while len(picked) < k:
        untaken = set(assign[:n_pool][~taken].tolist())
        open_ = [c for c in eligible if c in untaken] or sorted(untaken)  # then the small clusters too
        if not open_:
            break
        c = min(open_, key=lambda c: (covered[c], -size[c], c))
        if c not in score_cache:
            members = np.flatnonzero(assign == c)
            score_cache[c] = (members, typicality(points[members], neighbours=neighbours))
        members, score = score_cache[c]
        order = [m for m in members[np.argsort(-score, kind="stable")] if m < n_pool and not taken[m]]
        taken[order[0]] = True
        covered[c] += 1
        picked.append(int(order[0]))
    return np.asarray(picked, dtype=np.int64)
