"""Poisoned clients: accuracy of each aggregation rule under each attack, against the same rule without one.

A cell is one simulated federation (the path ``nebula simulate`` takes: preset, preflight, Flower's
simulation engine) with a share of the clients adversarial (``federation.adversaries``, client/adversary.py;
by default 20%: 2 of 10, the last client indices) and one rule: ``class-contrast``, ``robust-contrast``, ``median``,
``trimmed-mean`` (reputation off) or a rule with ``+reputation`` (``federation.reputation``,
server/reputation.py). ``clean`` is the run without adversaries; every ``collude`` adversary colludes with
the others. A cell records the last round's mean client, teacher and global student accuracy, and its delta
against the clean cell of the same rule and seed.

Run from the repository root, under the shared lock (it trains real models)::

    HF_HUB_OFFLINE=1 flock /tmp/nebula-heavy.lock .venv/bin/python benchmarks/adversaries.py \\
        --preset quick --num-clients 10 --out benchmarks/results/adversaries.json

It prints one line per finished cell and, at the end, Markdown tables attacks x rules. The JSON is written
after every cell, and a cell already in it is skipped, so an interrupted run continues where it stopped
(with the same settings; other settings are refused rather than mixed in).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nebula.common.provenance import StoredResultMismatch, provenance, stored_result

ROOT = Path(__file__).resolve().parent.parent
RULES = (
    "class-contrast",
    "class-contrast+reputation",
    "robust-contrast",
    "robust-contrast+reputation",
    "median",
    "trimmed-mean",
)
ATTACKS = ("random", "inverted", "flip=0>1", "collude")
METRICS = {"client": "mean_client_acc", "teacher": "teacher_acc", "student": "student_acc"}
REPUTATION = "+reputation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="quick", help="preset of every cell (common/presets.py)")
    p.add_argument("--rounds", type=int, default=None, help="federation rounds (default: the preset's)")
    p.add_argument("--num-clients", type=int, default=10, help="edge clients")
    p.add_argument("--rules", default=",".join(RULES), help="comma list; a rule with +reputation turns reputation on")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma list of attack kinds; clean always runs")
    p.add_argument("--share", type=float, default=0.2, help="share of the clients that attack (at least 1)")
    p.add_argument("--seeds", default="0", help="comma list of data.seed values")
    p.add_argument("--workers", type=int, default=None, help="parallel Ray actors (default: one per core)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adversaries.json")
    return p.parse_args(argv)


def adversaries(attack: str, num_clients: int, share: float) -> str:
    """The ``federation.adversaries`` spec of ``attack``: the last ``max(1, round(share K))`` clients."""
    if attack == "clean":
        return ""
    count = max(1, round(share * num_clients))
    return ",".join(f"{i}:{attack}" for i in range(num_clients - count, num_clients))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def cell_key(attack: str, rule: str, seed: int) -> str:
    return f"{attack} | {rule} | seed {seed}"


def run_cell(args: argparse.Namespace, attack: str, rule: str, seed: int) -> dict:
    """One federation; the last round's accuracies and how the adversaries were trusted."""
    from nebula.common.presets import preset_config
    from nebula.simulation.engine import simulate
    from nebula.simulation.preflight import preflight

    logging.getLogger("flwr").setLevel(logging.WARNING)  # importing flwr set it to DEBUG

    spec = adversaries(attack, args.num_clients, args.share)
    out = Path(tempfile.mkdtemp(prefix="nbl-adv-"))
    overrides = {
        "data.num_clients": args.num_clients,
        "data.seed": seed,
        "federation.aggregation": rule.removesuffix(REPUTATION),
        "federation.reputation": rule.endswith(REPUTATION),
        "federation.adversaries": spec,
        "federation.output_dir": str(out),
        **({"federation.rounds": args.rounds} if args.rounds else {}),
    }
    try:
        checked = preflight(preset_config(args.preset, overrides), explicit=set(overrides))
        t0 = time.perf_counter()
        history = simulate(checked.config, workers=args.workers)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    last = history[-1]
    bad = {f"client-{i.split(':')[0]}" for i in spec.split(",") if i}
    trust = {c: row["trust"] for c, row in (last.get("reputation") or {}).items()}
    honest = [row["trust"] for h in history for c, row in (h.get("reputation") or {}).items() if c not in bad]
    return {
        "attack": attack,
        "rule": rule,
        "seed": seed,
        "adversaries": spec,
        **{name: last[key] for name, key in METRICS.items()},
        "adversary_trust": [trust[c] for c in sorted(bad) if c in trust],
        "honest_min_trust": min(honest, default=None),  # over all rounds
        "reputation": [h.get("reputation") or {} for h in history],  # each round's agreement, score, trust
        "seconds": seconds,
    }


def with_deltas(cells: dict[str, dict]) -> dict[str, dict]:
    """Each cell with ``delta_<metric>`` against the clean cell of its rule and seed (None until that exists)."""
    for cell in cells.values():
        clean = cells.get(cell_key("clean", cell["rule"], cell["seed"]))
        for name in METRICS:
            ok = clean is not None and cell[name] is not None and clean[name] is not None
            cell[f"delta_{name}"] = cell[name] - clean[name] if ok else None
    return cells


def markdown_table(cells: dict[str, dict], metric: str, attacks: list[str], rules: list[str]) -> str:
    """Attacks x rules: ``metric``'s accuracy (mean over seeds) and its delta against clean, in points."""

    def shown(attack: str, rule: str) -> str:
        found = [c for c in cells.values() if c["attack"] == attack and c["rule"] == rule and c[metric] is not None]
        if not found:
            return "-"
        text = f"{100 * np.mean([c[metric] for c in found]):.1f}"
        deltas = [c[f"delta_{metric}"] for c in found if c.get(f"delta_{metric}") is not None]
        return text + (f" ({100 * np.mean(deltas):+.1f})" if deltas and attack != "clean" else "")

    lines = [f"| {metric} accuracy, % (delta vs clean) | " + " | ".join(rules) + " |"]
    lines.append("|---" * (len(rules) + 1) + "|")
    lines += [f"| {a} | " + " | ".join(shown(a, r) for r in rules) + " |" for a in attacks]
    return "\n".join(lines)


def load(path: Path, settings: dict) -> dict[str, dict]:
    """The cells already in ``path`` (none if it does not exist); refuses a file made with other settings."""
    try:
        stored = stored_result(path, settings)
    except StoredResultMismatch as exc:
        raise SystemExit(f"error: {exc}") from None
    return {} if stored is None else stored["cells"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    attacks = ["clean"] + [a for a in args.attacks.split(",") if a and a != "clean"]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    settings = {"preset": args.preset, "rounds": args.rounds, "num_clients": args.num_clients, "share": args.share}
    from nebula.common.config import NebulaConfig
    from nebula.server.aggregation import get_rule

    for attack in attacks:  # a malformed attack or an unknown rule fails here, not after hours of cells
        NebulaConfig.from_flat({"federation.adversaries": adversaries(attack, args.num_clients, args.share)})
    for rule in rules:
        get_rule(rule.removesuffix(REPUTATION))
    cells = load(args.out, settings)
    todo = [(a, r, s) for s in seeds for a in attacks for r in rules if cell_key(a, r, s) not in cells]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"{len(todo)} cells to run, {len(cells)} already in {args.out}", flush=True)
    started = time.perf_counter()
    for i, (attack, rule, seed) in enumerate(todo, 1):
        cell = run_cell(args, attack, rule, seed)
        cell["commit"] = provenance()["commit"]  # a resumed file can hold cells of several commits
        cells[cell_key(attack, rule, seed)] = cell
        write(args, settings, with_deltas(cells))
        accuracies = " ".join(f"{name} {_pct(cell[name])}" for name in METRICS)
        elapsed = time.perf_counter() - started
        print(
            f"[{i}/{len(todo)}] {attack} x {rule} seed {seed}: {accuracies}; cell {cell['seconds']:.0f} s, "
            f"elapsed {elapsed:.0f} s",
            flush=True,
        )
    for metric in METRICS:
        print("\n" + markdown_table(with_deltas(cells), metric, attacks, rules))
    return 0


def write(args: argparse.Namespace, settings: dict, cells: dict[str, dict]) -> None:
    result = {
        "what": "accuracy under poisoned clients: attacks x aggregation rules (benchmarks/adversaries.py)",
        **provenance(),
        "settings": settings,
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)  # a run killed while writing leaves the previous file whole


if __name__ == "__main__":
    sys.exit(main())
