"""Export report: what the package costs and what it loses against its PyTorch sources.

Measured on a held-out test set (:class:`EvalSplit`), chosen by :func:`choose_split`:

- the run's own global test split, when the exported adapter lies in a run folder (``<run>/models/...``,
  ``<run>/clients/<id>/adapter``, ``<run>/unlearning/<request>/models/...``): rebuilt from the
  configuration its ledger stored for the last run, exactly as the federation drew it;
- otherwise a split of its own: ``dataset``'s first ``test_size`` examples under ``seed``, by the same
  rule (so ``tweets`` with ``test_size=500, seed=0`` is the test set of a default ``nebula simulate``).

The report says which one it used (``test.split``: ``run`` or ``dataset``, and a sentence above the table).
What it measures:

- size on disk of the package, and of the fp32 source weights (base model file(s) + adapter) of
  the student and of each teacher;
- test accuracy of the package, of the merged PyTorch student and of each teacher;
- top-1 agreement and max |logit difference| of the package against each of them;
- latency of one ``InferenceSession.run`` at batch 1 and batch 32 (tokenisation excluded):
  median of ``repeats`` timed runs after ``warmup`` untimed ones, with ``threads`` intra-op
  threads; the PyTorch models are timed the same way with the same thread count, for reference.

A package exported with ``--prune`` carries its pruning record (structured.py); the report copies it into
``package.pruning`` and describes it above the table. The student row stays the merged model before pruning,
so the package's agreement with it is what pruning and quantisation lost together.

Against each teacher the report states how much smaller, how accurate (share of the teacher's
accuracy) and how much faster at batch 1 the package is, next to the targets of :data:`TARGETS`
(the edge-export promise: >= 25x smaller than the big teacher, >= 97% of its accuracy, >= 10x lower
batch-1 latency).

The measurement functions return numbers; :func:`format_markdown` and :func:`write_report` print.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.client.runtime.package import pad_batch

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")
REPORT_FILES = ("export-report.md", "export-report.json")
_AGREEMENT = ("top1_agreement", "max_abs_logit_diff")  # written into the package, not counted in its size
TARGETS = {"smaller_x": 25.0, "accuracy_kept": 0.97, "batch1_faster_x": 10.0}


# --- pure measurements -------------------------------------------------------------------------


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and max |a - b| of two (N, C) logit arrays."""
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: {a.shape} vs {b.shape}")
    return dict(zip(_AGREEMENT, (float(np.mean(a.argmax(1) == b.argmax(1))), float(np.max(np.abs(a - b))))))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def against_teacher(export: dict, teacher: dict) -> dict:
    """How the export row compares with a teacher row: ``smaller_x`` (size ratio), ``accuracy_kept``
    (export accuracy / teacher accuracy), ``batch1_faster_x`` (latency ratio), and ``met`` per :data:`TARGETS`
    (None where a figure is missing, e.g. a hub teacher with no size on disk)."""
    ratio = lambda a, b: None if a is None or b is None or b == 0 else a / b  # noqa: E731
    figures = {
        "smaller_x": ratio(teacher["size_mb"], export["size_mb"]),
        "accuracy_kept": ratio(export["accuracy"], teacher["accuracy"]),
        "batch1_faster_x": ratio(teacher["latency_b1_ms"], export["latency_b1_ms"]),
    }
    met = {k: None if v is None else bool(v >= TARGETS[k]) for k, v in figures.items()}
    return {"teacher": teacher["model"], **figures, "met": met}


def median_ms(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def latency_batches(rows: Sequence[Sequence[int]], *, sizes: Sequence[int] = (1, 32)) -> dict[int, list[list[int]]]:
    """The timed inputs: batch 1 is the text of median token length, batch n the first n texts."""
    by_length = np.argsort([len(r) for r in rows], kind="stable")
    return {n: ([list(rows[by_length[len(rows) // 2]])] if n == 1 else [list(r) for r in rows[:n]]) for n in sizes}


def folder_mb(folder: str | Path, *, exclude: Sequence[str] = ()) -> float:
    """Size of the files in ``folder`` (recursive), in MB (10^6 bytes)."""
    files = (p for p in Path(folder).rglob("*") if p.is_file() and p.name not in exclude)
    return sum(p.stat().st_size for p in files) / 1e6


def source_fp32_mb(adapter_dir: str | Path, *, base: str | None = None) -> float | None:
    """Weights on disk of the adapter's base model plus the adapter itself, in MB (None if the base is no folder)."""
    from nebula.deploy.export.merge import resolve_base

    base_dir = Path(resolve_base(adapter_dir, base))
    if not base_dir.is_dir():
        return None
    weights = [p for p in base_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
    weights += [p for p in Path(adapter_dir).iterdir() if p.name.startswith("adapter_model")]
    return sum(p.stat().st_size for p in weights) / 1e6


# --- running the models ------------------------------------------------------------------------


def _torch_side(
    adapter_dir: str, texts: Sequence[str], *, max_length: int, threads: int, repeats: int, base: str | None = None
) -> dict:
    """Logits of a merged PyTorch model on ``texts`` and its batch-1 / batch-32 latency."""
    import torch

    from nebula.deploy.export.merge import load_adapter_model
    from nebula.learning.training import encode, predict_logits, torch_threads

    with torch_threads(threads):
        model, tokenizer, _, _ = load_adapter_model(adapter_dir, base=base)
        encoded = encode(tokenizer, texts, max_length=max_length)
        logits = predict_logits(model, encoded)
        pad = tokenizer.pad_token_id or 0
        latency = {}
        with torch.no_grad():
            for n, rows in latency_batches(encoded.input_ids).items():
                ids, mask = (torch.from_numpy(a) for a in pad_batch(rows, pad_id=pad))  # (B, L) each
                latency[n] = median_ms(
                    lambda ids=ids, mask=mask: model(input_ids=ids, attention_mask=mask), repeats=repeats
                )
    return {"logits": logits, "latency_ms": latency, "size_mb": source_fp32_mb(adapter_dir, base=base)}


def build_report(
    package_dir: str | Path,
    *,
    dataset: str | None = None,
    test_size: int = 500,
    seed: int = 0,
    split: EvalSplit | None = None,
    student_adapter: str | Path | None = None,
    teacher_adapters: Sequence[str | Path] = (),
    threads: int = 1,
    repeats: int = 20,
) -> dict:
    """Measure an export package against its source student and, optionally, a teacher.

    Parameters
    ----------
    package_dir : str or Path
        Export folder.
    dataset, test_size, seed : str, int, int
        The fallback test split (:func:`dataset_split`), used only where the student adapter is not in a run
        folder (:func:`choose_split`); ``dataset`` may be None when it is.
    split : EvalSplit, optional
        Measure on exactly this split instead (a benchmark's own held-out set).
    student_adapter : str or Path, optional
        The PyTorch reference; default: the manifest's ``source_adapter``.
    teacher_adapters : sequence of str or Path
        Teacher adapter folders to compare with (same classes), e.g. the run's MiniLM-L6 teacher and
        an MPNet teacher from ``nebula teach``; each row is named after its base model.
    threads : int
        onnxruntime intra-op threads and torch threads while timing.
    repeats : int
        Timed runs per latency figure (>= 20 recommended; 3 untimed warm-up runs precede them).

    Returns
    -------
    dict
        JSON-ready: ``package``, ``test`` (which split, dataset, size, share of texts outside a pruned
        vocabulary), ``timing``, ``rows`` (one per model: size, accuracy, agreement with the package, latency)
        and ``against_teachers`` (:func:`against_teacher` for each teacher row).
    """
    from nebula.client.runtime.errors import ExportError
    from nebula.client.runtime.predictor import EdgePredictor

    predictor = EdgePredictor(package_dir, intra_op_threads=threads)
    manifest = predictor.manifest
    student_adapter = student_adapter or manifest.source_adapter
    if split is None:
        split = choose_split(student_adapter, dataset=dataset, test_size=test_size, seed=seed)
    if len(manifest.labels) != split.num_classes:
        raise ExportError(
            f"{package_dir}: the package has {len(manifest.labels)} classes, the test set ({split.source['dataset']}) "
            f"{split.num_classes}"
        )
    logits, first = export_row(predictor, package_dir, split.texts, split.labels, repeats=repeats)
    rows = [first] + [
        reference_row(name, adapter, split, logits, max_length=manifest.max_length, threads=threads, repeats=repeats)
        for name, adapter in _references(student_adapter, teacher_adapters)
    ]
    return {
        **_context(predictor, package_dir, split, threads=threads, repeats=repeats),
        "rows": rows,
        "against_teachers": [against_teacher(rows[0], row) for row in rows[2:]],
    }


def _context(predictor, package_dir: str | Path, split: EvalSplit, *, threads: int, repeats: int) -> dict:
    """The report's context: the ``package``, the ``test`` set (which split) and the ``timing`` protocol."""
    from nebula.deploy.export.structured import read_record

    manifest = predictor.manifest
    return {
        "package": {
            "folder": str(Path(package_dir).resolve()),
            "target": manifest.target,
            "kept_vocab_size": manifest.kept_vocab_size,
            "source_adapter": manifest.source_adapter,
            "pruning": read_record(package_dir),  # None unless exported with --prune (structured.py)
        },
        "test": {
            **split.source,
            "size": len(split.texts),
            "outside_vocabulary": float(np.mean(predictor.outside_vocabulary(split.texts))),
        },
        "timing": {
            "threads": threads,
            "repeats": repeats,
            "warmup": 3,
            "what": "one session.run / forward, tokenisation excluded; batch 1 = median-length text",
        },
    }


# --- the test set ------------------------------------------------------------------------------

_RUN_DEPTH = 4  # <run>/unlearning/<request>/models/<name>: the deepest adapter folder of a run folder


@dataclass(frozen=True)
class EvalSplit:
    """The texts a report measures on, their labels and where they come from.

    ``source`` is JSON-ready and goes into the report's ``test``: ``split`` (``run``, ``dataset`` or a
    caller's own name), ``dataset``, ``test_size``, ``seed``, and a ``description`` the Markdown prints.
    """

    texts: list[str]
    labels: np.ndarray  # (N,) int64
    num_classes: int
    source: dict


def find_run_folder(adapter_dir: str | Path) -> Path | None:
    """The run folder holding ``adapter_dir``: the nearest of the folder and its parents, up to
    :data:`_RUN_DEPTH` levels up, that has a ledger (:class:`nebula.common.run_folder.RunFolder`); None if none."""
    from nebula.common.run_folder import RunFolder

    folder = Path(adapter_dir).expanduser().resolve()
    for candidate in [folder, *folder.parents][: _RUN_DEPTH + 1]:
        if RunFolder(candidate).ledger.is_file():
            return candidate
    return None


def run_split(run_folder: str | Path) -> EvalSplit:
    """The global test split of the last run in ``run_folder``'s ledger, rebuilt from the configuration the ledger
    stored (:func:`nebula.common.federation_data.build_federation_data`: the split every node of the run drew).

    Raises
    ------
    ExportError
        The ledger holds no run or an unreadable configuration, or the run's dataset does not load here.
    """
    from nebula.client.runtime.errors import ExportError
    from nebula.common.federation_data import build_federation_data
    from nebula.common.run_folder import RunFolder
    from nebula.server.exceptions import LedgerError
    from nebula.server.ledger import Ledger
    from nebula.server.unlearning.models import run_of

    folder = RunFolder(Path(run_folder))
    try:
        ledger = Ledger(folder.ledger)
        try:
            run = run_of(ledger, folder.root)
        finally:
            ledger.close()
        cfg = run.config.data
        data = build_federation_data(cfg)
    except (LedgerError, ValueError) as err:  # DatasetError and ConfigError are ValueErrors
        raise ExportError(f"{folder.root}: cannot rebuild the run's test split ({err})") from None
    source = {
        "split": "run",
        "dataset": cfg.dataset,
        "test_size": cfg.test_size,
        "seed": cfg.seed,
        "run_folder": str(folder.root),
        "run_id": run.run_id,
        "description": f"the run's own held-out test split: {cfg.dataset}, {len(data.test)} texts "
        f"(data.test_size {cfg.test_size}, data.seed {cfg.seed}) of run {run.run_id} in {folder.root}",
    }
    return EvalSplit(data.texts(data.test), data.labels(data.test), data.num_classes, source)


def dataset_split(dataset: str, *, test_size: int, seed: int, why: str = "") -> EvalSplit:
    """``dataset``'s global test split as a federation with ``test_size`` and ``seed`` draws it, not a run's own;
    ``why`` (e.g. no run folder) goes into the description."""
    from nebula.client.runtime.errors import ExportError
    from nebula.common.data import DatasetError, load_dataset, split_dataset

    try:
        data = load_dataset(dataset)
        test, _, _ = split_dataset(len(data), test=test_size, public=0, seed=seed)
    except DatasetError as err:
        raise ExportError(str(err)) from None
    source = {
        "split": "dataset",
        "dataset": dataset,
        "test_size": test_size,
        "seed": seed,
        "description": f"{dataset}, {len(test)} texts (seed {seed}): a split of its own, not a run's test set"
        + (f" ({why})" if why else ""),
    }
    return EvalSplit([data.texts[i] for i in test], data.labels[test], len(data.label_names), source)


def choose_split(adapter_dir: str | Path, *, dataset: str | None, test_size: int, seed: int) -> EvalSplit:
    """The run's own test split where ``adapter_dir`` lies in a run folder (:func:`run_split`), else
    :func:`dataset_split` of ``dataset``; also that where the run's split cannot be rebuilt (the reason is
    in the description).

    Raises
    ------
    ExportError
        No run folder (or an unusable one) and no ``dataset``.
    """
    from nebula.client.runtime.errors import ExportError

    run_folder = find_run_folder(adapter_dir)
    why = f"{adapter_dir} is not in a run folder"
    if run_folder is not None:
        try:
            return run_split(run_folder)
        except ExportError as err:
            if not dataset:
                raise
            why = str(err)
    if not dataset:
        raise ExportError(f"{why}: name the dataset whose test split to measure (--dataset)")
    return dataset_split(dataset, test_size=test_size, seed=seed, why=why)


# --- rows ----------------------------------------------------------------------------------------


def export_row(
    predictor, package_dir: str | Path, texts: Sequence[str], labels: np.ndarray, *, repeats: int
) -> tuple[np.ndarray, dict]:
    """The package's logits on ``texts`` and its report row (size, accuracy, batch-1 / batch-32 latency);
    ``predictor`` is the package's :class:`~nebula.client.runtime.predictor.EdgePredictor`."""
    logits = predictor.predict_logits(texts)
    onnx_latency = {}
    for n, rows in latency_batches(predictor.encode(texts)).items():
        ids, mask = pad_batch(rows, pad_id=predictor.pad_id)
        onnx_latency[n] = median_ms(lambda ids=ids, mask=mask: predictor.run(ids, mask), repeats=repeats)
    row = {
        "model": f"export {predictor.manifest.target} (onnxruntime)",
        "size_mb": folder_mb(package_dir, exclude=REPORT_FILES),
        "accuracy": accuracy(logits, labels),
        "top1_agreement": 1.0,
        "max_abs_logit_diff": 0.0,
        "latency_b1_ms": onnx_latency[1],
        "latency_b32_ms": onnx_latency[32],
    }
    return logits, row


def _references(student_adapter: str | Path, teacher_adapters: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(row name, adapter folder) of the PyTorch references: the student, then each teacher."""
    references = [("student fp32 (PyTorch, merged)", str(student_adapter))]
    for adapter in teacher_adapters:
        references.append((f"teacher {_base_name(adapter)} fp32 (PyTorch, merged)", str(adapter)))
    return references


def reference_row(
    name: str,
    adapter: str | Path,
    split: EvalSplit,
    logits: np.ndarray | None,
    *,
    max_length: int,
    threads: int,
    repeats: int,
) -> dict:
    """The report row of one PyTorch reference (student or teacher) on ``split``, compared with the package's
    ``logits`` (agreement figures None without them)."""
    from nebula.client.runtime.errors import ExportError

    side = _torch_side(str(adapter), split.texts, max_length=max_length, threads=threads, repeats=repeats)
    if logits is not None and side["logits"].shape != logits.shape:
        raise ExportError(f"{adapter}: {side['logits'].shape[1]} classes, the package has {logits.shape[1]}")
    compared = agreement(logits, side["logits"]) if logits is not None else dict.fromkeys(_AGREEMENT)
    return {
        "model": name,
        "size_mb": side["size_mb"],
        "accuracy": accuracy(side["logits"], split.labels),
        **compared,
        "latency_b1_ms": side["latency_ms"][1],
        "latency_b32_ms": side["latency_ms"][32],
    }


def _base_name(adapter_dir: str | Path) -> str:
    """Short name of an adapter's base model: the builtin's or the folder's name, or the hub id."""
    from nebula.common.packages import builtin_name
    from nebula.deploy.export.merge import read_adapter_config

    name = str(read_adapter_config(Path(adapter_dir)).get("base_model_name_or_path") or "?")
    return builtin_name(name) or (Path(name).name if Path(name).is_absolute() else name)


# --- printing ----------------------------------------------------------------------------------


def format_markdown(report: dict) -> str:
    """The report's rows as a Markdown table, with one line of context above it."""
    test, timing = report["test"], report["timing"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Test set: {test['description']}"
        + (
            f", {100 * test['outside_vocabulary']:.1f}% with tokens outside the pruned vocabulary"
            if report["package"]["kept_vocab_size"]
            else ""
        )
        + f". Latency: median of {timing['repeats']} runs, {timing['threads']} thread(s), {timing['what']}.",
        *_pruning_lines(report["package"].get("pruning")),
        "",
        "| model | size (MB) | accuracy | top-1 agreement with export | max abs logit diff "
        "| batch-1 (ms) | batch-32 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {fmt(r['size_mb'], '.1f')} | {100 * r['accuracy']:.1f}% "
            f"| {100 * r['top1_agreement']:.1f}% "
            f"| {r['max_abs_logit_diff']:.4f} | {r['latency_b1_ms']:.2f} | {r['latency_b32_ms']:.1f} |"
        )
    if report.get("against_teachers"):
        t = TARGETS
        lines += [
            "",
            f"| export against | smaller (target >= {t['smaller_x']:g}x) "
            f"| accuracy kept (target >= {100 * t['accuracy_kept']:g}%) "
            f"| batch-1 faster (target >= {t['batch1_faster_x']:g}x) |",
            "|---|---:|---:|---:|",
        ]

        def cell(a: dict, key: str, spec: str, unit: str) -> str:
            if a[key] is None:
                return "-"
            value = format(a[key] * (100 if unit == "%" else 1), spec)
            return f"{value}{unit} ({'met' if a['met'][key] else 'not met'})"

        for a in report["against_teachers"]:
            lines.append(
                f"| {a['teacher']} | {cell(a, 'smaller_x', '.1f', 'x')} | {cell(a, 'accuracy_kept', '.1f', '%')} "
                f"| {cell(a, 'batch1_faster_x', '.1f', 'x')} |"
            )
    return "\n".join(lines)


def _pruning_lines(record: dict | None) -> list[str]:
    """A sentence on the package's structured pruning (the student row below is the unpruned model); none without."""
    if record is None:
        return []
    from nebula.deploy.export.structured import describe

    return ["", f"The export is pruned: {describe(record)}. The student row is the model before pruning."]


def write_report(report: dict, folder: str | Path) -> tuple[Path, Path]:
    """Write ``export-report.md`` and ``export-report.json`` into ``folder``."""
    folder = Path(folder)
    md, js = (folder / name for name in REPORT_FILES)
    md.write_text(format_markdown(report) + "\n")
    js.write_text(json.dumps(report, indent=2) + "\n")
    return md, js
