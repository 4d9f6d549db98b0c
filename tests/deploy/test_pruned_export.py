"""A structurally pruned tiny BERT (learning/pruning.py) exports to ONNX (deploy/export/onnx_export.py) and the
graph gives the PyTorch logits: per-layer head counts and FFN widths survive tracing. Then ``nebula export --prune``
(export.py, structured.py) on the real MiniLM-L3 adapter: a bad spec refused before anything loads, a package that
is the merged model pruned by the plan it records, recovery measured by the record, the report carrying it."""

import copy
import json
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nebula.client.runtime.errors import ExportError
from nebula.deploy.export.export import ExportConfig, export_adapter
from nebula.deploy.export.onnx_export import export_fp32
from nebula.learning.pruning import importance, plan_pruning, prune


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32)
    return BertForSequenceClassification(BertConfig(**sizes, num_labels=3)).eval()


def test_pruned_bert_exports_to_onnx_with_the_same_logits(tmp_path):
    model = _bert()
    ids = torch.tensor([[1, 5, 7, 9, 2, 3], [1, 4, 8, 2, 0, 0]])  # (2, 6), second row padded
    mask = (ids != 0).long()
    scores = importance(model, ids, mask)
    n_before = sum(p.numel() for p in model.parameters())
    prune(model, plan_pruning(scores, keep_heads=2, keep_neurons=12, keep_layers=[0, 2]))
    assert sum(p.numel() for p in model.parameters()) < n_before
    path = export_fp32(model, tmp_path / "pruned.onnx", pad_id=0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.tensor([[1, 6, 2, 0], [1, 9, 9, 2]])  # another batch and sequence size than traced
    feeds = {"input_ids": batch.numpy(), "attention_mask": (batch != 0).long().numpy()}
    (logits,) = session.run(["logits"], feeds)
    with torch.no_grad():
        expected = model(input_ids=batch, attention_mask=(batch != 0).long()).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


# --- `nebula export --prune` on the real MiniLM-L3 adapter of tests/conftest.py ----------------------------------

SPEC = "heads:0.5,ffn:0.5,layers:2"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"prune": "heads:2"}, r"export.prune: bad entry 'heads:2': heads is the fraction kept per layer"),
        ({"prune": "heads:0.5,neurons:0.5"}, r"export.prune: bad entry 'neurons:0.5': unknown name 'neurons'"),
        (
            {"prune": SPEC, "dataset": None},
            "export.prune needs unlabelled texts .* export.dataset .* export.prune_vocab_from",
        ),
        ({"prune_recover_epochs": -1}, "export.prune_recover_epochs must be >= 0, got -1"),
        ({"prune_texts": 0}, "export.prune_texts must be > 0, got 0"),
        ({"prune_lr": 0.0}, "export.prune_lr must be > 0, got 0.0"),
    ],
)
def test_a_bad_prune_is_refused_before_anything_loads(tmp_path, fields, match):
    config = ExportConfig(adapter_dir=str(tmp_path / "no-adapter"), out=str(tmp_path / "out"), dataset="tweets")
    with pytest.raises(ExportError, match=match):  # not "adapter folder not found": nothing was loaded
        export_adapter(replace(config, **{"prune": SPEC, **fields}))
    assert not (tmp_path / "out").exists()


def test_a_spec_the_model_does_not_fit_names_the_adapter(adapter_dir, tmp_path):
    config = ExportConfig(adapter_dir=str(adapter_dir), out=str(tmp_path / "out"), dataset="tweets", prune="layers:4")
    with pytest.raises(ExportError, match=rf"{adapter_dir}: --prune layers:4: .* more layers than the model's 3"):
        export_adapter(config)
    assert not (tmp_path / "out").exists()


def _pruned_export(tmp_path_factory, adapter_dir, name: str, **fields):
    out = tmp_path_factory.mktemp("pruned-exports") / name
    config = ExportConfig(
        adapter_dir=str(adapter_dir), out=str(out), target="fp32", dataset="tweets", prune=SPEC, prune_texts=24,
        **fields,
    )  # fmt: skip
    export_adapter(config)
    return out, config


@pytest.fixture(scope="module")
def unrecovered(tmp_path_factory, adapter_dir):
    return _pruned_export(tmp_path_factory, adapter_dir, "unrecovered", prune_recover_epochs=0)


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, adapter_dir):
    return _pruned_export(tmp_path_factory, adapter_dir, "recovered", prune_recover_epochs=1)


@pytest.fixture(scope="module")
def merged(adapter_dir):
    from nebula.deploy.export.merge import load_adapter_model

    model, tokenizer, _, _ = load_adapter_model(adapter_dir)
    return model, tokenizer


def test_the_package_is_the_merged_model_pruned_by_the_recorded_plan(unrecovered, merged, tweets):
    from nebula.client.runtime.predictor import EdgePredictor
    from nebula.deploy.export.structured import read_record
    from nebula.learning.pruning import PruningPlan
    from nebula.learning.training import encode, predict_logits

    out, _ = unrecovered
    record = read_record(out)
    assert record["spec"] == SPEC and record["criterion"] == "magnitude" and record["texts"] == 24
    assert record["kept"] == {
        "layers": [0, 1], "of_layers": 3, "heads_per_layer": [6, 6], "of_heads": 12, "neurons_per_layer": [768, 768],
        "of_neurons": 1536,
    }  # fmt: skip
    assert record["recovery_steps"] == 0 and record["kl_after"] == record["kl_before"] > 0
    model, tokenizer = merged
    pruned = prune(copy.deepcopy(model), PruningPlan.from_json(json.dumps(record["plan"])))
    assert sum(p.numel() for p in pruned.parameters()) == record["parameters_after"] < record["parameters_before"]
    expected = predict_logits(pruned, encode(tokenizer, tweets["test"], max_length=64))
    logits = EdgePredictor(out).predict_logits(tweets["test"])
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_recovery_is_in_the_package_and_its_record_measures_it(recovered, merged):
    from nebula.client.runtime.predictor import EdgePredictor
    from nebula.deploy.export.export import pruning_texts
    from nebula.deploy.export.structured import read_record
    from nebula.learning.prune_distill import kl_to_teacher
    from nebula.learning.training import encode, predict_logits

    out, config = recovered
    record = read_record(out)
    assert record["recovery_epochs"] == 1 and record["recovery_steps"] == 2  # 24 texts, batches of 16
    assert record["texts_from"] == "the public pool of tweets (seed 0)"
    texts, _ = pruning_texts(config)
    model, tokenizer = merged
    teacher = predict_logits(model, encode(tokenizer, texts, max_length=64))
    exported = EdgePredictor(out).predict_logits(texts)  # the recovered model, as onnxruntime runs it
    assert kl_to_teacher(exported, teacher) == pytest.approx(record["kl_after"], abs=1e-4)
    assert record["kl_after"] != record["kl_before"]


def test_the_report_carries_the_pruning(recovered):
    from nebula.deploy.export.report import build_report, format_markdown

    out, _ = recovered
    report = build_report(out, dataset="tweets", test_size=16, repeats=2, threads=1)
    assert report["package"]["pruning"]["spec"] == SPEC
    assert f"The export is pruned: structured pruning {SPEC} (magnitude importance on 24 texts" in format_markdown(
        report
    )
