"""End to end on Flower's simulation engine: 3 clients x 2 rounds, client 2 answers from an ONNX export.

Client 2 is an inference-only participant (``federation.inference_clients``): it trains
nothing and answers from a real MiniLM-L3 export. Its replies are accepted every round and
recorded in the ledger with weight 0 (it holds no private data), and the run completes.
"""

import json

import numpy as np
import pytest

from nebula.client.runtime.predictor import EdgePredictor
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import preset_config
from nebula.common.wire import decode_logits
from nebula.server.ledger import Ledger
from nebula.simulation.engine import simulate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tweets_export):
    out = tmp_path_factory.mktemp("run")
    config = preset_config(
        "smoke", {"federation.output_dir": str(out), "federation.inference_clients": f"2:{tweets_export}"}
    )
    history = simulate(config)
    return config, out, history


def test_every_round_accepts_the_inference_client(finished_run):
    config, out, history = finished_run
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert h["accepted"] == 3 and h["rejected"] == {}
        assert h["teacher_ok"]
    last = history[-1]["clients"]["client-2"]
    assert 0.0 <= last["acc_global"] <= 1.0 and last["seconds"] > 0
    assert "train_loss" not in last  # it never trains


def test_ledger_records_its_export_logits_with_weight_zero(finished_run, tweets_export):
    config, out, history = finished_run
    ledger = Ledger(out / "ledger.sqlite")
    run_id = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["run_id"]
    rows = ledger.contributions(run_id)
    assert sorted((r, c.client_id) for r, c in rows) == [(r, f"client-{i}") for r in (1, 2) for i in range(3)]
    weights = {c.client_id: c.weight for _, c in rows}
    assert weights["client-2"] == 0.0 and weights["client-0"] > 0 and weights["client-1"] > 0
    predictor = EdgePredictor(tweets_export)
    data = build_federation_data(config.data)
    for _, c in rows:
        if c.client_id == "client-2":
            decoded = decode_logits(c.payload)
            expected = predictor.predict_logits(data.public_texts(decoded.ids))
            np.testing.assert_allclose(decoded.logits, expected, atol=2e-3, rtol=2e-3)  # float16 on the wire
    for r in (1, 2):
        assert ledger.consensus(run_id, r)[1].shape == (config.federation.public_per_round, 3)
    ledger.close()


def test_finish_saves_no_adapter_for_it(finished_run):
    config, out, history = finished_run
    assert (out / "clients" / "client-0" / "adapter" / "adapter_config.json").exists()
    assert not (out / "clients" / "client-2").exists()
