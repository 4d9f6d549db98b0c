"""Structured pruning (learning/pruning.py) on tiny random BERTs: importance scores, plans, the pruned model
(runs, fewer parameters, same outputs where nothing was cut), saving and loading."""

from __future__ import annotations

import pytest
import torch

from nebula.learning.pruning import (
    Importance,
    PruningPlan,
    importance,
    load_pruned,
    plan_pruning,
    prune,
    save_pruned,
)

B, L = 4, 6
MASK = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 6])


def _bert(seed: int = 0, *, layers: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def _ids():
    return torch.randint(1, 50, (B, L), generator=torch.Generator().manual_seed(3)) * MASK


def _logits(model):
    with torch.no_grad():
        return model(input_ids=_ids(), attention_mask=MASK).logits


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 1, 2, 0])])
def test_importance_shapes_and_signs(labels):
    model = _bert()
    scores = importance(model, _ids(), MASK, labels=labels)
    assert scores.heads.shape == (2, 4) and scores.neurons.shape == (2, 64)
    assert (scores.heads >= 0).all() and (scores.neurons >= 0).all() and scores.heads.sum() > 0
    assert all(p.grad is None for p in model.parameters())  # gradients of the taylor pass are cleared
    assert not model.training


def test_a_silenced_head_and_neuron_score_zero():
    model = _bert()
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 8:16] = 0  # head 1 of layer 1 no longer reaches the output
        layer.output.dense.weight[:, 5] = 0  # neuron 5 of layer 1 neither
    for labels in (None, torch.tensor([0, 1, 2, 0])):
        scores = importance(model, _ids(), MASK, labels=labels)
        assert scores.heads[1, 1] == 0 and scores.heads[1].max() > 0
        assert scores.neurons[1, 5] == 0 and scores.neurons[1].max() > 0


def test_plan_keeps_the_best_units():
    heads = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.7, 0.2, 0.8, 0.1]])
    neurons = torch.arange(16.0).reshape(2, 8)
    plan = plan_pruning(Importance(heads, neurons), keep_heads=2, keep_neurons=3, keep_layers=[1])
    assert plan.heads == ((1, 2), (0, 2))
    assert plan.neurons == ((5, 6, 7), (5, 6, 7))
    assert plan.layers == (1,)
    assert PruningPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="keep 1..4 heads"):
        plan_pruning(Importance(heads, neurons), keep_heads=5, keep_neurons=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": ()}, "at least one"),
        ({"layers": (1, 0)}, "increasing"),
        ({"layers": (0, 2)}, r"in \[0, 2\)"),
        ({"heads": ((0,), ())}, "layer 1 keeps no head"),
    ],
)
def test_plan_refuses(kwargs, match):
    base = {"original_layers": 2, "heads": ((0,), (1,)), "neurons": ((0,), (1,)), "layers": (0, 1)}
    with pytest.raises(ValueError, match=match):
        PruningPlan(**(base | kwargs))


def test_keeping_everything_changes_nothing():
    model = _bert()
    before = _logits(model)
    plan = PruningPlan(2, (tuple(range(4)),) * 2, (tuple(range(64)),) * 2, (0, 1))
    torch.testing.assert_close(_logits(prune(model, plan)), before)


def test_pruned_model_runs_is_smaller_and_matches_zeroed_units():
    """Pruning heads and neurons equals zeroing their output weights in the unpruned model."""
    model, reference = _bert(), _bert()
    plan = PruningPlan(2, ((0, 2), (1, 2, 3)), (tuple(range(0, 64, 2)), tuple(range(40))), (0, 1))
    with torch.no_grad():
        for layer, heads, neurons in zip(reference.bert.encoder.layer, plan.heads, plan.neurons):
            for h in set(range(4)) - set(heads):
                layer.attention.output.dense.weight[:, h * 8 : (h + 1) * 8] = 0
            dropped = sorted(set(range(64)) - set(neurons))
            layer.output.dense.weight[:, dropped] = 0
    n_before = _params(model)
    prune(model, plan)
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=1e-5, atol=1e-6)
    assert _params(model) < n_before
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16  # 2 heads of width 8
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 40


def test_dropping_layers():
    model = _bert(layers=3)
    n_before = _params(model)
    scores = importance(model, _ids(), MASK)
    prune(model, plan_pruning(scores, keep_heads=2, keep_neurons=32, keep_layers=[0, 2]))
    assert len(model.bert.encoder.layer) == 2 and model.config.num_hidden_layers == 2
    out = model(input_ids=_ids(), attention_mask=MASK, output_hidden_states=True)
    assert out.logits.shape == (B, 3) and len(out.hidden_states) == 3
    assert _params(model) < 0.75 * n_before
    with pytest.raises(ValueError, match="the plan is for 3 layers, the model has 2"):
        prune(model, plan_pruning(scores, keep_heads=2, keep_neurons=32))


def test_save_and_load_round_trip(tmp_path):
    model = _bert(layers=3)
    scores = importance(model, _ids(), MASK, labels=torch.tensor([0, 1, 2, 0]))
    plan = plan_pruning(scores, keep_heads=3, keep_neurons=20, keep_layers=[1, 2])
    prune(model, plan)
    save_pruned(model, plan, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert _params(loaded) == _params(model)
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_non_bert_models_are_refused():
    with pytest.raises(ValueError, match="not a BERT-family encoder"):
        importance(torch.nn.Linear(2, 2), _ids(), MASK)
