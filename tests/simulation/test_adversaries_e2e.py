"""End to end: 1 of 3 smoke clients answers inverted logits; reputation leaves it out and the run completes."""

import json

import pytest

from nebula.common.presets import preset_config
from nebula.server.ledger import Ledger
from nebula.server.reputation import Reputation
from nebula.simulation.engine import simulate

pytestmark = pytest.mark.e2e


def test_an_inverted_client_is_down_weighted_and_the_run_completes(tmp_path):
    config = preset_config(
        "smoke",
        {"federation.output_dir": str(tmp_path), "federation.adversaries": "2:inverted", "federation.reputation": True},
    )
    history = simulate(config)
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert h["accepted"] == 3 and not h["rejected"] and h["teacher_ok"]  # well-formed: validation accepts it
        trust = {client: row["trust"] for client, row in h["reputation"].items()}
        assert trust["client-0"] == trust["client-1"] == 1.0
        assert trust["client-2"] < 0.5, h["reputation"]
        assert h["reputation"]["client-2"]["agreement"] < h["reputation"]["client-0"]["agreement"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["reputation"] for line in lines] == [h["reputation"] for h in history]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    run_id = lines[0]["run_id"]
    assert {c.client_id for _, c in ledger.contributions(run_id, 2)} == {"client-0", "client-1", "client-2"}
    replayed = Reputation(ledger, temperature=config.train.temperature).trust_at(run_id, 2)  # what a resume computes
    assert replayed == {client: row["trust"] for client, row in history[-1]["reputation"].items()}
    ledger.close()
