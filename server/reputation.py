"""Reputation weighting: trust each client as far as it has agreed with its cohort, across rounds.

A poisoning client (client/adversary.py) sends well-formed logits, so reply validation accepts
them; what gives it away is that it keeps disagreeing with the others. With the ``K`` accepted
contributions of round ``r`` as probabilities ``p_k = softmax(z_k / T)``, shape (K, N, C)::

    reference   m_n     = argmax_c median_k p_{k,n,c}                  (unweighted, coordinate-wise)
    agreement   a_{k,r} = 1/N sum_n [argmax_c p_{k,n,c} = m_n]
    score       e_{k,r} = a_{k,r}                                      (the client's first round)
                e_{k,r} = MEMORY e_{k,r-1} + (1 - MEMORY) a_{k,r}       (later rounds; a round it sent
                                                                        nothing in leaves it unchanged)
    robust z    z_k     = (e_k - median_j e_j) / max(1.4826 MAD_j e_j, MAD_FLOOR)   over round r's clients
    relative    u_k     = clip((z_k + Z_OUT) / (Z_OUT - Z_IN), 0, 1)
    absolute    v_k     = clip((C e_k - CHANCE_OUT) / (1 - CHANCE_OUT), 0, 1)
    trust       t_k     = min(u_k, v_k)

The relative part: a client within ``Z_IN`` robust deviations below the cohort's median keeps
trust 1, one ``Z_OUT`` or more below it is left out (trust 0: quarantined), and trust falls
linearly in between; only falling short of the cohort costs trust. ``MAD_FLOOR`` keeps a cohort
that agrees almost perfectly from turning a small honest difference into a large z. The absolute
part catches what a small cohort's spread hides (with 3 clients one weak honest client makes the
MAD as large as the gap to an attacker): agreeing with the cohort less often than chance ``1/C``
means answering against it on purpose, so trust falls from 1 at chance to 0 at ``CHANCE_OUT``
times chance. The consensus rule then gets each client's weight and label counts times its trust
(server/consensus.py). With fewer than ``MIN_COHORT`` clients nobody can be told apart from a
majority and every trust is 1.

Why the reference is the median and not the rule's own consensus: it does not depend on the
trust it sets, so (1) an attacker is caught in the round it starts, before it has weighed in,
(2) a client left out is still measured against the same reference and its trust recovers when
it agrees again (no feedback loop keeps it out), and (3) the whole state is a function of the
contributions the ledger stores: :meth:`Reputation.assess` reads the earlier rounds back from
the ledger, so a resumed run (server/resume.py) computes the same trust as an uninterrupted one.

Trust alone does not hold a confident attacker: one that answers most inputs honestly and a few with a
large margin (``flip``) agrees often enough to keep most of its trust, and in the consensus a few
near-certain answers outvote many soft honest ones (the ``class-contrast`` rule fits log-probabilities by
least squares, where a near-zero probability weighs like a shout). So with reputation on, no client may
speak louder than the cohort (:func:`loudness_caps`): each reply's logits are scaled down, never up, to the
cohort's median loudness, where a reply's loudness is the mean over its inputs of the standard deviation of
its logits across classes::

    loudness    L_k = 1/N sum_n std_c z_{k,n,c}
    cap         g_k = min(1, median_j L_j / L_k)          z'_k = g_k z_k   (argmax unchanged; j: trust > 0)

Scaling the logits is a temperature: what a client ranks first stays first, only how sure it claims to be
is bounded by how sure its cohort is.

Contributions keep their example-count weight in the ledger; the trust of each round goes into
the round's summary (metrics.jsonl, ``reputation``) and a log line whenever a client's trust is
below 1 or changes. :meth:`Reputation.trust_at` gives a stored round's trust back from the ledger
alone (for a re-aggregation that should weigh clients as the federation did).

An honest client can look like an attacker for a while: a client whose first model answers one
class the others rarely answer agrees less than chance. Measured on the quick preset with 10
clients (Dirichlet 0.5, seed 0), one honest client was left out in rounds 1 and 2 and trusted
again in round 3; the clean run's accuracies did not fall (benchmarks/adversaries.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits
from nebula.server.ledger import Ledger

log = logging.getLogger(__name__)

MEMORY = 0.5  # weight of the past in the score's moving average
Z_IN = 3.0  # robust deviations below the median a client may fall and keep trust 1
Z_OUT = 6.0  # ... and at which its trust reaches 0
MAD_FLOOR = 0.05  # smallest spread of scores the z-score divides by (agreement is a share in [0, 1])
CHANCE_OUT = 0.5  # agreeing this fraction of chance (1/C) or less: trust 0
MIN_COHORT = 3  # fewer clients in a round: every trust is 1


def agreements(probs: np.ndarray) -> np.ndarray:
    """Each client's share of inputs whose argmax is the cohort's median argmax: (K, N, C) -> (K,)."""
    reference = np.median(probs, axis=0).argmax(axis=1)  # (N,)
    return (probs.argmax(axis=2) == reference[None, :]).mean(axis=1)  # (K,)


def loudness_caps(logits: Sequence[np.ndarray], trust: Sequence[float] | None = None) -> np.ndarray:
    """``g`` (K,) in (0, 1]: the factor each reply's logits are scaled by (module docstring), K arrays (N, C).

    The median is over the replies with ``trust > 0`` (all, when none is given or none has any): a client
    left out has no say in how loud the others may be either.
    """
    loud = np.array([float(np.mean(np.std(np.asarray(z, dtype=np.float64), axis=1))) for z in logits])  # (K,)
    if len(loud) == 0:
        return loud
    counted = np.ones(len(loud), bool) if trust is None else np.asarray(trust, dtype=float) > 0  # (K,)
    centre = float(np.median(loud[counted] if counted.any() else loud))
    return np.where(loud > centre, centre / np.where(loud > 0, loud, 1.0), 1.0)


def scores(history: Sequence[Mapping[str, float]], *, memory: float = MEMORY) -> dict[str, float]:
    """Moving average of each client's agreements over ``history`` (one ``{client: agreement}`` a round, in order)."""
    out: dict[str, float] = {}
    for agreed in history:
        for client, a in agreed.items():
            out[client] = a if client not in out else memory * out[client] + (1.0 - memory) * a
    return out


def trust(
    score: Mapping[str, float],
    *,
    num_classes: int,
    z_in: float = Z_IN,
    z_out: float = Z_OUT,
    mad_floor: float = MAD_FLOOR,
    chance_out: float = CHANCE_OUT,
    min_cohort: int = MIN_COHORT,
) -> dict[str, float]:
    """``{client: trust in [0, 1]}`` from the scores of this round's clients: robust z on median / MAD, and
    agreement against chance ``1/num_classes`` (the module docstring's equations)."""
    if len(score) < min_cohort:
        return {client: 1.0 for client in score}
    e = np.array(list(score.values()))  # (K,)
    centre = np.median(e)
    spread = max(1.4826 * float(np.median(np.abs(e - centre))), mad_floor)
    z = (e - centre) / spread
    relative = np.clip((z + z_out) / (z_out - z_in), 0.0, 1.0)  # (K,)
    absolute = np.clip((num_classes * e - chance_out) / (1.0 - chance_out), 0.0, 1.0)  # (K,)
    t = np.minimum(relative, absolute)
    return {client: float(x) for client, x in zip(score, t, strict=True)}


@dataclass(frozen=True)
class Assessment:
    """One round's reputation: ``trust`` (K,) in the order of the clients given, and per client
    ``{"agreement": a, "score": e, "trust": t}`` for the round's summary."""

    trust: list[float]
    table: dict[str, dict[str, float]]


class Reputation:
    """The rounds' agreements of the run being federated; the trust of each new round.

    The agreements of earlier rounds are read back from ``ledger`` when the run is new to this
    object (a resumed run) or when clients were forgotten since (an unlearning request removed
    their contributions), and kept in memory otherwise.
    """

    def __init__(self, ledger: Ledger, *, temperature: float) -> None:
        self.ledger, self.temperature = ledger, temperature
        self._run: str | None = None
        self._forgotten: set[str] = set()
        self._history: dict[int, dict[str, float]] = {}  # round -> {client: agreement}
        self._classes = 0  # C, from the logits
        self._last_trust: dict[str, float] = {}

    def assess(self, run_id: str, round_index: int, clients: Sequence[str], logits: Sequence[np.ndarray]) -> Assessment:
        """Record round ``round_index``'s agreements of ``clients`` from their ``logits`` (K arrays (N, C), rows
        aligned) and return their trust, which the round's consensus uses."""
        self._sync(run_id)
        if not clients:
            return Assessment([], {})
        probs = np.stack([softmax(z.astype(np.float64), temperature=self.temperature) for z in logits])  # (K, N, C)
        self._history[round_index] = dict(zip(clients, agreements(probs).tolist(), strict=True))
        self._classes = probs.shape[2]
        score, trusted = self._judge(round_index)
        agreed = self._history[round_index]
        table = {c: {"agreement": agreed[c], "score": score[c], "trust": trusted[c]} for c in clients}
        self._log(round_index, table)
        return Assessment([trusted[c] for c in clients], table)

    def trust_at(self, run_id: str, round_index: int) -> dict[str, float]:
        """``{client: trust}`` of a stored round, from the ledger's contributions of rounds up to it (what the
        federation used, unless unlearning has removed contributions since: then what it would use now)."""
        self._sync(run_id)
        return self._judge(round_index)[1] if round_index in self._history else {}

    def _judge(self, round_index: int) -> tuple[dict[str, float], dict[str, float]]:
        """Scores and trust of round ``round_index``'s clients, from the agreements up to that round."""
        past = [self._history[r] for r in sorted(self._history) if r <= round_index]
        score = {c: e for c, e in scores(past).items() if c in self._history[round_index]}
        return score, trust(score, num_classes=self._classes)

    def _sync(self, run_id: str) -> None:
        """Read the agreements of ``run_id``'s stored rounds again when this object does not hold them."""
        forgotten = self.ledger.forgotten_clients()
        if run_id == self._run and forgotten == self._forgotten:
            return
        self._run, self._forgotten, self._history = run_id, forgotten, {}
        rounds: dict[int, list] = {}
        for r, contribution in self.ledger.contributions(run_id):
            rounds.setdefault(r, []).append(contribution)
        for r, contributions in rounds.items():
            ids = contributions[0].public_ids
            logits = [decode_logits(c.payload, expected_ids=ids, legacy=True).logits for c in contributions]
            probs = np.stack([softmax(z.astype(np.float64), temperature=self.temperature) for z in logits])
            self._classes = probs.shape[2]
            self._history[r] = dict(zip((c.client_id for c in contributions), agreements(probs).tolist(), strict=True))

    def _log(self, round_index: int, table: Mapping[str, Mapping[str, float]]) -> None:
        """A line per client whose trust is below 1 or changed: a warning when it changed, else info."""
        for client, row in table.items():
            changed = self._last_trust.get(client, 1.0) != row["trust"]
            if row["trust"] < 1.0 or changed:
                state = "left out" if row["trust"] == 0 else "down-weighted" if row["trust"] < 1 else "trusted again"
                log.log(
                    logging.WARNING if changed else logging.INFO,
                    "round %d: %s %s: agreement %.2f, score %.2f, trust %.2f",
                    round_index,
                    client,
                    state,
                    row["agreement"],
                    row["score"],
                    row["trust"],
                )
            self._last_trust[client] = row["trust"]
