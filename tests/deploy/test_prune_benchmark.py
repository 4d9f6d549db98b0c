"""benchmarks/prune.py: its levels and arguments, and a smoke run of the whole command on tiny data (e2e: the real
MiniLM-L3 adapter of tests/conftest.py, exports, onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("prune_benchmark", ROOT / "benchmarks" / "prune.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_levels_start_with_the_unpruned_export_and_try_each_recovery(bench, tmp_path):
    args = bench.parse_args(
        ["--adapter", str(tmp_path), "--levels", "heads:0.5;none;layers:2;heads:0.5", "--recover-epochs", "2,0"]
    )
    assert args.levels == ["none", "heads:0.5", "layers:2"] and args.recover_epochs == [0, 2]
    assert bench.cells(args.levels, args.recover_epochs) == [
        ("none", 0), ("heads:0.5", 0), ("heads:0.5", 2), ("layers:2", 0), ("layers:2", 2),
    ]  # fmt: skip
    assert args.out == ROOT / "benchmarks" / "results" / "prune-tweets.json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--levels", "none;heads:2"], "--levels: 'heads:2': bad entry 'heads:2'"),
        (["--recover-epochs", "one"], "--recover-epochs must be a comma list of integers"),
        (["--recover-epochs", "-1"], "--recover-epochs must list integers >= 0"),
        (["--prune-texts", "0"], "--prune-texts must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(bench, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(["--adapter", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


@pytest.mark.e2e
def test_smoke_run_writes_a_row_per_export(bench, adapter_dir, tmp_path, capsys):
    out = tmp_path / "prune-tweets.json"
    argv = [
        "--adapter", str(adapter_dir), "--dataset", "tweets", "--levels", "none;heads:0.5,ffn:0.5,layers:2",
        "--recover-epochs", "0,1", "--prune-texts", "16", "--test-size", "16", "--repeats", "2", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert {"commit", "uncommitted_changes", "command", "adapter", "test", "settings", "rows"} <= set(result)
    assert result["command"].startswith("python benchmarks/prune.py --adapter")
    assert result["test"]["size"] == 16 and result["settings"]["target"] == "cpu-int8"
    rows = result["rows"]
    assert [(r["level"], r["recover_epochs"]) for r in rows] == [
        ("none", 0), ("heads:0.5,ffn:0.5,layers:2", 0), ("heads:0.5,ffn:0.5,layers:2", 1),
    ]  # fmt: skip
    none, pruned, recovered = rows
    assert none["agreement_with_unpruned"] == 1.0 and none["kept"] is None and none["kl_to_unpruned"] == 0.0
    assert none["parameters"] == pruned["parameters_before"] > pruned["parameters"] == recovered["parameters"]
    assert pruned["model_mb"] < none["model_mb"] and pruned["kept"]["layers"] == [0, 1]
    assert recovered["kl_to_unpruned"] != recovered["kl_to_unpruned_before_recovery"]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement_with_unpruned"] <= 1 and row["latency_b1_ms"] > 0
    table = capsys.readouterr().out
    assert "| level (cpu-int8) | recovery epochs | parameters (M) | model MB | accuracy %" in table
    assert "| heads:0.5,ffn:0.5,layers:2 | 1 |" in table
