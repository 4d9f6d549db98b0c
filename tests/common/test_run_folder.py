"""RunFolder: every path of a run folder, named once (common/run_folder.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nebula.common.run_folder import (
    RunFolder,
    adapter_dirs,
    certificate_file,
    checkpoint_file,
    round_checkpoint,
)


def test_each_path_of_the_run_folder(tmp_path):
    run = RunFolder(tmp_path)
    assert run.ledger == tmp_path / "ledger.sqlite"
    assert run.metrics == tmp_path / "metrics.jsonl"
    assert (run.results_md, run.results_json, run.plot) == (
        tmp_path / "results.md",
        tmp_path / "results.json",
        tmp_path / "accuracy_bytes.png",
    )
    assert run.checkpoints == tmp_path / "checkpoints"
    assert run.checkpoint(3) == tmp_path / "checkpoints" / "round-003"
    assert run.checkpoint(1234) == tmp_path / "checkpoints" / "round-1234"
    assert run.models == tmp_path / "models"
    assert run.teacher_adapter == tmp_path / "models" / "teacher"
    assert run.student_adapter == tmp_path / "models" / "global-student"
    assert run.clients == tmp_path / "clients"
    assert run.client_adapter("client-2") == tmp_path / "clients" / "client-2" / "adapter"
    assert run.certificates == tmp_path / "certificates"
    assert run.certificate("req-1") == tmp_path / "certificates" / "req-1.json"
    assert run.unlearning == tmp_path / "unlearning"
    assert run.current_pointer == tmp_path / "unlearning" / "CURRENT"
    assert run.request_dir("req-1") == tmp_path / "unlearning" / "req-1"
    assert run.request_manifest("req-1") == tmp_path / "unlearning" / "req-1" / "models.json"
    assert run.request_checkpoints("req-1") == tmp_path / "unlearning" / "req-1" / "checkpoints"
    assert run.request_models("req-1") == tmp_path / "unlearning" / "req-1" / "models"


def test_the_helpers_name_files_inside_any_folder(tmp_path):
    assert round_checkpoint(tmp_path, 7) == tmp_path / "round-007"
    assert checkpoint_file(tmp_path, "student") == tmp_path / "student.pt"
    assert adapter_dirs(tmp_path) == (tmp_path / "teacher", tmp_path / "global-student")
    assert certificate_file(tmp_path, "r") == tmp_path / "r.json"


def test_the_root_is_a_path_and_the_folder_a_value(tmp_path):
    run = RunFolder(str(tmp_path))
    assert isinstance(run.root, Path) and run == RunFolder(tmp_path)


def test_checkpoint_rounds_ignores_junk_folders(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoint_rounds() == []  # no checkpoints folder at all
    for r in (10, 2, 1):
        run.checkpoint(r).mkdir(parents=True)
        (run.checkpoint(r) / "teacher.pt").write_bytes(b"state")
    (run.checkpoints / "round-005").mkdir()  # no teacher.pt: a crash before the first file
    (run.checkpoints / "round-005" / "student.pt").write_bytes(b"state")
    for junk in ("round-abc", "round-", "notes"):
        (run.checkpoints / junk).mkdir()
        (run.checkpoints / junk / "teacher.pt").write_bytes(b"state")
    (run.checkpoints / "round-007").write_text("a file, not a folder")
    assert run.checkpoint_rounds() == [1, 2, 10]


def _manifest(run: RunFolder, request_id: str, run_id: str) -> None:
    run.request_dir(request_id).mkdir(parents=True, exist_ok=True)
    run.request_manifest(request_id).write_text(json.dumps({"run_id": run_id}))


def test_current_request_needs_a_complete_manifest_of_this_run(tmp_path):
    run = RunFolder(tmp_path)
    assert run.current_request("run-a") is None  # no CURRENT
    run.unlearning.mkdir()
    run.current_pointer.write_text("req-1\n")
    assert run.current_request("run-a") is None  # CURRENT names a request whose models.json is missing
    assert run.finished_request("req-1") is None
    _manifest(run, "req-1", "run-b")
    assert run.current_request("run-a") is None  # a foreign run's request
    _manifest(run, "req-1", "run-a")
    assert run.current_request("run-a") == "req-1"
    assert run.finished_request("req-1") == {"run_id": "run-a"}


def test_an_unreadable_manifest_is_a_value_error(tmp_path):
    run = RunFolder(tmp_path)
    run.request_dir("req-1").mkdir(parents=True)
    run.request_manifest("req-1").write_text("{not json")
    run.current_pointer.write_text("req-1")
    with pytest.raises(ValueError, match="models.json: unreadable"):
        run.current_request("run-a")


def test_relative_paths_survive_a_moved_folder(tmp_path):
    run = RunFolder(tmp_path / "a")
    assert run.relative(run.checkpoint(2)) == "checkpoints/round-002"
    assert run.relative(run.request_dir("req-1")) == "unlearning/req-1"
    moved = RunFolder(tmp_path / "b")
    assert moved.root / run.relative(run.checkpoint(2)) == moved.checkpoint(2)
    with pytest.raises(ValueError):
        run.relative(tmp_path / "elsewhere")
