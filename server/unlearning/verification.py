"""Verification of unlearning: accuracy and a membership-inference attack, from model logits.

Pure numpy: no model, no disk. The benchmark (simulation/unlearning_benchmark.py) computes the
logits of each model (original, each mode, retrained without the client) on four sets and calls
:func:`verification_rows`.

Sets, by name (:data:`SETS`):

* ``forgotten``: the forgotten client's private training examples (the members of the attack),
* ``forgotten_holdout``: its held-out examples, never trained on by anyone: non-members from the
  same (label-skewed) distribution,
* ``others``: the other clients' private training examples,
* ``test``: the global test set.

**Membership inference** (loss attack, Yeom et al. 2018): the attacker scores each example by the
model's negative cross-entropy loss on it, ``-l(x, y)``; a model that learnt an example tends to
have a lower loss there. The AUC of that score, members against non-members, is 0.5 when the
attack cannot tell them apart and 1.0 when every member scores above every non-member. A model
retrained without the client sets the reference: its AUC is what an attacker gets from the
distribution alone.

**How sure.** At a benchmark's scale the forgotten client has a few hundred members and a few dozen
non-members, so an AUC carries a standard error of about 0.04 and an accuracy several points. The
gaps against the retrained model are therefore given with a paired bootstrap interval
(:func:`gap_intervals`): members and non-members are resampled with replacement, the same draw for
the model and the reference, and the 2.5th and 97.5th percentiles of the gap are reported. An
interval that holds 0 means the data cannot tell the model from the retrained one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SETS = ("forgotten", "forgotten_holdout", "others", "test")
REFERENCE = "retrained"


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example loss ``-log softmax(z)_y``: logits ``(N, C)``, labels ``(N,)`` -> ``(N,)`` float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))  # (N,)
    return log_norm - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax is the label; NaN for an empty set."""
    labels = np.asarray(labels)
    return float((np.asarray(logits).argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ``(N,)``, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC = P(s+ > s-) + P(s+ = s-) / 2, by the Mann-Whitney U statistic on average ranks.

    ``positive`` ``(P,)`` and ``negative`` ``(Q,)`` scores, higher meaning "more likely positive".
    NaN when either set is empty.
    """
    pos, neg = np.asarray(positive, dtype=np.float64).ravel(), np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def mia_auc(
    member_logits: np.ndarray, member_labels: np.ndarray, nonmember_logits: np.ndarray, nonmember_labels: np.ndarray
) -> float:
    """AUC of the loss attack: score ``-cross_entropy``, members against non-members."""
    return rank_auc(-cross_entropy(member_logits, member_labels), -cross_entropy(nonmember_logits, nonmember_labels))


def verification_row(logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One model's figures: accuracy on the forgotten client's data, the others' data and the test set,
    and the membership-inference AUC; ``logits`` and ``labels`` keyed by :data:`SETS`."""
    missing = [s for s in SETS if s not in logits or s not in labels]
    if missing:
        raise ValueError(f"verification needs logits and labels for every set; missing {missing}")
    return {
        "acc_forgotten": accuracy(logits["forgotten"], labels["forgotten"]),
        "acc_others": accuracy(logits["others"], labels["others"]),
        "acc_test": accuracy(logits["test"], labels["test"]),
        "mia_auc": mia_auc(
            logits["forgotten"], labels["forgotten"], logits["forgotten_holdout"], labels["forgotten_holdout"]
        ),
    }


def gap_intervals(
    logits: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    draws: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Paired bootstrap intervals of the gaps of one model against the reference model.

    ``logits`` and ``reference``: ``{set: (N_set, C)}`` for ``forgotten`` and ``forgotten_holdout``;
    ``labels``: ``{set: (N_set,)}``. Each draw resamples the members (``forgotten``) and the
    non-members (``forgotten_holdout``) with replacement and computes, on the same rows for both
    models, ``100 * (acc - acc_ref)`` on the members and ``auc - auc_ref`` of the loss attack.
    Returns ``{"d_acc_forgotten": (lo, hi), "d_mia_auc": (lo, hi)}``, the central ``level`` interval;
    NaNs when a set is empty.
    """
    if not 0.0 < level < 1.0 or draws < 1:
        raise ValueError(f"gap_intervals needs 0 < level < 1 and draws >= 1, got level={level}, draws={draws}")
    members, holdout = np.asarray(labels["forgotten"]), np.asarray(labels["forgotten_holdout"])
    if len(members) == 0 or len(holdout) == 0:
        return {"d_acc_forgotten": (float("nan"), float("nan")), "d_mia_auc": (float("nan"), float("nan"))}
    # per-example figures of each model: correct on the members, attack score on both sets
    right = {k: np.asarray(z["forgotten"]).argmax(axis=1) == members for k, z in (("m", logits), ("r", reference))}
    score_in = {k: -cross_entropy(z["forgotten"], members) for k, z in (("m", logits), ("r", reference))}
    score_out = {k: -cross_entropy(z["forgotten_holdout"], holdout) for k, z in (("m", logits), ("r", reference))}
    rng = np.random.default_rng(seed)
    acc_gaps, auc_gaps = np.empty(draws), np.empty(draws)
    for d in range(draws):
        i, j = rng.integers(0, len(members), len(members)), rng.integers(0, len(holdout), len(holdout))
        acc_gaps[d] = 100.0 * (right["m"][i].mean() - right["r"][i].mean())
        auc_gaps[d] = rank_auc(score_in["m"][i], score_out["m"][j]) - rank_auc(score_in["r"][i], score_out["r"][j])
    tail = 100.0 * (1.0 - level) / 2.0
    return {
        name: (float(np.percentile(g, tail)), float(np.percentile(g, 100.0 - tail)))
        for name, g in (("d_acc_forgotten", acc_gaps), ("d_mia_auc", auc_gaps))
    }


def verification_rows(
    logits: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    labels: Mapping[str, np.ndarray],
    *,
    seconds: Mapping[str, float] | None = None,
    reference: str = REFERENCE,
) -> list[dict]:
    """The verification table, one row per (variant, model).

    Parameters
    ----------
    logits : ``{variant: {model: {set: (N_set, C) logits}}}``; variants such as ``original``, each mode,
        ``retrained``; models such as ``teacher``, ``student``.
    labels : ``{set: (N_set,) labels}``.
    seconds : ``{variant: wall seconds}``; a row's ``speedup`` is the reference's seconds over its own.
    reference : the variant the gaps are measured against (a model retrained without the client).

    Returns
    -------
    list of dicts with ``variant, model, acc_forgotten, acc_others, acc_test, mia_auc``, the gaps
    ``d_acc_forgotten`` (accuracy points) and ``d_mia_auc`` against the reference's same model (None
    without one) with their 95% paired bootstrap intervals ``d_acc_forgotten_ci``, ``d_mia_auc_ci``
    (``(lo, hi)``, None for the reference itself), ``seconds`` and ``speedup`` (None where unknown).
    """
    seconds = seconds or {}
    figures = {(v, m): verification_row(sets, labels) for v, models in logits.items() for m, sets in models.items()}
    rows = []
    for (variant, model), row in figures.items():
        ref = figures.get((reference, model))
        own, ref_s = seconds.get(variant), seconds.get(reference)
        ci = (
            gap_intervals(logits[variant][model], logits[reference][model], labels)
            if ref is not None and variant != reference
            else {}
        )
        rows.append(
            {
                "variant": variant,
                "model": model,
                **row,
                "d_acc_forgotten": None if ref is None else 100.0 * (row["acc_forgotten"] - ref["acc_forgotten"]),
                "d_acc_forgotten_ci": ci.get("d_acc_forgotten"),
                "d_mia_auc": None if ref is None else row["mia_auc"] - ref["mia_auc"],
                "d_mia_auc_ci": ci.get("d_mia_auc"),
                "seconds": own,
                "speedup": ref_s / own if own and ref_s is not None and variant != reference else None,
            }
        )
    return rows


def _with_interval(key: str, title: str, fmt: str) -> tuple[tuple[str, str, str], ...]:
    """A gap's column and the column of its 95% interval (``<key>_ci``)."""
    return (key, title, fmt), (f"{key}_ci", "95% interval", f"[{fmt}, {fmt}]")


COLUMNS = (
    ("variant", "variant", "{}"),
    ("model", "model", "{}"),
    *((f"acc_{part}", f"{part} acc", "{:.1%}") for part in ("forgotten", "others", "test")),
    ("mia_auc", "MIA AUC", "{:.3f}"),
    *_with_interval("d_acc_forgotten", "gap forgotten acc (pts)", "{:+.1f}"),
    *_with_interval("d_mia_auc", "gap AUC", "{:+.3f}"),
    ("seconds", "seconds", "{:.1f}"),
    ("speedup", "x faster than retraining", "{:.1f}"),
)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (gaps against the retrained model; '-' where not applicable)."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, fmt: str) -> str:
    """'-' for None or NaN (alone or inside an interval), else ``fmt`` applied to the value (or the pair)."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if value is None or any(v is None or (isinstance(v, float) and v != v) for v in parts):
        return "-"
    return fmt.format(*parts)
