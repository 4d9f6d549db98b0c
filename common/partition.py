"""Partitioning of private data over clients, reproducible from a seed.

Three schemes, the usual ones of the federated-learning literature:

* ``"iid"``: a seeded permutation split into ``num_clients`` near-equal parts.
* ``"dirichlet"``: label skew. For every class ``c`` the clients' shares are drawn as
  ``p_c ~ Dir(alpha * 1_K)`` and the class's examples are cut accordingly (Hsu, Qi & Brown,
  2019; Li et al., 2022, "Federated Learning on Non-IID Data Silos", NIID-Bench). Small
  ``alpha`` gives each client few classes, large ``alpha`` approaches iid. As in NIID-Bench,
  a client that already holds ``n / K`` examples gets no share of later classes, which
  keeps sizes from exploding; the whole draw is repeated (at most ``MAX_DIRICHLET_TRIES``
  times) until every client has at least ``min_size`` examples.
* ``"shards"``: pathological skew (McMahan et al., 2017). Examples are sorted by label,
  cut into ``num_clients * shards_per_client`` contiguous shards, and every client gets
  ``shards_per_client`` random shards. Examples are shuffled (seeded) before the stable
  sort, so a shard holds random members of its class rather than a run of the dataset.

Every function takes its randomness from ``np.random.default_rng(seed)``: the same seed
gives identical output on any machine. ``min_size`` only applies to ``"dirichlet"``: the
other schemes give every client at least ``floor(n / K)`` (iid) or ``shards_per_client``
shards of at least ``floor(n / (K * shards_per_client))`` examples.
"""

from __future__ import annotations

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet", "shards")
MAX_DIRICHLET_TRIES = 1000


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into one index array per client.

    Parameters
    ----------
    labels : array of int, shape (n,)
        Class label of every example, ``>= 0``.
    num_clients : int
        ``K >= 1``, at most ``n``.
    scheme : {"iid", "dirichlet", "shards"}
    seed : int
        Seed of all the randomness.
    alpha : float
        Dirichlet concentration (``"dirichlet"`` only), ``> 0``.
    shards_per_client : int
        Shards per client (``"shards"`` only), ``>= 1`` and ``K * shards_per_client <= n``.
    min_size : int
        Fewest examples per client (``"dirichlet"`` only), ``K * min_size <= n``.

    Returns
    -------
    list of np.ndarray
        ``K`` sorted int64 arrays, pairwise disjoint, whose union is ``range(n)``.

    Raises
    ------
    ValueError
        Naming the argument that is out of range, or when no Dirichlet draw within
        ``MAX_DIRICHLET_TRIES`` gives every client ``min_size`` examples.
    """
    y = _check_labels(labels)
    n = len(y)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"scheme must be one of {PARTITION_SCHEMES}, got {scheme!r}")
    if int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients}")
    num_clients = int(num_clients)
    if num_clients > n:
        raise ValueError(f"num_clients={num_clients} exceeds the number of samples ({n})")
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        parts = _dirichlet(y, num_clients, rng, alpha=alpha, min_size=min_size)
    else:
        parts = _shards(y, num_clients, rng, shards_per_client=shards_per_client)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def label_counts(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of examples of each class among ``labels[indices]``.

    Parameters
    ----------
    labels : array of int, shape (n,)
    indices : array of int, shape (m,)
        Positions in ``labels``.
    num_classes : int
        ``C``; every selected label must be in ``[0, C)``.

    Returns
    -------
    np.ndarray
        int64 ``(C,)``, summing to ``m``.
    """
    y = _check_labels(labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
    selected = y[idx.astype(np.int64)]
    if selected.size and selected.max() >= num_classes:
        raise ValueError(f"labels contain class {int(selected.max())}, but num_classes={num_classes}")
    return np.bincount(selected, minlength=num_classes).astype(np.int64)


def _dirichlet(y: np.ndarray, k: int, rng: np.random.Generator, *, alpha: float, min_size: int) -> list[np.ndarray]:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for the dirichlet scheme, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    n = len(y)
    if k * min_size > n:
        raise ValueError(f"min_size={min_size} for {k} clients needs {k * min_size} samples, only {n} available")
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    cap = n / k  # NIID-Bench: a client holding n / K examples gets no share of later classes
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for members in by_class:
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(k, alpha))  # (K,)
            masked = p * (sizes < cap)
            p = masked / masked.sum() if masked.sum() > 0 else p
            if not np.isfinite(p).all() or p.sum() <= 0:  # tiny alpha can underflow every share
                p = np.full(k, 1.0 / k)
            cuts = (np.cumsum(p) * len(members)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_size:
            return [np.concatenate(chunks) if chunks else np.empty(0, np.int64) for chunks in parts]
    raise ValueError(
        f"no dirichlet partition with at least min_size={min_size} samples per client in "
        f"{MAX_DIRICHLET_TRIES} tries (alpha={alpha}, {k} clients, {n} samples); "
        "raise alpha, lower min_size or use fewer clients"
    )


def _shards(y: np.ndarray, k: int, rng: np.random.Generator, *, shards_per_client: int) -> list[np.ndarray]:
    if int(shards_per_client) != shards_per_client or shards_per_client < 1:
        raise ValueError(f"shards_per_client must be an integer >= 1, got {shards_per_client}")
    num_shards = k * int(shards_per_client)
    if num_shards > len(y):
        raise ValueError(
            f"shards_per_client={shards_per_client} for {k} clients makes {num_shards} shards, "
            f"more than the {len(y)} samples"
        )
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]  # sorted by label, random within a label
    shards = np.array_split(by_label, num_shards)
    owner = rng.permutation(num_shards).reshape(k, int(shards_per_client))  # (K, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owner]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return y
