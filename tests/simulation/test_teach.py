"""Teaching a teacher of another base model offline from a finished run's ledger (simulation/teach.py)."""

import json

import numpy as np
import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from nebula.learning.assets import resolve_model
from nebula.server.exceptions import LedgerError
from nebula.server.ledger import Ledger
from nebula.simulation.teach import gathered_consensus, teach_from_run

pytestmark = pytest.mark.e2e


def test_gathered_consensus_holds_every_rounds_targets(finished_run):
    config, out, _ = finished_run
    ledger = Ledger(out / "ledger.sqlite")
    run_id = ledger.runs()[-1]
    ids, probs = gathered_consensus(ledger, run_id)
    expected = np.unique(np.concatenate([ledger.consensus(run_id, r)[0] for r in (1, 2)]))
    ledger.close()
    assert sorted(ids.tolist()) == expected.tolist() and len(set(ids.tolist())) == len(ids)
    assert probs.shape == (len(ids), 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_teach_trains_a_loadable_teacher_of_another_base(finished_run, tmp_path):
    config, out, _ = finished_run
    steps = []
    report = teach_from_run(
        out,
        base="minilm-l3",
        out=tmp_path / "teacher",
        epochs=1,
        on_step=lambda step, total, loss: steps.append((step, total, loss)),
    )
    assert report.base == "minilm-l3" and report.targets == 2 * config.federation.public_per_round
    assert report.steps == len(steps) == steps[-1][1] and all(np.isfinite(loss) for _, _, loss in steps)
    assert 0.0 <= report.test_accuracy <= 1.0 and report.test_size == config.data.test_size
    assert 0.0 <= report.target_agreement <= 1.0
    saved = json.loads((tmp_path / "teacher" / "teach-report.json").read_text())
    assert saved["test_accuracy"] == report.test_accuracy
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model("minilm-l3"), num_labels=3)
    PeftModel.from_pretrained(base, tmp_path / "teacher")


def test_teach_names_a_folder_without_a_ledger(tmp_path):
    with pytest.raises(LedgerError, match="no ledger.sqlite"):
        teach_from_run(tmp_path, base="minilm-l3", out=tmp_path / "t")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        teach_from_run(tmp_path, base="minilm-l3", out=tmp_path / "t", epochs=0)
