"""The per-mode figures of ``nebula unlearn benchmark`` that decide between isolation levels (issue: exact
forgetting by design): for the original, each mode and the retrained federation,

* ``teacher_acc``, ``student_acc``: accuracy on the global test set (%);
* ``exact``: what the mode's signed certificate states (server/unlearning/models.py, ``exactness``);
* ``param_distance``: the largest absolute difference of any trainable parameter (LoRA and head) of the
  teacher and of the global student from the retrained federation's (0.0: equal bit for bit);
* ``canary_success``: the backdoor's attack success rate (``data.canary``, common/canary.py) on the teacher
  and the global student, beside the retrained model's (``canary_success_retrained``);
* ``client_rounds``: client-rounds of computation the variant needed (the retrained federation: every
  contribution in its ledger; the unlearning modes run on the server alone: 0);
* ``seconds`` and ``speedup`` (the retrained federation's seconds over the mode's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nebula.common.canary import Canary
from nebula.common.run_folder import RunFolder

MODELS = ("teacher", "student")


def max_abs_difference(a: Mapping, b: Mapping) -> float:
    """Largest ``|a[k] - b[k]|`` over the tensors of two states with the same names and shapes."""
    if a.keys() != b.keys():
        raise ValueError(f"states differ in names: {sorted(set(a) ^ set(b))[:3]}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a) if a else 0.0


def _states(folder: Path) -> dict[str, Mapping]:
    from nebula.server.ledger import Ledger
    from nebula.server.unlearning import models as store

    ledger = Ledger(RunFolder(folder).ledger)
    try:
        run = store.run_of(ledger, folder)
    finally:
        ledger.close()
    return dict(zip(MODELS, store.current_states(run)[:2], strict=True))


def _client_rounds(folder: Path) -> int:
    from nebula.server.ledger import Ledger

    ledger = Ledger(RunFolder(folder).ledger)
    try:
        return sum(len(ledger.contributions(run)) for run in ledger.runs())
    finally:
        ledger.close()


def _mean_client_acc(folder: Path) -> float | None:
    path = RunFolder(folder).metrics
    rounds = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    accs = [r["mean_client_acc"] for r in rounds if r.get("mean_client_acc") is not None]
    return 100.0 * accs[-1] if accs else None


def level_summary(
    folders: Mapping[str, Path],
    logits: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    rows: list[dict],
    certificates: Mapping[str, Path],
    seconds: Mapping[str, float],
    *,
    canary: Canary | None,
    reference: str = "retrained",
) -> dict:
    """``{variant: figures}`` as the module docstring lists them; ``folders`` and ``logits`` keyed by variant
    (``original``, each mode, ``retrained``), ``rows`` from ``verification_rows``."""
    acc = {(r["variant"], r["model"]): r["acc_test"] for r in rows}
    states = {variant: _states(folder) for variant, folder in folders.items()}
    canaries = {
        (variant, model): float(np.mean(np.argmax(sets["canary"], axis=1) == canary.target))
        for variant, models in logits.items()
        for model, sets in models.items()
        if canary is not None and "canary" in sets
    }
    out = {}
    for variant, folder in folders.items():
        figures = {
            "teacher_acc": acc.get((variant, "teacher")),
            "student_acc": acc.get((variant, "student")),
            "param_distance": {m: max_abs_difference(states[variant][m], states[reference][m]) for m in MODELS},
            "canary_success": {m: canaries.get((variant, m)) for m in MODELS},
            "canary_success_retrained": {m: canaries.get((reference, m)) for m in MODELS},
            "seconds": seconds.get(variant),
        }
        if variant in certificates:
            models = json.loads(Path(certificates[variant]).read_text()).get("models") or {}
            figures |= {"exact": bool(models.get("exact", False)), "client_rounds": 0}
            figures["speedup"] = seconds[reference] / seconds[variant] if seconds.get(variant) else None
        else:
            figures |= {"exact": None, "client_rounds": _client_rounds(folder)}
            figures["mean_client_acc"] = _mean_client_acc(folder)
        out[variant] = figures
    return out
