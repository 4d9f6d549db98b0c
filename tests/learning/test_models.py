"""learning/models.py's checkpoint files: written whole, read back, and a missing or corrupt one named."""

import pytest
import torch

from nebula.learning.models import load_checkpoint, save_checkpoint


def test_a_checkpoint_round_trips_and_leaves_no_temporary_file(tmp_path):
    teacher, student = {"a.weight": torch.arange(6.0).reshape(2, 3)}, {"b.bias": torch.ones(4)}
    save_checkpoint(tmp_path / "round-001", teacher, student)
    got_teacher, got_student = load_checkpoint(tmp_path / "round-001")
    assert torch.equal(got_teacher["a.weight"], teacher["a.weight"]) and torch.equal(
        got_student["b.bias"], student["b.bias"]
    )
    assert sorted(p.name for p in (tmp_path / "round-001").iterdir()) == ["student.pt", "teacher.pt"]


def test_a_missing_or_corrupt_state_is_named(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"w": torch.zeros(1)})
    (tmp_path / "student.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"cannot read the model state .*student\.pt"):
        load_checkpoint(tmp_path)
    (tmp_path / "teacher.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model state .*teacher\.pt"):
        load_checkpoint(tmp_path)
