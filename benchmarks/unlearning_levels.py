"""The price and the exactness of each isolation level, at a given number of clients.

For each level (``federation.isolation``: collaborative, isolated) this runs ``nebula unlearn benchmark``'s
pipeline (simulation/unlearning_benchmark.py): the original federation with a canary planted in the client to
forget, every unlearning mode on a copy, the federation retrained without the client, and the figures of
simulation/unlearning_levels.py. A level ``sharded:S`` (``--levels ...,sharded:4``) has one mode, ``shard-retrain``
(simulation/sharded.py: the client's shard retrained, the global student distilled again), against the sharded
federation retrained from scratch without the client (``sharded_level``); its ``teacher_acc`` is the shard
teachers' ensemble's. It writes ``benchmarks/results/unlearning-<N>clients.json``: ``commit``,
``command``, ``clients``, and one object per level and mode (``rows``) with ``exact``, ``param_distance``,
``canary_success``, ``canary_success_retrained``, ``speedup``, ``client_rounds``, ``student_acc``,
``teacher_acc``, ``seconds``, ``compute_seconds``, ``compute_speedup`` (CPU seconds summed over the nodes that
did the work), plus each level's original accuracies (the price of isolation).

Resumable: a level already in the output file is skipped, so an interrupted run loses only the level it was in.

    .venv/bin/python benchmarks/unlearning_levels.py --clients 10
    .venv/bin/python benchmarks/unlearning_levels.py --clients 100 --private-size 3000 --rounds 3
    .venv/bin/python benchmarks/unlearning_levels.py --clients 10 --levels sharded:2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nebula.common.presets import preset_config
from nebula.common.provenance import provenance
from nebula.simulation.unlearning_benchmark import UnlearningBenchmark, client_with_most_data, run_benchmark
from nebula.simulation.unlearning_levels import sharded_level

LEVELS = ("collaborative", "isolated")
MODES = ("reaggregate", "exact-replay", "fast-correction")


def _config(args: argparse.Namespace, level: str, canary_client: int | None = None):
    flat = {
        "data.num_clients": args.clients,
        "federation.rounds": args.rounds,
        "federation.isolation": level,
        "data.seed": args.seed,
    }
    if args.private_size is not None:
        flat["data.private_size"] = args.private_size
    if args.public_per_round is not None:
        flat["federation.public_per_round"] = args.public_per_round
    if args.min_replies is not None:
        flat["federation.min_replies"] = args.min_replies
    if canary_client is not None:
        flat["data.canary"] = f"{canary_client}:{args.canary_fraction}:{args.canary_class}"
    return preset_config(args.preset, flat)


def _rows(level: str, summary: dict) -> list[dict]:
    return [{"level": level, "mode": variant, **figures} for variant, figures in summary.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--private-size", type=int, default=None, help="private examples over all clients")
    p.add_argument("--public-per-round", type=int, default=None)
    p.add_argument("--min-replies", type=int, default=None)
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--canary-fraction", type=float, default=0.3)
    p.add_argument("--canary-class", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("runs/unlearning-levels"))
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/unlearning-<N>clients.json")
    args = p.parse_args(argv)
    out = args.out or Path("benchmarks/results") / f"unlearning-{args.clients}clients.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(
        **provenance(),
        clients=args.clients,
        seeds=[args.seed],
    )
    results.setdefault("rows", [])
    done = {row["level"] for row in results["rows"]}
    for level in args.levels.split(","):
        if level in done:
            print(f"{level}: already in {out}, skipped", flush=True)
            continue
        client = client_with_most_data(_config(args, level))
        config = _config(args, level, canary_client=int(client.rsplit("-", 1)[1]))
        t0, folder = time.perf_counter(), args.workdir / f"{args.clients}clients" / level.replace(":", "-")
        say = lambda line, level=level: print(f"[{level}] {line}", flush=True)  # noqa: E731
        if config.federation.shard_count() is not None:
            summary = sharded_level(config, folder, client, say=say)
        else:
            bench = UnlearningBenchmark(config, folder, client=client, modes=tuple(args.modes.split(",")))
            summary = run_benchmark(bench, say=say).summary
        results["rows"].extend(_rows(level, summary))
        results.setdefault("config", {})[level] = config.to_flat()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"{level}: {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    _print_table(results["rows"])
    return 0


def _fmt(value) -> str:
    if isinstance(value, dict):
        return " / ".join(_fmt(v) for v in value.values())
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _print_table(rows: list[dict]) -> None:
    cols = (
        "teacher_acc", "student_acc", "exact", "param_distance", "canary_success", "client_rounds", "speedup",
        "compute_speedup",
    )  # fmt: skip
    print("| level | variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for row in rows:
        print(f"| {row['level']} | {row['mode']} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
