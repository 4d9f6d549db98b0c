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
* ``seconds`` and ``speedup`` (the retrained federation's seconds over the mode's);
* ``compute_seconds`` and ``compute_speedup``: the computation itself, in CPU seconds summed over every node
  that did it (the federations: each client's and the teacher node's training, answering and checkpoints, as
  their replies report them, evaluation and model loading not counted; a mode: the server process's CPU time
  for the request, model loading counted), so the ratio does not depend on how many clients ran at once.

A ``sharded:S`` level (simulation/sharded.py) has one mode, ``shard-retrain``, and its own runner
(:func:`sharded_level`): the same figures, the teacher being the shard teachers' ensemble, the parameter
distance the largest over the shard teachers, the reference the sharded federation retrained without the client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nebula.common.canary import Canary
from nebula.common.run_folder import RunFolder
from nebula.server.metrics_log import MetricsLog
from nebula.simulation.sharded import SHARD_RETRAIN

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
    """The last round's mean client accuracy, a fraction like the models' ``acc_test``."""
    accs = [
        r["mean_client_acc"]
        for r in MetricsLog(RunFolder(folder).metrics).read()
        if r.get("mean_client_acc") is not None
    ]
    return accs[-1] if accs else None


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
            figures["compute_seconds"] = float(models["cpu_seconds"]) if "cpu_seconds" in models else None
        else:
            figures |= {"exact": None, "client_rounds": _client_rounds(folder)}
            figures["mean_client_acc"] = _mean_client_acc(folder)
            figures["compute_seconds"] = MetricsLog(RunFolder(folder).metrics).compute_seconds()
        out[variant] = figures
    retrained = out.get(reference, {}).get("compute_seconds")
    for variant in certificates:
        own = out[variant]["compute_seconds"]
        out[variant]["compute_speedup"] = retrained / own if retrained and own else None
    return out


# -- sharded:S: the shard retrained, against the sharded federation retrained ------------------------------------


def _sharded_models(out: Path) -> tuple[list[Path | None], Path]:
    """The shard folders (None: a shard with no client left) and the global student folder a run's manifest names."""
    from nebula.simulation.sharded import Manifest

    manifest = Manifest.read(out)
    return [out / f if f else None for f in manifest.folders], out / manifest.global_student


def _sharded_figures(config, models: tuple[list[Path | None], Path], reference, canary_texts: list[str]) -> dict:
    """Parameter distances to ``reference``'s models (the largest over the shard teachers; the global student) and
    the canary's success on the ensemble teacher and the global student."""
    from nebula.simulation.ensemble import load_global_student, predict, teacher_state

    (shards, student), (ref_shards, ref_student) = models, reference
    teacher = [
        max_abs_difference(teacher_state(a), teacher_state(b)) if a and b else 0.0 if a == b else float("inf")
        for a, b in zip(shards, ref_shards, strict=True)
    ]
    figures = {
        "param_distance": {
            "teacher": max(teacher),
            "student": max_abs_difference(load_global_student(student), load_global_student(ref_student)),
        }
    }
    if canary_texts:
        canary = Canary.parse(config.data.canary)
        answers = predict(config, [s for s in shards if s], student, canary_texts)
        figures["canary_success"] = {m: float(np.mean(np.argmax(answers[m], axis=1) == canary.target)) for m in MODELS}
    return figures


def sharded_level(config, out: Path, client: str, *, say=print) -> dict:
    """``{variant: figures}`` of a ``sharded:S`` level, as :func:`level_summary` gives them for the others: the
    sharded federation (``original``), forgetting ``client`` by retraining its shard (``shard-retrain``), and the
    sharded federation run from scratch without it (``retrained``). ``teacher_acc`` is the shard teachers'
    ensemble's; ``exact`` holds by construction for ``shard-retrain`` and ``param_distance`` measures it."""
    import dataclasses
    import time

    from nebula.common.canary import triggered
    from nebula.common.federation_data import build_federation_data
    from nebula.simulation import sharded

    def run(folder: Path, excluded: set[str]) -> tuple[dict, float]:
        fed = dataclasses.replace(config.federation, output_dir=str(folder), exclude_clients=",".join(sorted(excluded)))
        t0 = time.perf_counter()
        return sharded.run_sharded(dataclasses.replace(config, federation=fed)), time.perf_counter() - t0

    original, seconds_original = run(out / "original", config.federation.excluded())
    say(f"original sharded federation: {seconds_original:.0f} s; forgetting {client}")
    before = _sharded_models(out / "original")
    cost = sharded.forget(out / "original", client)
    say(f"{SHARD_RETRAIN}: {cost['seconds']:.0f} s, {cost['client_rounds']} client-rounds")
    retrained, seconds_retrained = run(out / "retrained", config.federation.excluded() | {client})
    say(f"retrained sharded federation: {seconds_retrained:.0f} s")
    data, canary = build_federation_data(config.data), Canary.parse(config.data.canary)
    texts = []
    if canary is not None:  # the test inputs of other classes, with the trigger (as nebula unlearn benchmark's)
        keep = data.test[data.labels(data.test) != canary.target]
        texts = [triggered(t) for t in data.texts(keep)]
    variants = {  # models, global student figures, client-rounds, seconds, exact
        "original": (before, original["global_student"], original["total"]["client_rounds"], seconds_original, None),
        SHARD_RETRAIN: (
            _sharded_models(out / "original"), cost["global_student"], cost["client_rounds"], cost["seconds"], True
        ),
        "retrained": (
            _sharded_models(out / "retrained"), retrained["global_student"], retrained["total"]["client_rounds"],
            seconds_retrained, None,
        ),
    }  # fmt: skip
    compute = {
        "original": original["total"].get("compute_seconds"),
        SHARD_RETRAIN: cost.get("compute_seconds"),
        "retrained": retrained["total"].get("compute_seconds"),
    }
    reference = variants["retrained"][0]
    summary = {}
    for variant, (models, student, client_rounds, seconds, exact) in variants.items():
        own = compute[variant]
        summary[variant] = {
            "compute_seconds": own,
            "compute_speedup": (
                compute["retrained"] / own if variant == SHARD_RETRAIN and own and compute["retrained"] else None
            ),
            "teacher_acc": student["ensemble_acc"],
            "student_acc": student["student_acc"],
            "exact": exact,
            "canary_success": None,
            **_sharded_figures(config, models, reference, texts),
            "client_rounds": client_rounds,
            "seconds": seconds,
            "speedup": seconds_retrained / seconds if variant == SHARD_RETRAIN else None,
        }
    for figures in summary.values():
        figures["canary_success_retrained"] = summary["retrained"]["canary_success"]
    return summary
