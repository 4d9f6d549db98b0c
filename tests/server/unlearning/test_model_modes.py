"""The model modes (exact-replay, fast-correction) on a tiny real run: MiniLM teacher and student,
checkpoints written by the real TeacherNode (conftest.build_tiny_run).

Determinism first: replaying rounds with nothing removed gives the run's own checkpoints bit for bit.
Then: forgetting a client restores the right checkpoint, replays the later rounds, keeps the
federation's files, and changes the models; fast correction stays within its budget; both go
through the gRPC service and the certificate carries the model hashes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nebula.cli.main import main
from nebula.server.ledger import Ledger
from nebula.server.unlearning import UnlearnContext, get_mode
from nebula.server.unlearning import models as store
from nebula.server.unlearning.arithmetic import state_sha256
from nebula.server.unlearning.certificate import verify_certificate
from nebula.server.unlearning.fast_correction import CorrectionBudget, FastCorrectionMode
from nebula.server.unlearning.replay import replay_rounds
from nebula.server.unlearning.service import ServeConfig, UnlearningServer

from .conftest import TINY_PLAN, TINY_RUN, TINY_TARGET

pytestmark = pytest.mark.e2e  # real models (a few seconds)


def _hashes(folder: Path) -> tuple[str, str]:
    teacher, student = store.load_states(folder)
    return state_sha256(teacher), state_sha256(student)


def _apply(run: Path, mode, client: str = TINY_TARGET, request_id: str = "req-1"):
    ledger = Ledger(run / "ledger.sqlite")
    try:
        return (get_mode(mode) if isinstance(mode, str) else mode).apply(UnlearnContext(ledger, request_id, client))
    finally:
        ledger.close()


@pytest.mark.parametrize("first_round", [1, 2])
def test_replay_with_nothing_removed_reproduces_the_checkpoints_bit_for_bit(tiny_run, tmp_path, first_round):
    ledger = Ledger(tiny_run / "ledger.sqlite")
    run = store.open_run(UnlearnContext(ledger, "no-op", "nobody"))
    done = replay_rounds(ledger, run, first_round=first_round, out=tmp_path / "replay")
    ledger.close()
    assert run.run_id == TINY_RUN and done.rounds == [r for r in TINY_PLAN if r >= first_round]
    assert done.restored_from == ("initial state (seed 0)" if first_round == 1 else "checkpoints/round-001")
    for r in done.rounds:
        assert _hashes(tmp_path / "replay" / f"round-{r:03d}") == _hashes(run.checkpoint(r))


def test_exact_replay_restores_the_last_clean_checkpoint_and_replays_the_rest(tiny_run):
    original = {r: _hashes(tiny_run / "checkpoints" / f"round-{r:03d}") for r in TINY_PLAN}

    outcome = _apply(tiny_run, "exact-replay")

    models = outcome.models
    assert models["restored_from"] == "checkpoints/round-001" and models["rounds_replayed"] == [
        2,
        3,
    ]  # client-1 joined in round 2
    assert models["before"] == "checkpoints/round-003" and models["output"] == "unlearning/req-1"
    assert (models["teacher"]["before_sha256"], models["student"]["before_sha256"]) == original[3]
    assert models["teacher"]["after_sha256"] != models["teacher"]["before_sha256"]
    assert models["student"]["after_sha256"] != models["student"]["before_sha256"]
    out = tiny_run / "unlearning" / "req-1"
    assert _hashes(out) == (models["teacher"]["after_sha256"], models["student"]["after_sha256"])
    assert _hashes(out / "checkpoints" / "round-003") == _hashes(out)
    assert _hashes(out / "checkpoints" / "round-002") != original[2]
    assert {r: _hashes(tiny_run / "checkpoints" / f"round-{r:03d}") for r in TINY_PLAN} == original  # kept as they were
    assert (out / "models" / "global-student" / "adapter_config.json").is_file()
    assert (tiny_run / "unlearning" / "CURRENT").read_text().strip() == "req-1"
    assert json.loads((out / "models.json").read_text()) == models
    assert len(outcome.tombstones) == 2 and len(outcome.revisions) == 2  # the ledger side: reaggregate's

    (tiny_run / "unlearning" / "CURRENT").unlink()  # as if killed between models.json and CURRENT
    again = _apply(tiny_run, "exact-replay")  # a resumed request after its last step: read back, not retrained
    assert again == outcome
    assert (tiny_run / "unlearning" / "CURRENT").read_text().strip() == "req-1"


def test_a_client_of_round_1_is_replayed_from_the_initial_state(tiny_run):
    models = _apply(tiny_run, "exact-replay", client="client-0").models
    # round 1 keeps one contribution, below min_replies: it loses its consensus and is not taught, as in the federation
    assert models["restored_from"] == "initial state (seed 0)" and models["rounds_replayed"] == [2, 3]


def test_fast_correction_changes_both_models_within_its_budget(tiny_run):
    budget = CorrectionBudget(teacher_steps=1, student_steps=1)
    models = _apply(tiny_run, FastCorrectionMode(budget)).models
    assert models["budget"] == {"teacher_steps": 1, "student_steps": 1} and models["optimizer_steps"] == {
        "teacher": 1,
        "student": 1,
    }
    assert models["rounds_corrected"] == [2, 3]
    assert models["targeting"] == "consensus change"  # the inputs the client's removal changed most
    assert (models["teacher"]["before_sha256"], models["student"]["before_sha256"]) == _hashes(
        tiny_run / "checkpoints" / "round-003"
    )
    for name in ("teacher", "student"):
        assert models[name]["after_sha256"] != models[name]["before_sha256"]
    with pytest.raises(ValueError, match="teacher_steps must be >= 1"):
        CorrectionBudget(teacher_steps=0)


def test_a_correction_resumed_after_the_reaggregation_ranks_by_the_teachers_disagreement(tiny_run):
    from nebula.server.unlearning.fast_correction import correct

    _apply(tiny_run, "reaggregate")  # the request died after re-aggregating: the former consensus is gone
    ledger = Ledger(tiny_run / "ledger.sqlite")
    try:
        ctx = UnlearnContext(ledger, "req-1", TINY_TARGET)
        models = correct(ctx, store.open_run(ctx), CorrectionBudget(1, 1), before=None)
    finally:
        ledger.close()
    assert models["targeting"] == "teacher disagreement" and models["optimizer_steps"] == {"teacher": 1, "student": 1}


@pytest.mark.parametrize("mode", ["exact-replay", "fast-correction"])
def test_a_collaborative_runs_certificate_says_the_result_is_approximate(tiny_run, mode):
    models = _apply(tiny_run, mode).models
    assert models["isolation"] == "collaborative" and models["exact"] is False
    assert "collaborative run" in models["exactness"]


def test_a_later_request_starts_from_the_current_models(tiny_run):
    replayed = _apply(tiny_run, "exact-replay", request_id="req-1").models
    corrected = _apply(
        tiny_run, FastCorrectionMode(CorrectionBudget(1, 1)), client="client-2", request_id="req-2"
    ).models
    assert corrected["before"] == "unlearning/req-1"
    assert corrected["teacher"]["before_sha256"] == replayed["teacher"]["after_sha256"]


def test_replay_starts_before_every_round_any_request_revised(tiny_run):
    _apply(tiny_run, "reaggregate", request_id="req-1")  # client-1: rounds 2 and 3 revised, models untouched
    ledger = Ledger(tiny_run / "ledger.sqlite")
    ctx = UnlearnContext(ledger, "req-2", "client-9")  # a later request whose own rows are all in round 3, say
    # replaying from round 3 would keep round 2's consensus as the teacher learnt it, with client-1 inside
    assert store.affected_rounds(ctx, store.open_run(ctx)) == [2, 3]
    ledger.close()


def test_a_client_absent_from_the_latest_run_leaves_the_models(tiny_run):
    ledger = Ledger(tiny_run / "ledger.sqlite")
    ledger.start_run("later-run", ledger.run_config(TINY_RUN))  # a newer run in the folder, without any contribution
    ledger.close()
    models = _apply(tiny_run, "exact-replay").models
    assert models["changed"] is False and models["run_id"] == "later-run" and "took no part" in models["note"]
    assert models["teacher"]["before_sha256"] == models["teacher"]["after_sha256"]
    assert not (tiny_run / "unlearning").exists()


@pytest.mark.parametrize("mode", ["exact-replay", "fast-correction"])
def test_the_service_carries_out_a_model_mode_and_certifies_the_hashes(tiny_run, material, tmp_path, capsys, mode):
    server = UnlearningServer(
        ServeConfig(
            ledger=tiny_run / "ledger.sqlite",
            operators=material.operators,
            signing_key=material.signing_key,
            tls_cert=material.tls_cert,
            tls_key=material.tls_key,
            port=0,
        )
    )
    server.start()
    try:
        cert_path = tmp_path / "cert.json"
        ops = [
            "--server",
            f"127.0.0.1:{server.port}",
            "--ca",
            str(material.ca_cert),
            "--key",
            str(material.operator_key),
        ]
        rc = main(
            ["unlearn", TINY_TARGET, "--reason", "art. 17", "--mode", mode, "--wait", "--out", str(cert_path), *ops]
        )
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert rc == 0, out
    request_id = re.search(r"request ([0-9a-f]{32}) queued", out).group(1)
    assert f"models: teacher and global student changed, written to unlearning/{request_id}" in out
    cert = verify_certificate(cert_path, material.signing_pub)
    assert cert["mode"] == mode and cert["models"]["run_id"] == TINY_RUN
    assert cert["models"]["teacher"]["after_sha256"] == _hashes(tiny_run / "unlearning" / request_id)[0]
    assert cert["ledger_rows_removed"]["count"] == 2 and len(cert["consensus"]) == 2
