"""Simulated poisoning clients: a research and robustness tool, for simulations and tests only.

``federation.adversaries = "2:random,5:inverted,3:flip=0>1,7:collude,8:collude"`` makes the listed edge
clients poison what they answer. An adversary trains exactly as an honest client does (its own model,
its metrics and what it learns stay honest); its answer is rewritten on the way out, after the honest
logits were computed and encoded (client/app.py, where ``federation.faults`` acts too). The server
cannot tell such a reply from an honest one by its form: it is well-formed, finite, and of the round's
shape. What an attack does to honest logits ``z`` (N, C), row by row:

==============  ===============================================================================
``random``      ``z' ~ Normal(0, std(z))`` per entry: noise of the honest answer's scale, drawn
                from ``(seed, round, client index)``
``inverted``    ``z' = -INVERT_SCALE * z``: the argmax becomes the class the client finds least
                likely, with more confidence than its honest answer had
``flip=A>B``    targeted: on rows whose honest argmax is ``A``, ``z'_B = max(z) + MARGIN`` (B wins
                confidently); every other row stays honest
``collude``     every colluder answers the same vector on each input: ``MARGIN`` on one class drawn
                from ``(seed, round, public id)`` and 0 elsewhere, so colluders agree with each
                other and not with the data (the class is right about 1/C of the time)
==============  ===============================================================================

The transforms are pure numpy on decoded logits (:data:`ATTACKS`); :func:`poison` decodes a payload,
applies the client's attack and encodes the result in the same wire dtype. The defence is the server's
reputation weighting (server/reputation.py); benchmarks/adversaries.py measures attacks x rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from nebula.common.config import FederationConfig
from nebula.common.wire import decode_logits, encode_logits

INVERT_SCALE = 3.0  # inverted answers are this many times as confident as the honest ones
MARGIN = 6.0  # logit lead of a forced class: softmax gives it about 0.99 against two others at the top


@dataclass(frozen=True)
class Round:
    """Where an attack acts: the public ids ``(N,)`` of the answer, the round, the client, the run's seed."""

    ids: np.ndarray
    round_index: int
    client_index: int
    seed: int


def random_logits(z: np.ndarray, at: Round) -> np.ndarray:
    """Gaussian noise of the honest logits' scale: (N, C) -> (N, C)."""
    rng = np.random.default_rng([at.seed, at.round_index, at.client_index])
    scale = float(z.std()) or 1.0
    return rng.normal(0.0, scale, size=z.shape)


def inverted_logits(z: np.ndarray, at: Round) -> np.ndarray:
    """``-INVERT_SCALE * z``: the least likely class wins, confidently (N, C) -> (N, C)."""
    return -INVERT_SCALE * z


def flipped_logits(z: np.ndarray, at: Round, *, source: int, target: int) -> np.ndarray:
    """Rows whose argmax is ``source`` answer ``target`` by ``MARGIN``; other rows unchanged (N, C) -> (N, C)."""
    for name, c in (("source", source), ("target", target)):
        if not 0 <= c < z.shape[1]:
            raise ValueError(f"flip {source}>{target}: {name} class {c} is not one of the {z.shape[1]} classes")
    out = z.copy()
    rows = z.argmax(axis=1) == source  # (N,)
    out[rows, target] = z[rows].max(axis=1) + MARGIN
    return out


def colluding_logits(z: np.ndarray, at: Round) -> np.ndarray:
    """The colluders' shared answer: ``MARGIN`` on :func:`collusion_classes`, 0 elsewhere (N, C) -> (N, C)."""
    out = np.zeros_like(z)
    classes = collusion_classes(at.ids, num_classes=z.shape[1], seed=at.seed, round_index=at.round_index)  # (N,)
    out[np.arange(len(z)), classes] = MARGIN
    return out


def collusion_classes(ids: np.ndarray, *, num_classes: int, seed: int, round_index: int) -> np.ndarray:
    """One class per public id, ``(N,)`` int64, from ``(seed, round, id)`` alone: the same on every colluder.

    A splitmix64 hash of ``id * G + seed * P + round`` (``G``, ``P`` odd 64-bit constants), modulo ``C``.
    """
    u = np.uint64
    with np.errstate(over="ignore"):  # the hash wraps around 2**64 on purpose
        x = ids.astype(u) * u(0x9E3779B97F4A7C15) + u(seed) * u(0xD1B54A32D192ED03) + u(round_index)
        x = (x ^ (x >> u(30))) * u(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> u(27))) * u(0x94D049BB133111EB)
        x = x ^ (x >> u(31))
    return (x % u(num_classes)).astype(np.int64)


Attack = Callable[[np.ndarray, Round], np.ndarray]
ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "random": random_logits,
    "inverted": inverted_logits,
    "flip": flipped_logits,
    "collude": colluding_logits,
}


def parse_adversaries(spec: str) -> dict[int, Attack]:
    """``{client index: attack}`` of a ``federation.adversaries`` spec.

    Raises
    ------
    ConfigError
        Naming the malformed or repeated entry (the grammar is ``FederationConfig.adversary_kinds``).
    """
    attacks: dict[int, Attack] = {}
    for index, (kind, args) in FederationConfig(adversaries=spec).adversary_kinds().items():
        attacks[index] = partial(ATTACKS[kind], source=args[0], target=args[1]) if args else ATTACKS[kind]
    return attacks


def poison(blob: bytes, *, spec: str, client_index: int, round_index: int, seed: int, dtype: str) -> bytes:
    """``blob`` (a wire payload, common/wire.py) as client ``client_index`` sends it under ``spec``.

    An honest client's payload is returned as it is; an adversary's is decoded, attacked and encoded
    again in ``dtype`` (the federation's wire dtype).
    """
    attack = parse_adversaries(spec).get(client_index)
    if attack is None:
        return blob
    honest = decode_logits(blob)
    z = honest.logits.astype(np.float64)  # (N, C)
    poisoned = attack(z, Round(honest.ids, round_index, client_index, seed))  # (N, C)
    return encode_logits(honest.ids, poisoned.astype(np.float32), dtype=dtype)
