"""Report measurements as pure functions, the Markdown table, small real reports, and which test split a report
measures on (the run's own where the adapter is in a run folder)."""

import json
import shutil

import numpy as np
import pytest

from nebula.client.runtime.errors import ExportError
from nebula.deploy.export.report import (
    TARGETS,
    against_teacher,
    agreement,
    build_report,
    choose_split,
    dataset_split,
    find_run_folder,
    format_markdown,
    latency_batches,
    median_ms,
    run_split,
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
    assert report["test"]["split"] == "dataset" and "a split of its own" in table  # the adapter is in no run folder
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


# --- which test split: the run's own, or a split of its own --------------------------------------


def _run_folder(root, *configs):
    """A run folder whose ledger started one run per flat configuration, in order (run ids run-0, run-1, ...)."""
    from nebula.common.config import NebulaConfig
    from nebula.server.ledger import Ledger

    ledger = Ledger(root / "ledger.sqlite")
    try:
        for i, flat in enumerate(configs):
            ledger.start_run(f"run-{i}", NebulaConfig.from_flat(flat).to_flat())
    finally:
        ledger.close()
    return root


@pytest.mark.parametrize(
    "layout", ["models/global-student", "models/teacher", "clients/client-3/adapter", "unlearning/r1/models/teacher"]
)
def test_find_run_folder_from_every_adapter_layout_of_a_run(tmp_path, layout):
    run = _run_folder(tmp_path / "run")
    (run / layout).mkdir(parents=True)
    assert find_run_folder(run / layout) == run.resolve()
    (tmp_path / "elsewhere" / "adapter").mkdir(parents=True)
    assert find_run_folder(tmp_path / "elsewhere" / "adapter") is None
    too_deep = run / "a" / "b" / "c" / "d" / "e"  # more levels than any adapter of a run folder
    too_deep.mkdir(parents=True)
    assert find_run_folder(too_deep) is None


def test_run_split_is_the_last_runs_test_set_as_the_federation_drew_it(tmp_path):
    from nebula.common.config import NebulaConfig
    from nebula.common.federation_data import build_federation_data

    last = {"data.test_size": 30, "data.seed": 7, "data.public_size": 50}
    run = _run_folder(tmp_path, {"data.test_size": 40, "data.seed": 1}, last)
    split = run_split(run)
    expected = build_federation_data(NebulaConfig.from_flat(last).data)
    assert split.texts == expected.texts(expected.test)
    assert split.labels.tolist() == expected.labels(expected.test).tolist()
    assert split.source["split"] == "run" and split.source["run_id"] == "run-1" and split.source["seed"] == 7
    assert "run's own held-out test split" in split.source["description"] and "run-1" in split.source["description"]
    own = dataset_split("tweets", test_size=30, seed=0)
    assert own.source["split"] == "dataset" and own.texts != split.texts  # seed 0 draws another set than seed 7


def test_choose_split_prefers_the_run_and_says_why_it_falls_back(tmp_path):
    run = _run_folder(tmp_path / "run", {"data.test_size": 20, "data.seed": 3})
    (run / "models" / "global-student").mkdir(parents=True)
    chosen = choose_split(run / "models" / "global-student", dataset="tweets", test_size=30, seed=0)
    assert chosen.source["split"] == "run" and len(chosen.texts) == 20  # the run's size, not the fallback's 30

    (tmp_path / "loose").mkdir()
    fallback = choose_split(tmp_path / "loose", dataset="tweets", test_size=30, seed=0)
    assert fallback.source["split"] == "dataset" and len(fallback.texts) == 30
    assert "not in a run folder" in fallback.source["description"]
    with pytest.raises(ExportError, match="not in a run folder.*--dataset"):
        choose_split(tmp_path / "loose", dataset=None, test_size=30, seed=0)

    empty = _run_folder(tmp_path / "empty")  # a ledger without a run: nothing to rebuild the split from
    (empty / "models" / "teacher").mkdir(parents=True)
    reason = choose_split(empty / "models" / "teacher", dataset="tweets", test_size=30, seed=0)
    assert reason.source["split"] == "dataset" and "holds no run" in reason.source["description"]
    with pytest.raises(ExportError, match="cannot rebuild the run's test split"):
        choose_split(empty / "models" / "teacher", dataset=None, test_size=30, seed=0)


def test_real_report_measures_on_the_runs_own_test_split(int8_package, adapter_dir, tmp_path):
    from nebula.client.runtime.predictor import EdgePredictor

    run = _run_folder(tmp_path / "run", {"data.test_size": 24, "data.seed": 5})
    student = shutil.copytree(adapter_dir, run / "models" / "global-student")
    report = build_report(int8_package, student_adapter=student, repeats=2, threads=1)  # no dataset needed
    assert report["test"]["split"] == "run" and report["test"]["size"] == 24 and report["test"]["run_id"] == "run-0"
    split = run_split(run)
    package_logits = EdgePredictor(int8_package).predict_logits(split.texts)
    assert report["rows"][0]["accuracy"] == pytest.approx(float(np.mean(package_logits.argmax(1) == split.labels)))
    assert format_markdown(report).startswith("Test set: the run's own held-out test split: tweets, 24 texts")
