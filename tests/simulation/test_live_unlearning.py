"""Unlearning between the rounds of a live run (federation.unlearn_key): the run carries the request out.

Round 1 runs; an operator's request to forget client-1 (fast correction: re-aggregation, then a
corrective distillation of teacher and student) is stored in the ledger's
request store; the run continues (resumed, as after a restart) with the server's signing key. Before
round 2 the federation carries the request out, the teacher node loads the corrected states and the
cleaned consensus and answers round 2's targets again, client-1 is not selected in round 2, the
certificate verifies, and the live lease is cleared when the run ends.
"""

import json

import pytest

from nebula.common.presets import preset_config
from nebula.deploy.certs import write_unlearning_material
from nebula.server.ledger import Ledger
from nebula.server.unlearning.certificate import verify_certificate
from nebula.server.unlearning.requests import RequestStore
from nebula.simulation.engine import simulate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    out = tmp_path_factory.mktemp("live")
    keys = write_unlearning_material(tmp_path_factory.mktemp("keys"))
    base = {"federation.output_dir": str(out), "federation.unlearn_key": str(keys.signing_key)}
    simulate(preset_config("smoke", {**base, "federation.rounds": 1}))
    ledger = Ledger(out / "ledger.sqlite")
    round1_targets = ledger.finished_rounds(ledger.runs()[-1])[1][0]  # computed by the teacher client-1 shaped
    ledger.close()
    store = RequestStore(out / "ledger.sqlite")
    request, created = store.submit(
        client_id="client-1",
        reason="GDPR art. 17",
        mode="fast-correction",
        idempotency_key="ticket-1",
        operator_key="op",
    )
    assert created and request.status == "queued"
    history = simulate(preset_config("smoke", {**base, "federation.rounds": 2, "federation.resume": True}))
    done = store.get(request.request_id)
    store.close()
    return dict(out=out, keys=keys, request=done, history=history, round1_targets=round1_targets)


def test_the_request_was_carried_out_before_round_2(live):
    request = live["request"]
    assert request.status == "done", request.error
    cert = verify_certificate(json.loads(request.certificate_json), live["keys"].signing_pub)
    assert cert["client_id"] == "client-1" and cert["mode"] == "fast-correction"
    assert (live["out"] / "certificates" / f"{request.request_id}.json").is_file()
    assert (live["out"] / "unlearning" / "CURRENT").read_text().strip() == request.request_id


def test_round_2_started_from_the_corrected_models(live):
    import torch

    out, request_id = live["out"], live["request"].request_id
    corrected = torch.load(out / "unlearning" / request_id / "teacher.pt", weights_only=True)
    before = torch.load(out / "checkpoints" / "round-001" / "teacher.pt", weights_only=True)
    after = torch.load(out / "checkpoints" / "round-002" / "teacher.pt", weights_only=True)
    # round 2 trained on from the corrected teacher: closer to it than to round 1's checkpoint
    dist = lambda a, b: sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    assert dist(corrected, before) > 0 and dist(after, corrected) < dist(after, before)


def test_the_forgotten_client_is_not_selected_in_round_2(live):
    (round2,) = live["history"]
    assert round2["round"] == 2 and "client-1" not in round2["clients"] and "client-1" not in round2["rejected"]
    ledger = Ledger(live["out"] / "ledger.sqlite")
    try:
        run_id = ledger.runs()[-1]
        assert not [c for r, c in ledger.contributions(run_id) if c.client_id == "client-1"]  # round 1's were removed
        assert ledger.is_forgotten("client-1") and ledger.revised_rounds(run_id) == [1]
        assert ledger.live_run() is None  # the lease ended with the run
    finally:
        ledger.close()


def test_round_2_was_sent_targets_answered_by_the_corrected_teacher(live):
    from nebula.common.wire import decode_logits

    ledger = Ledger(live["out"] / "ledger.sqlite")
    try:
        targets, teacher_ok = ledger.finished_rounds(ledger.runs()[-1])[1]
    finally:
        ledger.close()
    before, after = decode_logits(live["round1_targets"], num_classes=3), decode_logits(targets, num_classes=3)
    assert teacher_ok and after.ids.tolist() == before.ids.tolist()  # the same inputs, answered again
    assert not (after.logits == before.logits).all()  # by the corrected teacher, not the one client-1 shaped
