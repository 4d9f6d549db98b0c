"""``nebula export``, ``predict``, ``flywheel`` and ``distill-benchmark``: an adapter as an ONNX package for edge
devices, what it predicts, which of its inputs to label, and how much of a strong teacher such a package keeps.

Loaded by the ``nebula`` group when one of them is named (cli/main.py, ``NebulaGroup``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import click
import typer

from nebula.cli._args import command
from nebula.cli._output import fail, print_tables, say
from nebula.common.flywheel import STRATEGIES
from nebula.deploy.export.onnx_export import TARGETS  # numpy only; torch loads in the command
from nebula.learning.prune_spec import SPEC_HELP  # pure Python

app = typer.Typer()

# export's options
AdapterDir = Annotated[
    str,
    typer.Argument(help="adapter folder, e.g. runs/latest/models/global-student or runs/latest/clients/<id>/adapter"),
]
ExportOut = Annotated[str, typer.Option(help="export folder to write (replaced if it holds an earlier export)")]
Target = Annotated[
    str,
    typer.Option(
        click_type=click.Choice(list(TARGETS)), help="; ".join(f"{t.name}: {t.help}" for t in TARGETS.values())
    ),
]
Base = Annotated[
    str | None, typer.Option(help="base model override: builtin name or folder (default: the adapter's own)")
]
MaxLength = Annotated[int, typer.Option(help="tokens per input, as in training")]
PruneVocabFrom = Annotated[
    str | None,
    typer.Option(
        metavar="DATASET",
        help="keep only the tokens of this corpus (dataset name, .csv/.jsonl, or .txt one text per line); "
        "other tokens become [UNK]",
    ),
]
Prune = Annotated[
    str, typer.Option(metavar="SPEC", help=f"{SPEC_HELP}. Needs --dataset or --prune-vocab-from (its texts)")
]
PruneRecoverEpochs = Annotated[
    int, typer.Option(min=0, help="epochs of distillation from the unpruned model after --prune (0: none)")
]
PruneTexts = Annotated[
    int,
    typer.Option(
        min=1,
        help="unlabelled texts --prune scores importance and recovers on: the first of --dataset's public pool, "
        "else of --prune-vocab-from's corpus",
    ),
]
PruneLr = Annotated[float, typer.Option(help="AdamW learning rate of the recovery after --prune (> 0)")]
Labels = Annotated[
    str | None, typer.Option(help="comma list of class names in label-id order (default: from --dataset)")
]
Dataset = Annotated[
    str | None, typer.Option(help="dataset the adapter learned: label names, report test set, static-int8 calibration")
]
Report = Annotated[
    bool, typer.Option("--report", help="measure size, accuracy, agreement and latency (needs --dataset)")
]
TeacherAdapters = Annotated[
    list[str],
    typer.Option(
        "--teacher-adapter",
        metavar="ADAPTER_DIR",
        help="a teacher's adapter folder to compare with in the report (repeat for several)",
    ),
]
OldTeacherAdapters = Annotated[list[str], typer.Option("--teacher", metavar="ADAPTER_DIR", hidden=True)]  # renamed
TestSize = Annotated[int, typer.Option(help="global test examples (as data.test_size)")]
Seed = Annotated[int, typer.Option(help="split seed (as data.seed)")]
ReportThreads = Annotated[int, typer.Option("--threads", min=1, help="intra-op threads while timing the report")]
Repeats = Annotated[int, typer.Option(min=1, help="timed runs per latency figure, after 3 warm-up runs")]


@command(
    app,
    "export",
    "Export an adapter as an ONNX package for edge devices (merged, optionally pruned, quantised).",
)
def export(
    adapter_dir: AdapterDir,
    out: ExportOut,
    target: Target = "cpu-int8",
    base: Base = None,
    max_length: MaxLength = 64,
    prune_vocab_from: PruneVocabFrom = None,
    prune: Prune = "",
    prune_recover_epochs: PruneRecoverEpochs = 1,
    prune_texts: PruneTexts = 512,
    prune_lr: PruneLr = 1e-4,
    labels: Labels = None,
    dataset: Dataset = None,
    report: Report = False,
    teacher_adapter: TeacherAdapters = [],  # noqa: B006  (typer reads the default; never mutated)
    teacher: OldTeacherAdapters = [],  # noqa: B006
    test_size: TestSize = 500,
    seed: Seed = 0,
    threads: ReportThreads = 1,
    repeats: Repeats = 20,
) -> int:
    from nebula.client.runtime.errors import ExportError
    from nebula.deploy.export.export import ExportConfig, export_adapter

    if teacher:
        print("warning: nebula export --teacher is now --teacher-adapter", file=sys.stderr)
    names = tuple(x.strip() for x in labels.split(",")) if labels else None
    split = dict(dataset=dataset, test_size=test_size, seed=seed)  # the export's and its report's
    config = ExportConfig(
        adapter_dir=adapter_dir, out=out, target=target, base=base, max_length=max_length,
        prune_vocab_from=prune_vocab_from, prune=prune, prune_recover_epochs=prune_recover_epochs,
        prune_texts=prune_texts, prune_lr=prune_lr, labels=names, **split,
    )  # fmt: skip
    try:
        if report and not dataset:
            raise ExportError("--report needs --dataset (whose test split is measured)")
        t0 = time.perf_counter()
        manifest = export_adapter(config)
        vocab = f", vocabulary {manifest.kept_vocab_size} tokens" if manifest.kept_vocab_size else ""
        say(
            f"exported {adapter_dir} -> {out} ({manifest.target}, labels {', '.join(manifest.labels)}{vocab}) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        if prune:
            _say_pruning(out)
        if report:
            _report(out, split, [*teacher_adapter, *teacher], threads=threads, repeats=repeats)
    except ExportError as exc:
        return fail(str(exc))
    return 0


def _say_pruning(out: str) -> None:
    from nebula.deploy.export.structured import RECORD_FILE, describe, read_record

    say(f"{describe(read_record(out))} ({Path(out) / RECORD_FILE})")


def _report(out: str, split: dict, teachers: list[str], *, threads: int, repeats: int) -> None:
    """Measure the export against the PyTorch student and ``teachers``; print the tables, write the report."""
    from nebula.deploy.export.report import build_report, format_markdown, write_report

    report = build_report(out, **split, teacher_adapters=teachers, threads=threads, repeats=repeats)
    md, js = write_report(report, out)
    say("")
    print_tables(format_markdown(report))
    say(f"\nreport: {md}, {js}")


@command(app, "predict", "Classify texts with an export package (onnxruntime only): label and probabilities per line.")
def predict(
    export_dir: Annotated[str, typer.Argument(help="folder written by `nebula export`")],
    texts: Annotated[list[str] | None, typer.Argument(metavar="TEXT...", help="texts to classify")] = None,
    file: Annotated[
        str | None, typer.Option(help="also classify each non-empty line of this file ('-' reads stdin)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime intra-op threads (default: all cores)")
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(help="append each input, its prediction and confidence to this JSON-lines file (the flywheel)"),
    ] = None,
) -> int:
    from nebula.client.runtime.errors import ExportError
    from nebula.client.runtime.predictor import EdgePredictor
    from nebula.common.flywheel import FlywheelError, PredictionLog

    texts = list(texts or [])
    if file:
        try:
            lines = sys.stdin.read().splitlines() if file == "-" else Path(file).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return fail(f"{file}: {exc}")
        texts += [line for line in (x.strip() for x in lines) if line]
    if not texts:
        return fail("no texts: pass them as arguments or with --file")
    try:
        predictor = EdgePredictor(export_dir, intra_op_threads=threads)
    except ExportError as exc:
        return fail(str(exc))
    probs = predictor.predict_proba(texts)
    if log:
        try:
            PredictionLog(log).append(texts, probs, label_names=predictor.labels)
        except (FlywheelError, OSError) as exc:
            return fail(f"--log {log}: {exc}")
    for text, row in zip(texts, probs):
        scores = " ".join(f"{name}={p:.3f}" for name, p in zip(predictor.labels, row))
        print(f"{predictor.labels[int(row.argmax())]}\t{scores}\t{text}")
    return 0


@command(
    app,
    "flywheel",
    "Pick the logged inputs most worth labelling (nebula predict --log) into an annotation sheet (CSV, label empty).",
)
def flywheel(
    log: Annotated[str, typer.Argument(help="prediction log written by `nebula predict --log`")],
    out: Annotated[str, typer.Option(help="annotation sheet to write (CSV; refused if it exists)")],
    k: Annotated[int, typer.Option(min=1, help="rows to pick")] = 100,
    strategy: Annotated[
        str, typer.Option(click_type=click.Choice(STRATEGIES), help="how rows are scored (common/flywheel.py)")
    ] = "uncertainty",
    global_student: Annotated[
        str | None,
        typer.Option(help="export of the downloaded global student: needed by the disagreement and mixed strategies"),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="base model (builtin name or folder) whose sentence embeddings place the rows: needed by typical, "
            "used by diverse and mixed (else the logged probabilities)"
        ),
    ] = None,
    labelled: Annotated[
        str | None,
        typer.Option(help="the device's labelled data (file or folder): typical covers what it does not hold yet"),
    ] = None,
    skip_corrupt: Annotated[bool, typer.Option(help="skip corrupt log lines (listed) instead of stopping")] = False,
) -> int:
    from nebula.common.data import DatasetError, load_labelled_files
    from nebula.common.flywheel import FlywheelError, PredictionLog, select, write_annotation_file

    try:
        contents = PredictionLog(log).read(strict=not skip_corrupt)
        for line, why in contents.corrupt:
            say(f"{log}:{line}: skipped ({why})")
        records = contents.records
        global_probs = None
        if global_student:
            from nebula.client.runtime.predictor import EdgePredictor

            global_probs = EdgePredictor(global_student).predict_proba([r.text for r in records])
        if strategy == "typical" and not embedder:
            return fail("--strategy typical needs --embedder: the base model whose sentence embeddings place the rows")
        if labelled and not embedder:
            return fail("--labelled needs --embedder: the labelled rows are placed in its embeddings")
        space = own = None
        if embedder:
            from nebula.learning.embeddings import embed, load_encoder

            model, tokenizer = load_encoder(embedder)
            space = embed(model, tokenizer, [r.text for r in records])
            if labelled:
                names = _label_names(records)
                if names is None:
                    return fail(f"{log}: the log does not name every class, so {labelled}'s labels cannot be read")
                own = embed(model, tokenizer, load_labelled_files(labelled, label_names=names).texts)
        chosen = select(records, min(k, len(records)), global_probs=global_probs, strategy=strategy,
                        embeddings=space, labelled_embeddings=own)  # fmt: skip
        path = write_annotation_file([records[i] for i in chosen], out, label_names=_label_names(records))
    except (FlywheelError, DatasetError, OSError) as exc:
        return fail(str(exc))
    say(f"{len(chosen)} of {len(records)} logged inputs ({strategy}) -> {path}: fill the label column")
    return 0


def _label_names(records) -> list[str] | None:
    """The class names the log carries (each record names its predicted class), or None."""
    names: dict[int, str] = {r.label: r.label_name for r in records if r.label_name is not None}
    classes = len(records[0].probs) if records else 0
    return [names[i] for i in range(classes)] if classes and len(names) == classes else None


@command(
    app,
    "distill-benchmark",
    "How much of a strong teacher an exported MiniLM-L3 keeps, recipe by recipe (benchmarks/distill.py of a "
    "source checkout; its options: nebula distill-benchmark --help).",
    passthrough=True,
)
def distill_benchmark(
    args: Annotated[list[str] | None, typer.Argument(help="benchmarks/distill.py's options, passed on")] = None,
) -> int:
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "distill.py"
    if not script.is_file():
        return fail(f"distill-benchmark runs {script}, which only a source checkout has (pip install -e .)")
    spec = importlib.util.spec_from_file_location("nebula_distill_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    program, sys.argv[0] = sys.argv[0], "nebula distill-benchmark"  # argparse's usage line names the command
    try:
        return module.main(list(args or []))
    except SystemExit as exc:  # argparse's --help and its errors
        return exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.argv[0] = program
