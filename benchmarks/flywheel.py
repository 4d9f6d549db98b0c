"""Device flywheel benchmark: does labelling the rows a strategy picks beat labelling rows at random?

A simulated annotator stands in for the person who labels (the labels come from the dataset). Per seed:

1. the dataset splits into a test set (``--test-size``), a pool of unlabelled "production" inputs
   (``--pool-size``), the client's labelled seed set (``--seed-size``) and, disjoint from all three, the rows
   a "global student" trains on (``--global-size``: a model trained on other data, as the federation's would be);
2. the client (MiniLM-L3 + LoRA) trains on its seed set; its predictions on the pool are appended to a
   :class:`nebula.common.flywheel.PredictionLog`, as the edge runtime logs them; the global student predicts
   the same pool;
3. for each strategy (``random`` and :data:`nebula.common.flywheel.STRATEGIES`; diversity and typicality in
   the base model's sentence embeddings, :mod:`nebula.learning.embeddings`, which ``nebula flywheel
   --embedder`` computes on the device; ``typical`` also takes the embeddings of the seed set) and each
   ``k`` (``--ks``): ``k`` logged rows are
   selected, written to an annotation file (``write_annotation_file``), labelled by the simulated annotator,
   read back (``read_annotations``) and stored next to the seed set in the device's data folder
   (``write_labelled``, read by ``load_labelled_files``); the client retrains from its initial adapter on that
   folder and is measured on the test set.

Run from the repository root, under the shared lock (it trains real models)::

    HF_HUB_OFFLINE=1 flock /tmp/nebula-heavy.lock .venv/bin/python benchmarks/flywheel.py --seeds 0,1,2

It prints a line per seed and a Markdown table (mean ± sd of the test accuracy over the seeds, per strategy
and k), and writes ``--out`` (default benchmarks/results/flywheel-<dataset>.json) after every seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.common.provenance import StoredResultMismatch, provenance, stored_result

ROOT = Path(__file__).resolve().parent.parent
RANDOM = "random"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="tweets", help="builtin dataset: tweets or bbc")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--ks", default="50,100,200", help="comma list: rows labelled per strategy")
    p.add_argument("--strategies", default=None, help="comma list (default: random and every flywheel strategy)")
    p.add_argument("--model", default="minilm-l3", help="the client's base model (and the global student's)")
    p.add_argument("--seed-size", type=int, default=100, help="labelled rows the client starts with")
    p.add_argument("--global-size", type=int, default=500, help="labelled rows of other data the global student saw")
    p.add_argument("--pool-size", type=int, default=2000, help="unlabelled production inputs to select from")
    p.add_argument("--test-size", type=int, default=1000, help="held-out rows every client is measured on")
    p.add_argument("--epochs", type=int, default=5, help="training epochs of every client and the global student")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64, help="tokens per input")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/flywheel-<dataset>.json)")
    p.add_argument("--work", type=Path, default=None, help="prediction logs, annotation files (default: temp folder)")
    args = p.parse_args(argv)
    from nebula.common.flywheel import STRATEGIES

    known = (RANDOM, *STRATEGIES)
    args.strategies = [s for s in (args.strategies or ",".join(known)).split(",") if s]
    if unknown := [s for s in args.strategies if s not in known]:
        p.error(f"unknown strategies {unknown}; known: {', '.join(known)}")
    args.ks = sorted({int(k) for k in args.ks.split(",") if k})
    args.out = args.out or ROOT / "benchmarks" / "results" / f"flywheel-{args.dataset}.json"
    args.work = args.work or Path(tempfile.mkdtemp(prefix=f"nebula-flywheel-{args.dataset}-"))
    return args


@dataclass(frozen=True)
class FlywheelData:
    """One seed's rows (dataset indices): test, production pool, the client's seed set, the global student's."""

    dataset: object  # nebula.common.data.TextDataset
    test: np.ndarray
    pool: np.ndarray
    seed_set: np.ndarray
    global_set: np.ndarray

    def texts(self, index: np.ndarray) -> list[str]:
        return [self.dataset.texts[i] for i in index]


def flywheel_data(args, seed: int) -> FlywheelData:
    from nebula.common.data import load_dataset, split_dataset

    data = load_dataset(args.dataset)
    test, pool, rest = split_dataset(len(data), test=args.test_size, public=args.pool_size, seed=seed)
    if args.seed_size + args.global_size > len(rest):
        raise SystemExit(f"error: --seed-size + --global-size exceed the {len(rest)} rows left after test and pool")
    return FlywheelData(
        data, test, pool, rest[: args.seed_size], rest[args.seed_size : args.seed_size + args.global_size]
    )


# --- the models -------------------------------------------------------------------------------


def train_client(args, texts: list[str], labels: np.ndarray, *, num_classes: int, seed: int):
    """``args.model`` + LoRA from its seeded initial adapter, trained on ``texts`` (cross-entropy)."""
    from nebula.learning.models import LoraSpec, load_learner, load_trainable_state
    from nebula.learning.training import encode, fit

    learner = load_learner(args.model, num_labels=num_classes, lora=LoraSpec(), seed=seed)
    load_trainable_state(learner.model, learner.init_state)
    data = encode(learner.tokenizer, texts, max_length=args.max_length)
    fit(learner.model, data, labels=labels, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        micro_batch_size=args.batch_size, seed=seed)  # fmt: skip
    return learner


def probabilities(learner, texts: list[str], *, max_length: int) -> np.ndarray:
    """Softmax of the learner's logits on ``texts``, (N, C) float64."""
    from nebula.learning.training import encode, predict_logits

    logits = predict_logits(learner.model, encode(learner.tokenizer, texts, max_length=max_length)).astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def accuracy_on_test(learner, data: FlywheelData, *, max_length: int) -> float:
    probs = probabilities(learner, data.texts(data.test), max_length=max_length)
    return float(np.mean(probs.argmax(axis=1) == data.dataset.labels[data.test]))


# --- the flywheel: select, annotate, read back ------------------------------------------------


def choose(records, k: int, strategy: str, *, global_probs: np.ndarray, space, seed: int) -> np.ndarray:
    """Indices into ``records`` of the ``k`` rows ``strategy`` would have labelled (``random``: a seeded draw);
    ``space`` holds the sentence embeddings of the pool and of the seed set."""
    from nebula.common.flywheel import select

    if strategy == RANDOM:
        return np.random.default_rng([seed, k]).choice(len(records), size=min(k, len(records)), replace=False)
    return select(records, k, global_probs=global_probs, strategy=strategy, embeddings=space.pool,
                  labelled_embeddings=space.seed_set, seed=seed)  # fmt: skip


@dataclass(frozen=True)
class Space:
    """Sentence embeddings (:func:`nebula.learning.embeddings.embed`) of the pool (N, d) and the seed set (M, d)."""

    pool: np.ndarray
    seed_set: np.ndarray


def embedding_space(args, data: FlywheelData) -> Space:
    from nebula.learning.embeddings import embed, load_encoder

    model, tokenizer = load_encoder(args.model)
    rows = embed(model, tokenizer, data.texts(np.concatenate([data.pool, data.seed_set])), max_length=args.max_length)
    return Space(rows[: len(data.pool)], rows[len(data.pool) :])


def annotate(path: Path, records, truth: list[str]) -> None:
    """The simulated annotator: fills the empty ``label`` column of the annotation file at ``path`` with the
    dataset's label names, ``truth[i]`` for the file's ``i``-th row (``records[i]``, checked by its text)."""
    from nebula.common.flywheel import ANNOTATION_COLUMNS

    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if [r["text"] for r in rows] != [r.text for r in records]:
        raise RuntimeError(f"{path}: the annotation file's texts are not the selected records'")
    for row, label in zip(rows, truth):
        row["label"] = label
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ANNOTATION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def labelled_folder(folder: Path, data: FlywheelData, records, picked: np.ndarray, pool_labels: np.ndarray):
    """The device's data folder after one flywheel turn: its seed set and the annotated picks, read back as
    the client reads its own files (:func:`nebula.common.data.load_labelled_files`)."""
    from nebula.common.data import TextDataset, load_labelled_files
    from nebula.common.flywheel import read_annotations, write_annotation_file, write_labelled

    names = data.dataset.label_names
    shutil.rmtree(folder, ignore_errors=True)
    chosen = [records[i] for i in picked]
    sheet = write_annotation_file(chosen, folder.parent / f"{folder.name}-annotate.csv", label_names=names)
    annotate(sheet, chosen, [names[pool_labels[i]] for i in picked])
    seed_rows = TextDataset(data.texts(data.seed_set), data.dataset.labels[data.seed_set], names, "seed")
    write_labelled(seed_rows, folder / "0-seed.csv")
    write_labelled(read_annotations(sheet, label_names=names), folder / "1-annotated.csv")
    sheet.unlink()
    return load_labelled_files(folder, label_names=names)


# --- one seed ---------------------------------------------------------------------------------


def turn_key(strategy: str, k: int) -> str:
    return f"{strategy} | {k}"


def run_seed(args, seed: int, result: dict, save) -> dict:
    """Accuracy on the test set of the seed-only client, the global student and the client after each
    (strategy, k) turn of the flywheel, into ``result`` (a resumed seed's turns are kept, not rerun); ``save()``
    after each turn."""
    from nebula.common.flywheel import PredictionLog

    result.setdefault("turns", {})
    todo = [(s, k) for s in args.strategies for k in args.ks if turn_key(s, k) not in result["turns"]]
    if not todo:
        return result
    data, folder = flywheel_data(args, seed), args.work / f"seed-{seed}"
    classes, labels = len(data.dataset.label_names), data.dataset.labels
    other = train_client(args, data.texts(data.global_set), labels[data.global_set], num_classes=classes, seed=seed)
    global_probs = probabilities(other, data.texts(data.pool), max_length=args.max_length)
    result["global_student"] = accuracy_on_test(other, data, max_length=args.max_length)
    client = train_client(args, data.texts(data.seed_set), labels[data.seed_set], num_classes=classes, seed=seed)
    result["seed_only"] = accuracy_on_test(client, data, max_length=args.max_length)
    log = PredictionLog(folder / "predictions.jsonl")
    log.path.unlink(missing_ok=True)
    pool_texts = data.texts(data.pool)
    log.append(
        pool_texts, probabilities(client, pool_texts, max_length=args.max_length), label_names=data.dataset.label_names
    )
    records = log.read().records  # the device's log, read back as the selection reads it
    space = embedding_space(args, data)
    for strategy, k in todo:
        picked = choose(records, k, strategy, global_probs=global_probs, space=space, seed=seed)
        own = labelled_folder(folder / f"{strategy}-{k}", data, records, picked, labels[data.pool])
        client = train_client(args, own.texts, own.labels, num_classes=classes, seed=seed)
        result["turns"][turn_key(strategy, k)] = {
            "accuracy": accuracy_on_test(client, data, max_length=args.max_length),
            "labelled": len(picked),
            "picked_classes": np.bincount(labels[data.pool][picked], minlength=classes).tolist(),
        }
        save()
    return result


# --- results ----------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value) and the values, seed by seed."""
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "per_seed": [float(v) for v in values],
    }


def summarise(per_seed: dict[int, dict], strategies: list[str], ks: list[int]) -> dict:
    """Per strategy and k: the accuracy's :func:`stats` over the seeds, and its mean gain over ``random``."""
    seeds = sorted(per_seed)
    if not seeds:
        return {"seed_only": None, "global_student": None, "results": {}, "gain_over_random": {}}
    results = {
        s: {str(k): stats([per_seed[seed]["turns"][turn_key(s, k)]["accuracy"] for seed in seeds]) for k in ks}
        for s in strategies
    }
    gain = {}  # paired: seed by seed, the strategy's accuracy minus random's at the same k
    if RANDOM in results:
        for s in strategies:
            if s != RANDOM:
                gain[s] = {
                    str(k): stats(
                        [a - b for a, b in zip(results[s][str(k)]["per_seed"], results[RANDOM][str(k)]["per_seed"])]
                    )
                    for k in ks
                }
    return {
        "seed_only": stats([per_seed[s]["seed_only"] for s in seeds]),
        "global_student": stats([per_seed[s]["global_student"] for s in seeds]),
        "results": results,
        "gain_over_random": gain,
    }


def markdown_table(summary: dict, ks: list[int]) -> str:
    """Strategies x k: test accuracy %, mean ± sd over the seeds."""

    def pm(s: dict) -> str:
        return f"{100 * s['mean']:.1f}" + ("" if s["sd"] is None else f" ± {100 * s['sd']:.1f}")

    def gain(s: dict) -> str:
        return f"{100 * s['mean']:+.1f}" + ("" if s["sd"] is None else f" ± {100 * s['sd']:.1f}")

    lines = ["| strategy | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---" + "|---:" * len(ks) + "|"]
    for strategy, by_k in summary["results"].items():
        gains = summary["gain_over_random"].get(strategy, {})
        cells = [pm(by_k[str(k)]) + (f" ({gain(gains[str(k)])})" if str(k) in gains else "") for k in ks]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Seed set only: {pm(summary['seed_only'])}%; global student (other data): {pm(summary['global_student'])}%. "
        "In brackets: points over random, seed by seed (paired), mean ± sd.",
    ]
    return "\n".join(lines)


SETTINGS = ("dataset", "model", "seed_size", "global_size", "pool_size", "test_size", "epochs", "lr", "batch_size",
            "max_length")  # fmt: skip


def settings_of(args) -> dict:
    """What a stored result must share with this run to be resumed (the strategies and ks may grow)."""
    return {k: getattr(args, k) for k in SETTINGS} | {
        "diversity_space": f"sentence embeddings of {args.model}",
        "annotator": "the dataset's labels",
    }


def load(path: Path, settings: dict) -> dict[int, dict]:
    """The seeds already in ``path`` (none if it does not exist), their turns kept; refuses other settings."""
    try:
        stored = stored_result(path, settings)
    except StoredResultMismatch as exc:
        raise SystemExit(f"error: {exc}") from None
    return {} if stored is None else {int(s): r for s, r in stored["per_seed"].items()}


def complete(per_seed: dict[int, dict], strategies: list[str], ks: list[int]) -> dict[int, dict]:
    """The seeds that hold every (strategy, k) turn asked for: what the summary averages."""
    wanted = [turn_key(s, k) for s in strategies for k in ks]
    return {s: r for s, r in per_seed.items() if all(t in r.get("turns", {}) for t in wanted)}


def write(args, per_seed: dict[int, dict], command: str) -> dict:
    """Rewrite ``args.out`` with the seeds so far (one still running too) and the summary of the complete ones
    (atomically); returns the summary."""
    summary = summarise(complete(per_seed, args.strategies, args.ks), args.strategies, args.ks)
    result = {
        "what": "accuracy of a client after labelling k rows chosen by each flywheel strategy (benchmarks/flywheel.py)",
        **provenance(),
        "command": command,
        "seeds": sorted(per_seed),
        "complete_seeds": sorted(complete(per_seed, args.strategies, args.ks)),
        "ks": args.ks,
        "settings": settings_of(args),
        **summary,
        "per_seed": {str(s): r for s, r in sorted(per_seed.items())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    command = "python benchmarks/flywheel.py " + " ".join(sys.argv[1:] if argv is None else argv)
    per_seed = load(args.out, settings_of(args))  # an interrupted run continues: finished turns are kept
    done = complete(per_seed, args.strategies, args.ks)
    print(f"{len([s for s in seeds if s not in done])} seeds to run, {len(done)} complete in {args.out}", flush=True)
    started = time.perf_counter()
    for seed in seeds:
        if seed in done:
            continue
        result = per_seed.setdefault(seed, {})
        run_seed(args, seed, result, lambda: write(args, per_seed, command))
        best = max(result["turns"].items(), key=lambda kv: kv[1]["accuracy"])
        print(
            f"seed {seed}: seed set only {100 * result['seed_only']:.1f}%, global student "
            f"{100 * result['global_student']:.1f}%, best turn {best[0]} {100 * best[1]['accuracy']:.1f}%; "
            f"elapsed {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    summary = write(args, per_seed, command)
    if not summary["results"]:
        return 0
    print("\n" + markdown_table(summary, args.ks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
