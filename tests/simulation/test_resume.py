"""A restarted server resumes the last run from the ledger and the teacher's checkpoint (server/resume.py).

Round 1 runs; then the server is "killed" after round 1's contributions were recorded but before
its teaching was marked finished (the ledger's round_targets row is removed, as a SIGKILL at that
point leaves it). A new run with ``federation.resume`` must teach round 1 again from the stored
consensus, restore the teacher, run round 2, and leave round 1's rows as they were.
"""

import sqlite3

import pytest

from nebula.common.presets import preset_config
from nebula.server.ledger import Ledger
from nebula.simulation.engine import simulate

pytestmark = pytest.mark.e2e


def _rows(path, run_id):
    ledger = Ledger(path)
    try:
        return [(r, c.client_id, c.payload, c.weight) for r, c in ledger.contributions(run_id)], ledger.finished_rounds(
            run_id
        )
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    base = {"federation.output_dir": str(out)}
    first = simulate(preset_config("smoke", {**base, "federation.rounds": 1}))
    run_id = Ledger(out / "ledger.sqlite").runs()[-1]
    before, finished = _rows(out / "ledger.sqlite", run_id)
    with sqlite3.connect(out / "ledger.sqlite") as db:  # the kill: round 1 recorded, its teaching not finished
        db.execute("DELETE FROM round_targets WHERE run_id = ? AND round = 1", (run_id,))
    history = simulate(preset_config("smoke", {**base, "federation.rounds": 2, "federation.resume": True}))
    after, finished_after = _rows(out / "ledger.sqlite", run_id)
    killed = dict(first=first, before=before, finished=finished)  # the first run, as the kill left it
    return dict(out=out, run_id=run_id, **killed, history=history, after=after, finished_after=finished_after)


def test_first_run_marked_round_1_finished(resumed):
    assert [h["round"] for h in resumed["first"]] == [1]
    assert set(resumed["finished"]) == {1} and resumed["finished"][1][1] is True


def test_resume_runs_only_the_missing_round_under_the_same_run(resumed):
    assert [h["round"] for h in resumed["history"]] == [2]
    assert resumed["history"][0]["teacher_ok"] and resumed["history"][0]["accepted"] == 3
    assert Ledger(resumed["out"] / "ledger.sqlite").runs() == [resumed["run_id"]]
    assert (
        sorted(resumed["finished_after"]) == [1, 2] and resumed["finished_after"][1][0] is not None
    )  # round 1 taught again


def test_round_1_rows_are_unchanged_and_round_2_is_added(resumed):
    round1 = [row for row in resumed["after"] if row[0] == 1]
    assert round1 == resumed["before"]
    assert sorted(cid for r, cid, _, _ in resumed["after"] if r == 2) == ["client-0", "client-1", "client-2"]


def test_checkpoints_and_models_of_the_resumed_run(resumed):
    out = resumed["out"]
    assert (out / "checkpoints" / "round-001" / "teacher.pt").is_file()
    assert (out / "checkpoints" / "round-002" / "student.pt").is_file()
    assert (out / "models" / "global-student" / "adapter_config.json").is_file()
