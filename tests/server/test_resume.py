"""Where a restarted server resumes (server/resume.py), on hand-made ledgers."""

import numpy as np
import pytest

from nebula.common.config import NebulaConfig
from nebula.server.exceptions import ResumeError
from nebula.server.ledger import Contribution, Ledger
from nebula.server.resume import resume_point


def _round(ledger, run_id, r, *, aggregated=True, targets: bytes | None = b"t", teacher_ok=True, finish=True):
    ids = np.arange(4, dtype=np.int64) + 4 * (r - 1)
    consensus = np.full((4, 3), 1 / 3) if aggregated else None
    ledger.record_round(
        run_id=run_id,
        round_index=r,
        accepted=[Contribution("client-0", 1, ids, b"p", 1.0)],
        rejected=[],
        rule="mean",
        consensus_ids=ids if aggregated else None,
        consensus=consensus,
    )
    if finish:
        ledger.record_targets(run_id, r, targets if aggregated else None, teacher_ok=teacher_ok and aggregated)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    yield led
    led.close()


@pytest.fixture
def flat():
    return NebulaConfig().to_flat()


def test_resumes_after_the_last_finished_round_with_its_targets(ledger, flat):
    ledger.start_run("run-a", flat)
    _round(ledger, "run-a", 1, targets=b"targets-1")
    _round(ledger, "run-a", 2, targets=b"targets-2")
    point = resume_point(ledger, {**flat, "federation.rounds": 5, "federation.resume": True})
    assert (point.run_id, point.next_round, point.targets, point.unfinished) == ("run-a", 3, b"targets-2", None)
    assert point.restore_round == 2 and sorted(point.gathered_ids.tolist()) == list(range(8))
    assert point.gathered_probs.shape == (8, 3)


def test_a_round_recorded_but_not_taught_is_finished_first(ledger, flat):
    ledger.start_run("run-a", flat)
    _round(ledger, "run-a", 1)
    _round(ledger, "run-a", 2, finish=False)  # killed while the teacher worked on round 2
    point = resume_point(ledger, flat)
    assert (point.next_round, point.unfinished, point.restore_round) == (3, 2, 1)
    assert sorted(point.gathered_ids.tolist()) == list(range(4))  # round 2's consensus is taught again, not restored


def test_the_teacher_restores_its_last_taught_round(ledger, flat):
    ledger.start_run("run-a", flat)
    _round(ledger, "run-a", 1)
    _round(ledger, "run-a", 2, teacher_ok=False)  # teacher down: no checkpoint of round 2
    _round(ledger, "run-a", 3, aggregated=False)
    point = resume_point(ledger, flat)
    assert (point.next_round, point.restore_round, point.targets) == (4, 1, None)


def test_nothing_finished_restores_the_initial_state(ledger, flat):
    ledger.start_run("run-a", flat)
    point = resume_point(ledger, flat)
    assert (point.next_round, point.restore_round, point.targets, point.gathered_ids) == (1, 0, None, None)


def test_a_moved_run_folder_resumes_with_more_rounds(ledger, flat):
    ledger.start_run("run-a", flat)
    _round(ledger, "run-a", 1)
    moved = {**flat, "federation.output_dir": "/elsewhere/run", "federation.rounds": 9, "federation.resume": True}
    assert resume_point(ledger, moved).next_round == 2


def test_a_run_from_before_a_setting_existed_resumes_with_its_default(ledger, flat):
    older = {k: v for k, v in flat.items() if k not in ("federation.isolation", "data.canary")}
    ledger.start_run("run-a", older)  # started by a version without these settings
    _round(ledger, "run-a", 1)
    assert resume_point(ledger, {**flat, "federation.resume": True}).next_round == 2
    with pytest.raises(ResumeError, match=r"federation.isolation: None -> 'isolated'"):
        resume_point(ledger, {**flat, "federation.isolation": "isolated"})


def test_refusals_name_what_is_wrong(ledger, flat):
    with pytest.raises(ResumeError, match="holds no run to resume"):
        resume_point(ledger, flat)
    ledger.start_run("run-a", flat)
    with pytest.raises(ResumeError, match=r"another configuration \(data.seed: 0 -> 7\)"):
        resume_point(ledger, {**flat, "data.seed": 7})
    _round(ledger, "run-a", 1)
    _round(ledger, "run-a", 3)
    with pytest.raises(ResumeError, match=r"finished rounds \[1, 3\] have gaps"):
        resume_point(ledger, flat)
