"""benchmarks/distill.py: one distillation run on tiny random BERTs (live and cached teachers), the summary's
arithmetic, and a smoke run of the whole command on tiny data (e2e: real models, export, onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_benchmark", ROOT / "benchmarks" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _bert(seed: int, *, layers: int, hidden: int, heads: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def _rows(n: int = 24, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[1, *rng.integers(3, 50, size=int(rng.integers(2, 9))).tolist(), 2] for _ in range(n)]


def _kl_to_teacher(student, teacher, rows) -> float:
    from nebula.learning.training import Encoded, predict_logits

    t, s = (torch.from_numpy(predict_logits(m, Encoded(rows))) for m in (teacher, student))
    return float(torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum"))


def test_distill_student_from_a_live_teacher_uses_every_term_and_approaches_it(bench):
    from nebula.learning.deep_losses import layer_map

    teacher, student = _bert(0, layers=2, hidden=16, heads=2), _bert(1, layers=1, hidden=16, heads=2)
    rows = _rows()
    before = _kl_to_teacher(student, teacher, rows)
    live = bench.LiveTeacher(teacher, layer_map(2, 1))
    schedule = bench.schedule_for({"kd": 1.0, "hidden": 1.0, "relation": 1.0}, 8)
    assert (schedule.distill_epochs, schedule.finetune_epochs) == (7, 1)  # the last epoch on the logits alone
    losses = bench.distill_student(
        student, rows, live, schedule=schedule, lr=1e-2, batch_size=8, temperature=1.0, relation_heads=2, pad_id=0,
        seed=0,
    )  # fmt: skip
    assert set(losses["distill"]) == {"kd", "hidden", "relation"} and set(losses["finetune"]) == {"kd"}
    assert all(np.isfinite(v) for v in losses["distill"].values())
    assert _kl_to_teacher(student, teacher, rows) < 0.5 * before
    assert all(p.grad is None for p in teacher.parameters())


def test_cached_teacher_pools_across_widths_and_refuses_token_level_terms(bench):
    from nebula.learning.deep_losses import layer_map

    teacher, student = _bert(0, layers=2, hidden=32, heads=4), _bert(1, layers=1, hidden=16, heads=2)
    rows, mapping = _rows(), layer_map(2, 1)
    logits, pooled = bench.pooled_outputs(teacher, rows, (2,), pad_id=0, batch_size=5)
    with torch.no_grad():  # row 3 alone: no padding, so its pooled state is the plain mean over its tokens
        out = teacher(input_ids=torch.tensor([rows[3]]), output_hidden_states=True)
    torch.testing.assert_close(torch.from_numpy(pooled[3, 0]), out.hidden_states[2][0].mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(logits[3]), out.logits[0], atol=1e-5, rtol=1e-4)
    cached = bench.CachedTeacher(logits, pooled, mapping)
    args = dict(lr=1e-2, batch_size=8, temperature=1.0, relation_heads=2, pad_id=0, seed=0)
    hidden = bench.schedule_for({"kd": 1, "hidden": 1}, 1)
    losses = bench.distill_student(student, rows, cached, schedule=hidden, **args)
    assert losses == {"distill": {"kd": losses["distill"]["kd"], "hidden": losses["distill"]["hidden"]}}  # 16 -> 32
    assert bench.schedule_for({"kd": 1.0}, 3).distill_epochs == 3  # logits only: no fine-tuning phase
    with pytest.raises(ValueError, match="use the assistant"):
        bench.distill_student(student, rows, cached, schedule=bench.schedule_for({"kd": 1, "relation": 1}, 2), **args)


def test_summary_pairs_seeds_against_logits_and_checks_the_spread(bench):
    def cell(variant, seed, acc):
        figures = dict.fromkeys(bench._SUMMED, 1.0)
        return {**figures, "variant": variant, "seed": seed, "accuracy": acc, "teacher_share": acc / 0.8}

    cells = {
        **{bench.cell_key("logits", s): cell("logits", s, a) for s, a in ((0, 0.70), (1, 0.72), (2, 0.74))},
        **{bench.cell_key("hidden", s): cell("hidden", s, a) for s, a in ((0, 0.75), (1, 0.77), (2, 0.79))},
        **{bench.cell_key("relation", s): cell("relation", s, a) for s, a in ((0, 0.70), (1, 0.73), (2, 0.74))},
    }
    teacher = {"model": "teacher", "accuracy": 0.8, "size_mb": 400.0, "latency_b1_ms": 20.0, "latency_b32_ms": 90.0}
    summary = bench.summarise(cells, {"seed 0": teacher}, ["logits", "hidden", "relation"])
    assert summary["variants"]["logits"]["accuracy"]["mean"] == pytest.approx(0.72)
    assert summary["variants"]["logits"]["accuracy"]["sd"] == pytest.approx(0.02)
    assert summary["variants"]["hidden"]["teacher_share"]["mean"] == pytest.approx(0.9625)
    met = summary["variants"]["hidden"]["met"]
    assert met == {"smaller_x": False, "accuracy_kept": False, "batch1_faster_x": False}  # 96.25% < 97%, 1x
    hidden, relation = summary["deep_vs_logits"]["hidden"], summary["deep_vs_logits"]["relation"]
    assert hidden["difference"]["mean"] == pytest.approx(0.05) and hidden["beyond_spread"] is True  # 5 > 2 points
    assert relation["difference"]["mean"] == pytest.approx(0.0033, abs=1e-4) and relation["beyond_spread"] is False
    assert "hidden - logits: +5.0 points (beyond the seeds' spread 2.0)" in bench.markdown_table(summary)


@pytest.mark.e2e
def test_smoke_run_writes_every_variant_and_resumes(bench, tmp_path, capsys):
    out, work = tmp_path / "distill-tweets.json", tmp_path / "work"
    argv = [
        "--dataset", "tweets", "--seeds", "0", "--variants", "logits,hidden,relation", "--train-size", "48",
        "--pool-size", "48", "--test-size", "32", "--epochs", "1", "--teacher-epochs", "1", "--repeats", "2",
        "--out", str(out), "--work", str(work),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert {"commit", "command", "seeds", "settings", "teacher", "variants", "cells", "deep_vs_logits"} <= set(result)
    assert result["seeds"] == [0] and set(result["variants"]) == {"logits", "hidden", "relation"}
    for variant in result["variants"].values():
        assert {"accuracy", "teacher_share", "size_ratio", "batch1_speedup"} <= set(variant)
        assert 0 <= variant["accuracy"]["mean"] <= 1 and variant["accuracy"]["sd"] is None  # one seed
        assert variant["size_ratio"]["mean"] > 5  # an int8, pruned MiniLM-L3 against the fp32 MPNet
    assert set(result["cells"]["hidden | seed 0"]["losses"]["distill"]) == {"kd", "hidden"}  # one epoch: no fine-tuning
    assert set(result["cells"]["relation | seed 0"]["losses"]["distill"]) == {"kd", "relation"}
    assert "assistant_accuracy" in result["teachers"]["seed 0"]
    capsys.readouterr()
    assert bench.main(argv) == 0  # every cell is in the JSON: nothing runs again
    assert "0 cells to run, 3 already in" in capsys.readouterr().out
    assert json.loads(out.read_text())["cells"] == result["cells"]
