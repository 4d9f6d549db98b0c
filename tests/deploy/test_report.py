"""Report measurements as pure functions, the Markdown table, and one small real report."""

import json

import numpy as np
import pytest

from nebula.deploy.export.report import (
    TARGETS,
    against_teacher,
    agreement,
    build_report,
    format_markdown,
    latency_batches,
    median_ms,
    write_report,
)


def test_agreement_of_identical_logits_is_perfect():
    logits = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert agreement(logits, logits) == {"top1_agreement": 1.0, "max_abs_logit_diff": 0.0}
    assert agreement(logits, logits[:, ::-1] + 0.5) == {"top1_agreement": 0.0, "max_abs_logit_diff": 2.5}
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(logits, logits[:1])


def test_against_teacher_states_ratios_and_which_targets_are_met():
    export = {"model": "export", "size_mb": 10.0, "accuracy": 0.64, "latency_b1_ms": 2.0}
    teacher = {"model": "teacher mpnet", "size_mb": 400.0, "accuracy": 0.68, "latency_b1_ms": 30.0}
    a = against_teacher(export, teacher)
    assert a["smaller_x"] == 40.0 and a["batch1_faster_x"] == 15.0
    assert a["accuracy_kept"] == pytest.approx(0.64 / 0.68)
    assert a["met"] == {"smaller_x": True, "accuracy_kept": False, "batch1_faster_x": True}  # 94.1% < 97%
    hub = against_teacher(export, {**teacher, "size_mb": None})
    assert hub["smaller_x"] is None and hub["met"]["smaller_x"] is None
    assert set(a["met"]) == set(TARGETS)


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
    assert report["against_teachers"] == []


def test_report_against_several_teachers(int8_package, adapter_dir):
    # the student's own adapter stands in for two teachers: one row and one comparison each
    report = build_report(
        int8_package, dataset="tweets", test_size=32, repeats=2, threads=1, teacher_adapters=[adapter_dir, adapter_dir]
    )
    names = [r["model"] for r in report["rows"]]
    assert len(names) == 4 and names[2] == names[3] and names[2].startswith("teacher minilm-l3 fp32")
    export, student = report["rows"][:2]
    first = report["against_teachers"][0]
    assert first["accuracy_kept"] == pytest.approx(export["accuracy"] / student["accuracy"])
    assert first["smaller_x"] == pytest.approx(student["size_mb"] / export["size_mb"]) and first["smaller_x"] > 2
    assert "| export against |" in format_markdown(report)
