"""End to end on Flower's simulation engine with the real MiniLM models: 3 clients x 2 rounds.

Client 1 runs a different base model (MiniLM-L6) than the others (MiniLM-L3); client 2
sends malformed logits (NaN) every round: its replies are left out and logged, and the
run completes with the other two.
"""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from nebula.learning.assets import resolve_model
from nebula.server.ledger import Ledger

pytestmark = pytest.mark.e2e


def test_all_rounds_complete_without_the_malformed_client(finished_run, caplog):
    config, out, history = finished_run
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert h["accepted"] == 2
        assert set(h["rejected"]) == {"client-2"}
        assert "finite" in h["rejected"]["client-2"].lower() or "nan" in h["rejected"]["client-2"].lower()
        assert h["teacher_ok"]
        assert 0.0 <= h["teacher_acc"] <= 1.0 and 0.0 <= h["student_acc"] <= 1.0
    assert set(history[-1]["clients"]) == {"client-0", "client-1"}
    assert all("acc_global" in m for m in history[-1]["clients"].values())


def test_ledger_and_metrics_hold_every_accepted_contribution(finished_run):
    config, out, history = finished_run
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    run_id = lines[0]["run_id"]
    ledger = Ledger(out / "ledger.sqlite")
    rows = ledger.contributions(run_id)
    assert sorted((r, c.client_id) for r, c in rows) == [
        (1, "client-0"),
        (1, "client-1"),
        (2, "client-0"),
        (2, "client-1"),
    ]
    assert all(len(c.public_ids) == config.federation.public_per_round for _, c in rows)
    assert [(r, cid) for r, cid, _ in ledger.rejections(run_id)] == [(1, "client-2"), (2, "client-2")]
    ids, probs = ledger.consensus(run_id, 2)
    assert probs.shape == (config.federation.public_per_round, 3)
    ledger.close()


def test_adapters_load_with_peft(finished_run):
    config, out, history = finished_run
    for client, base in (("client-0", "minilm-l3"), ("client-1", "minilm-l6")):
        folder = out / "clients" / client / "adapter"
        base_model = AutoModelForSequenceClassification.from_pretrained(resolve_model(base), num_labels=3)
        model = PeftModel.from_pretrained(base_model, folder)
        assert model.peft_config["default"].r == config.model.lora_r
    for name in ("teacher", "global-student"):
        assert (out / "models" / name / "adapter_config.json").exists()
    assert (out / "checkpoints" / "round-002" / "student.pt").exists()
