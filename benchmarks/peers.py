"""Nebula's federated distillation beside every peer and bound, on the same split, seed by seed.

For each seed, Nebula's default FD runs as ``nebula benchmark`` runs it (the preset, then
``simulation.preflight``, then Flower's simulation engine: simulation/engine.py), and every method of
simulation/baselines/ runs in this process on the same split (``data.seed`` = the seed), clients,
public pool and budget. The JSON holds one cell per (method, seed) and, per method, each figure's
mean, standard deviation and per-seed values (aligned with ``seeds``), plus the time to accuracy: the
rounds and seconds until the method's per-round model (its global model; FedMD's mean client) first
reaches 90% of the centralized model's final accuracy on the same seed.

Resumable: cells already in the output are skipped, and the file is rewritten after every cell, so an
interrupted run loses at most the cell it was running. Run from the repository root, under the shared
lock (it trains real models and starts Ray)::

    HF_HUB_OFFLINE=1 flock /tmp/nebula-heavy.lock .venv/bin/python benchmarks/peers.py --dataset tweets --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import PRESETS, preset_config
from nebula.common.provenance import provenance
from nebula.simulation.baselines import BaselineResult, available_methods, get_method, method_kind
from nebula.simulation.preflight import PreflightError, preflight

ROOT = Path(__file__).resolve().parent.parent
NEBULA = "nebula-fd"
REFERENCE = "centralized"  # time to accuracy counts toward 90% of its final accuracy
TARGET_SHARE = 0.9
FIGURES = (
    "global_student",
    "mean_client",
    "min_client",
    "mean_client_own",
    "teacher",
    "uplink_bytes",
    "downlink_bytes",
    "seconds",
)
# The run's settings that every cell of one file must share (the seed and the run folder aside).
PER_CELL_KEYS = ("data.seed", "federation.output_dir")
NOISY = ("flwr", "ray", "transformers", "httpx", "matplotlib", "alembic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="tweets", help="builtin dataset (tweets, bbc) or a file (default tweets)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    p.add_argument(
        "--methods",
        default=",".join((NEBULA, *available_methods())),
        help=f"comma list from {NEBULA}, {', '.join(available_methods())} (default: all)",
    )
    p.add_argument("--preset", default="benchmark", choices=sorted(PRESETS), help="configuration (default benchmark)")
    p.add_argument("--rounds", type=int, default=None, help="federation rounds (default: the preset's)")
    p.add_argument("--out", default=None, help="JSON to write (default benchmarks/results/<dataset>-<partition>.json)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers of Nebula's FD (default: CPU cores)")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m != NEBULA and m not in available_methods()]
    if unknown or not args.methods or not args.seeds:
        p.error(f"unknown method(s) {unknown}; available: {NEBULA}, {', '.join(available_methods())}")
    return args


def cell_config(args: argparse.Namespace, seed: int, output_dir: str) -> NebulaConfig:
    """The configuration of seed ``seed``: the preset with the dataset, seed and rounds given, checked (and its
    data sizes fitted to the dataset where the preset's do not fit) as ``nebula benchmark`` checks it."""
    overrides = {"data.dataset": args.dataset, "data.seed": seed, "federation.output_dir": output_dir}
    if args.rounds is not None:
        overrides["federation.rounds"] = args.rounds
    config = preset_config(args.preset, overrides)
    explicit = {"data.dataset", "data.seed", "federation.output_dir"} | (
        {"federation.rounds"} if args.rounds is not None else set()
    )
    return preflight(config, explicit=explicit).config


def shared_settings(config: NebulaConfig) -> dict:
    return {k: v for k, v in config.to_flat().items() if k not in PER_CELL_KEYS}


def default_out(config: NebulaConfig) -> Path:
    d = config.data
    partition = f"dirichlet{d.dirichlet_alpha:g}" if d.partition == "dirichlet" else d.partition
    return ROOT / "benchmarks" / "results" / f"{Path(d.dataset).stem}-{partition}.json"


# --- one cell --------------------------------------------------------------------------------------


def run_nebula(config: NebulaConfig, *, workers: int | None) -> dict:
    """Nebula's FD on ``config`` (Flower's simulation engine), as one cell."""
    from nebula.simulation.engine import simulate

    history = simulate(config, workers=workers)
    last = history[-1]
    elapsed = np.cumsum([h["seconds"] for h in history]).tolist()
    return {
        "kind": "logit-only",
        "global_student": last["student_acc"],
        "mean_client": last["mean_client_acc"],
        "min_client": last["min_client_acc"],
        "mean_client_own": last["mean_client_acc_own"],
        "teacher": last["teacher_acc"],
        "uplink_bytes": float(np.mean([h["bytes_up_per_client"] for h in history])),
        "downlink_bytes": float(np.mean([h["bytes_down_per_client"] for h in history])),
        "seconds": elapsed[-1],
        "curve": [h["student_acc"] for h in history],
        "curve_of": "global_student",
        "round_seconds": elapsed,
        "details": {"aggregation": config.federation.aggregation, "teacher_curve": [h["teacher_acc"] for h in history]},
    }


def result_cell(result: BaselineResult) -> dict:
    """A method's :class:`BaselineResult` as one cell."""
    return {
        "kind": result.kind,
        "global_student": result.student_acc,
        "mean_client": result.mean_client_acc,
        "min_client": result.min_client_acc,
        "mean_client_own": result.mean_client_acc_own,
        "teacher": result.teacher_acc,
        "uplink_bytes": result.bytes_up_per_client,
        "downlink_bytes": result.bytes_down_per_client,
        "seconds": result.seconds,
        "curve": list(result.curve),
        "curve_of": result.curve_of,
        "round_seconds": list(result.round_seconds),
        "details": result.details,
    }


def run_cell(method: str, config: NebulaConfig, *, workers: int | None) -> dict:
    if method == NEBULA:
        return run_nebula(config, workers=workers)
    data = build_federation_data(config.data)
    return result_cell(get_method(method).run(data, config, seed=config.data.seed))


# --- the summary -----------------------------------------------------------------------------------


def _clean(value):
    """JSON-safe: floats (Score included) as plain floats, NaN as None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def stats(values: list[float | None]) -> dict:
    """``{mean, sd, per_seed}`` over the values that exist (sd: sample standard deviation, ddof=1)."""
    present = [float(v) for v in values if v is not None]
    return {
        "mean": float(np.mean(present)) if present else None,
        "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None,
        "per_seed": values,
    }


def time_to_accuracy(cell: dict, target: float | None) -> tuple[int | None, float | None]:
    """The first round (1-based) whose per-round accuracy reaches ``target`` (ties count, up to float rounding),
    and the seconds from the start of the run until the end of that round; ``(None, None)`` if none does."""
    if target is None:
        return None, None
    for r, (acc, seconds) in enumerate(zip(cell["curve"], cell["round_seconds"]), start=1):
        if acc is not None and acc >= target - 1e-9:  # 0.9 * 0.8 is 0.7200000000000001 in floats
            return r, seconds
    return None, None


def summarize(cells: dict, seeds: list[int]) -> dict:
    """Per method: its kind, each figure's statistics over ``seeds``, and the time to accuracy."""
    reference = cells.get(REFERENCE, {})
    methods = {}
    for method, by_seed in cells.items():
        row = [by_seed.get(str(s)) for s in seeds]
        summary = {"kind": next(c["kind"] for c in row if c is not None)}
        for figure in FIGURES:
            summary[figure] = stats([c[figure] if c is not None else None for c in row])
        targets = [
            TARGET_SHARE * reference[str(s)]["global_student"]
            if str(s) in reference and reference[str(s)]["global_student"] is not None
            else None
            for s in seeds
        ]
        reached = [
            time_to_accuracy(c, t) if c is not None and c["curve"] else (None, None) for c, t in zip(row, targets)
        ]
        if any(c is not None and c["curve"] for c in row):
            summary["time_to_accuracy"] = {
                "target": f"{TARGET_SHARE:g} x {REFERENCE} global_student (same seed)",
                "on": next(c["curve_of"] for c in row if c is not None),
                "targets": targets,
                "rounds": stats([r for r, _ in reached]),
                "seconds": stats([s for _, s in reached]),
            }
        methods[method] = summary
    return methods


# --- the file ---------------------------------------------------------------------------------------


def load(out: Path, settings: dict) -> dict:
    """The output so far (new if none); refuses a file written with other settings."""
    if not out.exists():
        return {"cells": {}}
    doc = json.loads(out.read_text())
    old = doc.get("config", {})
    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differ:
        raise SystemExit(
            f"error: {out} was written with other settings ({', '.join(differ[:5])}); "
            "pass another --out or remove it to start over"
        )
    return doc


def save(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    tmp.replace(out)  # a crash leaves the old file or the new one


def document(doc: dict, args: argparse.Namespace, config: NebulaConfig, settings: dict) -> dict:
    seeds = sorted({int(s) for by_seed in doc["cells"].values() for s in by_seed} | set(args.seeds))
    d = config.data
    return {
        "dataset": d.dataset,
        "partition": d.partition,
        "dirichlet_alpha": d.dirichlet_alpha,
        "preset": args.preset,
        "rounds": config.federation.rounds,
        **provenance([".venv/bin/python", "benchmarks/peers.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count()},
        "seeds": seeds,
        "methods": summarize(doc["cells"], seeds),
        "config": settings,
        "cells": doc["cells"],
    }


def _pct(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def progress(done: int, total: int, method: str, seed: int, cell: dict) -> str:
    return (
        f"[cell {done}/{total}] {method} seed {seed}: global student {_pct(cell['global_student'])}, "
        f"mean client {_pct(cell['mean_client'])}, min client {_pct(cell['min_client'])}, "
        f"up {cell['uplink_bytes']:,.0f} B, down {cell['downlink_bytes']:,.0f} B/client/round, {cell['seconds']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    todo = [(m, s) for s in args.seeds for m in args.methods]
    with tempfile.TemporaryDirectory(prefix="nbl-peers-") as tmp:
        try:
            configs = {s: cell_config(args, s, str(Path(tmp) / f"seed-{s}")) for s in args.seeds}
        except (ConfigError, PreflightError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        first = configs[args.seeds[0]]
        settings = shared_settings(first)
        out = Path(args.out) if args.out else default_out(first)
        doc = load(out, settings)
        for done, (method, seed) in enumerate(todo, start=1):
            if str(seed) in doc["cells"].get(method, {}):
                print(f"[cell {done}/{len(todo)}] {method} seed {seed}: already in {out}, skipped", flush=True)
                continue
            config = configs[seed]
            t0 = time.perf_counter()
            cell = run_cell(method, config, workers=args.workers)
            cell.update(wall_seconds=time.perf_counter() - t0, commit=provenance()["commit"])
            if method != NEBULA:
                cell["kind"] = method_kind(method)
            for name in NOISY:  # importing flwr resets its logger
                logging.getLogger(name).setLevel(logging.WARNING)
            doc["cells"].setdefault(method, {})[str(seed)] = _clean(cell)
            doc = document(doc, args, first, settings)
            save(out, doc)
            print(progress(done, len(todo), method, seed, cell), flush=True)
    save(out, document(doc, args, first, settings))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
