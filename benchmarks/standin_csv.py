"""A user's own small CSV, as issue 14 describes it: about a thousand long reviews in three imbalanced classes.

The stand-in is built from the embedded BBC news articles (long texts, 5 topics) relabelled unevenly into 3
classes (about 65 / 26 / 9%: 'business' + 'politics' + 'sports' -> a, 'tech' -> b, 'entertainment' -> c, then
rows dropped per class to reach the shares), written as ``text,label`` CSV. Then the user's one command runs
on it, nothing else given:

    nebula simulate --dataset FILE --output-dir OUT

and the results table is read back: does centralized training and the global student beat the majority-class
rate of the test set? The figures go to ``benchmarks/results/standin-csv.json`` with the commit and command.

    .venv/bin/python benchmarks/standin_csv.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from nebula.common.data import load_dataset
from nebula.common.provenance import provenance

GROUPS = {"business": "a", "politics": "a", "sports": "a", "tech": "b", "entertainment": "c"}
SHARES = {"a": 0.65, "b": 0.26, "c": 0.09}


def write_standin(path: Path, *, rows: int, seed: int) -> dict[str, int]:
    """The stand-in CSV at ``path``; its class counts."""
    bbc = load_dataset("bbc")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for text, label in zip(bbc.texts, bbc.labels, strict=True):
        by_class.setdefault(GROUPS[bbc.label_names[label]], []).append(text)
    chosen = []
    for cls, share in SHARES.items():
        texts = by_class[cls]
        take = min(len(texts), int(round(rows * share)))
        chosen += [(texts[i], cls) for i in rng.choice(len(texts), size=take, replace=False)]
    order = rng.permutation(len(chosen))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(chosen[i] for i in order)
    return {cls: sum(1 for _, c in chosen if c == cls) for cls in SHARES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=979)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/standin"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/standin-csv.json"))
    args = p.parse_args(argv)
    csv_path = args.work / "reviews.csv"
    counts = write_standin(csv_path, rows=args.rows, seed=args.seed)
    command = [str(Path(sys.executable).parent / "nebula"), "simulate", "--dataset", str(csv_path)]
    command += ["--output-dir", str(args.work / "run")]
    print(f"{csv_path}: {counts}; running {shlex.join(command)}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        print(f"nebula simulate exited {done.returncode}", file=sys.stderr)
        return done.returncode
    results = json.loads((args.work / "run" / "results.json").read_text())
    majority = results["majority_rate"]
    rows = {row["method"]: row for row in results["table"]}
    summary = {
        **provenance(),
        "simulate_command": shlex.join(command),
        "rows": args.rows,
        "class_counts": counts,
        "majority_rate": majority,
        "table": results["table"],
        "config": results["config"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"majority-class rate {majority}; methods: {sorted(rows)} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
