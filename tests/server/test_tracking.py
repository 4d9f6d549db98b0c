"""Round metrics as TensorBoard scalars (server/tracking.py): written, read back with TensorBoard's own
reader, wired into the federation's rounds, and written without torch."""

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nebula.common.config import ConfigError
from nebula.server.tracking import ROUND_SCALARS, TensorBoardLog, round_scalars

from .test_federation import TEACHER, honest, make, teacher


def summary(r: int, *, teacher_acc: float | None) -> dict:
    return {
        "round": r,
        "accepted": 2,
        "rejected": {"client-2": "timeout"},
        "mean_client_acc": 0.41 + r / 100,
        "min_client_acc": 0.3,
        "mean_client_acc_own": None,
        "teacher_acc": teacher_acc,
        "student_acc": 0.52 + r / 100,
        "teacher_ok": teacher_acc is not None,
        "bytes_up_per_client": 12345.0 * r,
        "bytes_down_per_client": 67890.0,
        "seconds": 3.25 * r,
        "clients": {"client-0": {"acc_global": 0.4, "train_loss": 1.5}, "client-1": {"acc_global": 0.45}},
    }


def read_back(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file in ``folder``, through TensorBoard's reader."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_two_rounds_read_back_with_their_tags_steps_and_values(tmp_path):
    log = TensorBoardLog(tmp_path / "tensorboard")
    first = log.write(summary(1, teacher_acc=0.61))
    second = log.write(summary(2, teacher_acc=None))  # a round that was not aggregated
    got = read_back(tmp_path / "tensorboard")
    assert set(got) == set(first)
    assert got["accuracy/teacher"] == [(1, pytest.approx(0.61))]  # round 2 had none: no point, not a zero
    assert got["accuracy/clients_mean"] == [(1, pytest.approx(0.42)), (2, pytest.approx(0.43))]
    assert got["accuracy/global_student"] == [(1, pytest.approx(0.53)), (2, pytest.approx(0.54))]
    assert got["bytes/up_per_client"] == [(1, 12345.0), (2, 24690.0)]
    assert got["seconds/round"] == [(1, 3.25), (2, 6.5)]
    assert got["teacher/ok"] == [(1, 1.0), (2, 0.0)]
    assert got["replies/rejected"] == [(1, 1.0), (2, 1.0)]
    assert got["clients/client-0/train_loss"] == [(1, 1.5), (2, 1.5)]
    assert "accuracy/clients_mean_own" not in got and "accuracy/teacher" not in second


def test_round_scalars_take_every_listed_key_and_skip_none():
    s = {key: 0.5 for key in ROUND_SCALARS.values()} | {"round": 1, "rejected": {}, "clients": {}}
    assert round_scalars(s) == {**dict.fromkeys(ROUND_SCALARS, 0.5), "replies/rejected": 0.0}
    assert "f1/teacher" not in round_scalars(s | {"teacher_f1": None})


def test_a_federation_with_tensorboard_on_writes_one_step_a_round(tmp_path):
    nodes = {1: honest(0), 2: honest(1, bias=2), TEACHER: teacher()}
    fed, _ = make(tmp_path, nodes, **{"federation.tensorboard": True})
    history = fed.run()
    got = read_back(tmp_path / "tensorboard")
    assert [step for step, _ in got["accuracy/teacher"]] == [s["round"] for s in history]
    assert [v for _, v in got["accuracy/global_student"]] == pytest.approx([s["student_acc"] for s in history])


def test_tensorboard_is_off_by_default(tmp_path):
    fed, _ = make(tmp_path, {1: honest(0), 2: honest(1), TEACHER: teacher()})
    fed.run()
    assert fed.tensorboard is None and not (tmp_path / "tensorboard").exists()


def test_without_the_tensorboard_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto.event_pb2", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"federation\.tensorboard.*nebula-fd\[tracking\]"):
        TensorBoardLog(tmp_path / "tensorboard")
    assert not (tmp_path / "tensorboard").exists()


PROBE = """
import json, sys
from nebula.server.tracking import TensorBoardLog
TensorBoardLog(sys.argv[1]).write({"round": 1, "teacher_acc": 0.5})
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "transformers"))))
"""


def test_writing_loads_neither_torch_nor_tensorflow(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
