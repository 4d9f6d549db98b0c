"""benchmarks/flywheel.py: the simulated annotator's round trip through the flywheel's files, the selection by
strategy, the summary's arithmetic, and a smoke run of the whole command on tiny data (e2e: real models)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flywheel_benchmark", ROOT / "benchmarks" / "flywheel.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def small(bench, tmp_path):
    """Tiny tweets split (test 10, pool 30, seed set 6, global 6), its pool logged with made-up probabilities."""
    from nebula.common.flywheel import PredictionLog

    args = bench.parse_args(["--test-size", "10", "--pool-size", "30", "--seed-size", "6", "--global-size", "6"])
    data = bench.flywheel_data(args, seed=1)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=30)  # (30, 3)
    log = PredictionLog(tmp_path / "log.jsonl")
    log.append(data.texts(data.pool), probs, label_names=data.dataset.label_names)
    return data, log.read().records


def test_split_is_disjoint_and_sized(bench, small):
    data, _ = small
    parts = [data.test, data.pool, data.seed_set, data.global_set]
    assert [len(p) for p in parts] == [10, 30, 6, 6]
    assert len(set(np.concatenate(parts).tolist())) == 52


def test_annotated_rows_join_the_seed_set_with_the_datasets_labels(bench, small, tmp_path):
    from nebula.common.flywheel import write_annotation_file

    data, records = small
    picked = np.array([4, 0, 17])
    own = bench.labelled_folder(tmp_path / "device", data, records, picked, data.dataset.labels[data.pool])
    names = data.dataset.label_names
    assert own.texts == data.texts(data.seed_set) + [records[i].text for i in picked]
    expected = np.concatenate([data.dataset.labels[data.seed_set], data.dataset.labels[data.pool][picked]])
    assert own.labels.tolist() == expected.tolist() and own.label_names == names
    assert sorted(p.name for p in (tmp_path / "device").iterdir()) == ["0-seed.csv", "1-annotated.csv"]
    sheet = write_annotation_file([records[1]], tmp_path / "sheet.csv")
    with pytest.raises(RuntimeError, match="not the selected records"):  # the annotator checks what it labels
        bench.annotate(sheet, [records[2]], ["negative"])


def test_choose_random_is_seeded_and_strategies_use_the_flywheels_selection(bench, small):
    from nebula.common.flywheel import STRATEGIES, select

    _, records = small
    rng = np.random.default_rng(1)
    other = rng.dirichlet(np.ones(3), size=30)
    space = bench.Space(rng.normal(size=(30, 8)), rng.normal(size=(6, 8)))
    draw = lambda seed: bench.choose(records, 8, "random", global_probs=other, space=space, seed=seed).tolist()
    assert len(set(draw(3))) == 8 and draw(3) == draw(3) and draw(3) != draw(4)
    for strategy in STRATEGIES:
        picked = bench.choose(records, 8, strategy, global_probs=other, space=space, seed=3)
        expected = select(records, 8, global_probs=other, strategy=strategy, embeddings=space.pool,
                          labelled_embeddings=space.seed_set, seed=3)  # fmt: skip
        assert picked.tolist() == expected.tolist()


def test_summary_means_over_seeds_and_gains_over_random(bench):
    def seed(acc: dict):
        turns = {f"{s} | {k}": {"accuracy": a} for (s, k), a in acc.items()}
        return {"seed_only": 0.5, "global_student": 0.6, "turns": turns}

    per_seed = {
        0: seed({("random", 50): 0.60, ("uncertainty", 50): 0.64}),
        1: seed({("random", 50): 0.62, ("uncertainty", 50): 0.68}),
    }
    summary = bench.summarise(per_seed, ["random", "uncertainty"], [50])
    assert summary["results"]["uncertainty"]["50"]["mean"] == pytest.approx(0.66)
    assert summary["results"]["uncertainty"]["50"]["per_seed"] == [0.64, 0.68]
    gain = summary["gain_over_random"]["uncertainty"]["50"]  # paired: +0.04 and +0.06
    assert gain["mean"] == pytest.approx(0.05) and gain["sd"] == pytest.approx(np.std([0.04, 0.06], ddof=1))
    table = bench.markdown_table(summary, [50])
    assert "| uncertainty | 66.0 ± 2.8 (+5.0 ± 1.4) |" in table and "| random | 61.0 ± 1.4 |" in table


def test_a_stored_run_resumes_with_its_turns_and_refuses_other_settings(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path / "fw.json"), "--strategies", "random,typical", "--ks", "5"])
    per_seed = {0: {"seed_only": 0.5, "global_student": 0.6, "turns": {"random | 5": {"accuracy": 0.5}}}}
    bench.write(args, per_seed, "cmd")  # seed 0 half done: not averaged yet
    stored = json.loads(args.out.read_text())
    assert stored["complete_seeds"] == [] and stored["results"] == {} and stored["seeds"] == [0]
    assert bench.load(args.out, bench.settings_of(args)) == per_seed
    assert bench.complete(per_seed, ["random"], [5]) == per_seed and bench.complete(per_seed, ["typical"], [5]) == {}
    other = bench.parse_args(["--out", str(args.out), "--epochs", "2"])
    with pytest.raises(SystemExit, match="other settings .*'epochs': \\(5, 2\\)"):
        bench.load(other.out, bench.settings_of(other))


@pytest.mark.e2e
def test_smoke_run_writes_every_strategy_and_k(bench, tmp_path):
    out = tmp_path / "flywheel.json"
    argv = [
        "--seeds", "0", "--ks", "4,8", "--seed-size", "16", "--global-size", "16", "--pool-size", "40",
        "--test-size", "24", "--epochs", "1", "--out", str(out), "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert {"commit", "command", "seeds", "settings", "results", "seed_only", "global_student"} <= set(result)
    assert set(result["results"]) == {"random", "uncertainty", "disagreement", "diverse", "mixed", "typical"}
    for by_k in result["results"].values():
        assert set(by_k) == {"4", "8"}
        assert all(0 <= v["mean"] <= 1 and len(v["per_seed"]) == 1 for v in by_k.values())
    turns = result["per_seed"]["0"]["turns"]
    assert all(t["labelled"] == int(key.split(" | ")[1]) for key, t in turns.items())
    assert all(sum(t["picked_classes"]) == t["labelled"] for t in turns.values())
