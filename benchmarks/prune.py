"""Prune-distill-quantise: what structured pruning buys and costs an exported student, level by level.

For one adapter (e.g. a run's ``models/global-student``) and each pruning level (``--levels``, specs of
``nebula export --prune`` separated by ``;``; ``none`` is the unpruned export, always measured first as the
reference) with each number of recovery epochs (``--recover-epochs``; ``none`` only once), this exports the
adapter as ``nebula export`` does (:func:`nebula.deploy.export.export.export_adapter`: merge, structured pruning
scored on and recovered by distillation on ``--prune-texts`` texts of the dataset's public pool, ONNX, ``--target``)
and measures the package with onnxruntime on the held-out test set (:func:`nebula.deploy.export.report.export_row`;
the run's own test split where the adapter lies in a run folder, else the dataset's, as ``nebula export --report``):
model size, accuracy, top-1 agreement with the unpruned export, and batch-1 / batch-32 latency.

It prints a Markdown table and writes ``benchmarks/results/prune-<dataset>.json`` (``--out``) with ``commit``,
``command``, the settings and one row per export. Run it from the repository root, under the shared lock::

    HF_HUB_OFFLINE=1 flock /tmp/nebula-heavy.lock .venv/bin/python benchmarks/prune.py \\
        --adapter runs/latest/models/global-student --dataset tweets

A smoke run on tiny sizes (tests/deploy/test_prune_benchmark.py)::

    .venv/bin/python benchmarks/prune.py --adapter ADAPTER --dataset tweets --levels "none;heads:0.5,ffn:0.5" \\
        --recover-epochs 0,1 --prune-texts 16 --test-size 16 --repeats 2 --out /tmp/prune.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from nebula.common.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
NONE = "none"
LEVELS = "none;heads:0.75;ffn:0.5;heads:0.5,ffn:0.5;layers:2;heads:0.5,ffn:0.5,layers:2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from nebula.deploy.export.onnx_export import TARGETS
    from nebula.learning.prune_spec import PruneSpec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder, e.g. runs/latest/models/global-student")
    p.add_argument("--dataset", default="tweets", help="the adapter's dataset: labels, public pool, test set")
    p.add_argument(
        "--levels", default=LEVELS, help=f"';'-separated --prune specs, '{NONE}': unpruned (default {LEVELS})"
    )
    p.add_argument("--recover-epochs", default="0,1", help="comma list of recovery epochs tried at each level")
    p.add_argument("--target", default="cpu-int8", choices=list(TARGETS), help="export target")
    p.add_argument("--prune-texts", type=int, default=512, help="public texts that score importance and recover on")
    p.add_argument("--prune-vocab-from", default=None, help="also prune the vocabulary to this corpus (as the export)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the recovery")
    p.add_argument("--test-size", type=int, default=500, help="held-out texts (when the adapter is in no run folder)")
    p.add_argument("--seed", type=int, default=0, help="split seed (when the adapter is in no run folder)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per input")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads while timing")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/prune-<dataset>.json)")
    p.add_argument("--work", type=Path, default=None, help="folder of the exports (default: a temporary folder)")
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"prune-{_slug(args.dataset)}.json"
    for name in ("prune_texts", "test_size", "max_length", "threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    levels = [x.strip() for x in args.levels.split(";") if x.strip()]
    for level in levels:
        if level != NONE:
            try:
                PruneSpec.parse(level)
            except ValueError as err:
                p.error(f"--levels: {level!r}: {err}")
    args.levels = [NONE, *dict.fromkeys(x for x in levels if x != NONE)]  # the reference first, once
    try:
        args.recover_epochs = sorted({int(x) for x in args.recover_epochs.split(",") if x.strip()})
    except ValueError:
        p.error(f"--recover-epochs must be a comma list of integers, got {args.recover_epochs!r}")
    if not args.recover_epochs or args.recover_epochs[0] < 0:
        p.error(f"--recover-epochs must list integers >= 0, got {args.recover_epochs}")
    return args


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(text).stem if "/" in text else text).strip("-") or "level"


def cells(levels: list[str], recover_epochs: list[int]) -> list[tuple[str, int]]:
    """(level, recovery epochs) of every export: the unpruned one once, each pruned level at each epoch count."""
    return [(NONE, 0)] + [(level, r) for level in levels if level != NONE for r in recover_epochs]


def measure(args, split, level: str, recover: int, folder: Path, reference) -> tuple[object, dict]:
    """Export at ``level`` with ``recover`` epochs into ``folder`` and measure the package on ``split``; returns its
    test logits and its row (``reference``: the unpruned export's logits, None for the unpruned export itself)."""
    from nebula.client.runtime.predictor import EdgePredictor
    from nebula.deploy.export.export import ExportConfig, export_adapter
    from nebula.deploy.export.report import agreement, export_row
    from nebula.deploy.export.structured import read_record

    t0 = time.perf_counter()
    config = ExportConfig(
        adapter_dir=str(args.adapter), out=str(folder), target=args.target, max_length=args.max_length,
        dataset=split.source["dataset"], test_size=split.source["test_size"], seed=split.source["seed"],
        prune="" if level == NONE else level, prune_recover_epochs=recover, prune_texts=args.prune_texts,
        prune_lr=args.lr, prune_vocab_from=args.prune_vocab_from,
    )  # fmt: skip
    export_adapter(config)
    seconds = time.perf_counter() - t0
    predictor = EdgePredictor(folder, intra_op_threads=args.threads)
    logits, row = export_row(predictor, folder, split.texts, split.labels, repeats=args.repeats)
    record = read_record(folder)
    agree = agreement(logits, reference if reference is not None else logits)
    return logits, {
        "level": level,
        "recover_epochs": recover,
        "parameters": record["parameters_after"] if record else None,
        "parameters_before": record["parameters_before"] if record else None,
        "model_mb": (folder / "model.onnx").stat().st_size / 1e6,
        "size_mb": row["size_mb"],
        "accuracy": row["accuracy"],
        "agreement_with_unpruned": agree["top1_agreement"],
        "max_abs_logit_diff_to_unpruned": agree["max_abs_logit_diff"],
        "latency_b1_ms": row["latency_b1_ms"],
        "latency_b32_ms": row["latency_b32_ms"],
        "kl_to_unpruned_before_recovery": record["kl_before"] if record else 0.0,
        "kl_to_unpruned": record["kl_after"] if record else 0.0,
        "kept": record["kept"] if record else None,
        "export_seconds": seconds,
    }


def markdown_table(rows: list[dict], *, target: str) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"| level ({target}) | recovery epochs | parameters (M) | model MB | accuracy % | agreement with unpruned % "
        "| KL to unpruned (pool) | batch-1 ms | batch-32 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = None if r["parameters"] is None else r["parameters"] / 1e6
        lines.append(
            f"| {r['level']} | {r['recover_epochs']} | {fmt(params, '.2f')} | {r['model_mb']:.1f} "
            f"| {100 * r['accuracy']:.1f} | {100 * r['agreement_with_unpruned']:.1f} | {r['kl_to_unpruned']:.4f} "
            f"| {r['latency_b1_ms']:.2f} | {r['latency_b32_ms']:.1f} |"
        )
    return "\n".join(lines)


def write(args, split, rows: list[dict], command: str) -> None:
    """Rewrite ``args.out`` with the rows so far (atomically)."""
    names = ("target", "prune_texts", "lr", "prune_vocab_from", "max_length", "threads", "repeats")
    settings = {k: getattr(args, k) for k in names}
    result = {
        "what": "structured pruning + distillation recovery + quantisation of one adapter (benchmarks/prune.py)",
        **provenance(),
        "command": command,
        "adapter": str(args.adapter),
        "test": {k: v for k, v in split.source.items() if k != "description"} | {"size": len(split.texts)},
        "settings": settings,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)


def main(argv: list[str] | None = None) -> int:
    from nebula.deploy.export.report import choose_split

    args = parse_args(argv)
    command = "python benchmarks/prune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    split = choose_split(args.adapter, dataset=args.dataset, test_size=args.test_size, seed=args.seed)
    print(f"test set: {split.source['description']}", flush=True)
    todo = cells(args.levels, args.recover_epochs)
    with tempfile.TemporaryDirectory(prefix="nebula-prune-") as tmp:
        work = args.work or Path(tmp)
        rows, reference = [], None
        for i, (level, recover) in enumerate(todo, 1):
            folder = work / f"{_slug(level)}-r{recover}"
            logits, row = measure(args, split, level, recover, folder, reference)
            reference = logits if reference is None else reference
            rows.append(row)
            if rows[0]["parameters"] is None:  # the unpruned export's count: what a pruned export started from
                rows[0]["parameters"] = row["parameters_before"]
            write(args, split, rows, command)
            print(
                f"[{i}/{len(todo)}] {level}, {recover} recovery epoch(s): {100 * row['accuracy']:.1f}%, "
                f"{row['model_mb']:.1f} MB, agreement {100 * row['agreement_with_unpruned']:.1f}%, "
                f"batch-1 {row['latency_b1_ms']:.2f} ms (export {row['export_seconds']:.0f} s)",
                flush=True,
            )
    print("\n" + markdown_table(rows, target=args.target))
    print(f"\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
