"""Report measurements as pure functions, the Markdown table, and one small real report."""

import json

import numpy as np
import pytest

from deploy.edge.report import agreement, build_report, format_markdown, latency_batches, median_ms, write_report


def test_agreement_of_identical_logits_is_perfect():
    logits = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert agreement(logits, logits) == {"top1_agreement": 1.0, "max_abs_logit_diff": 0.0}
    assert agreement(logits, logits[:, ::-1] + 0.5) == {"top1_agreement": 0.0, "max_abs_logit_diff": 2.5}
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(logits, logits[:1])


def test_median_ms_runs_warmup_then_repeats():
    calls = []
    assert median_ms(lambda: calls.append(1), repeats=20, warmup=3) >= 0
    assert len(calls) == 23


def test_latency_batches_pick_the_median_length_text_and_the_first_n():
    rows = [[1] * n for n in (5, 1, 9, 3, 7)]
    batches = latency_batches(rows, sizes=(1, 2))
    assert batches == {1: [[1] * 5], 2: [[1] * 5, [1]]}


def test_small_real_report(int8_package, adapter_dir, tmp_path):
    report = build_report(int8_package, dataset="tweets", test_size=32, repeats=2, threads=1)
    export, student = report["rows"]
    assert export["size_mb"] < 25 and student["size_mb"] > 60  # int8 package vs fp32 base + adapter
    assert student["top1_agreement"] >= 0.9 and export["latency_b32_ms"] > 0
    table = format_markdown(report)
    assert table.count("\n|") == 4 and "export cpu-int8 (onnxruntime)" in table  # header, rule, 2 rows
    md, js = write_report(report, tmp_path)
    assert json.loads(js.read_text())["test"]["size"] == 32 and md.read_text().startswith("Test set: tweets")
