"""Prune, then recover by distillation (learning/prune_distill.py) on tiny random BERTs: scores over many batches,
the KL to the unpruned model, recovery that brings the pruned model back towards it, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nebula.learning.prune_distill import importance_over, kl_to_teacher, prune_and_recover
from nebula.learning.prune_spec import PruneSpec
from nebula.learning.pruning import PruningPlan, importance, prune
from nebula.learning.training import Encoded, collate, predict_logits


def _bert(seed: int = 0, *, layers: int = 2):
    """hidden 32, 4 heads, FFN 64; weights at std 0.2 (not BERT's 0.02) so that units matter and pruning shows."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def _texts(n: int = 32, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    return Encoded([[1, *rng.integers(3, 50, size=int(rng.integers(2, 9))).tolist(), 2] for _ in range(n)])


def test_importance_over_one_batch_is_importance_of_that_batch():
    model, data = _bert(), _texts(8)
    ids, mask = collate(data.input_ids, 0)
    whole = importance(model, ids, mask)
    over = importance_over(model, data, batch_size=3)  # three batches, weighted by their real tokens
    torch.testing.assert_close(over.heads, whole.heads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(over.neurons, whole.neurons, rtol=1e-4, atol=1e-6)


def test_kl_to_teacher_is_zero_for_the_same_logits_and_positive_otherwise():
    logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assert kl_to_teacher(logits, logits) == pytest.approx(0.0, abs=1e-7)
    assert kl_to_teacher(logits, logits + 10.0) == pytest.approx(0.0, abs=1e-6)  # a shift changes no probability
    assert kl_to_teacher(logits[:, ::-1].copy(), logits) > 0.01


def test_without_recovery_the_model_is_the_plan_applied():
    model, reference, data = _bert(), _bert(), _texts()
    result = prune_and_recover(model, data, PruneSpec.parse("heads:0.5,ffn:0.25,layers:1"), recover_epochs=0, lr=1e-3)
    plan = result.plan
    assert [len(h) for h in plan.heads] == [2, 2] and [len(u) for u in plan.neurons] == [16, 16]
    assert plan.layers == (0,) and result.recovery_steps == 0 and result.kl_after == result.kl_before > 0
    prune(reference, PruningPlan.from_json(plan.to_json()))
    np.testing.assert_allclose(predict_logits(model, data), predict_logits(reference, data), atol=1e-6)
    assert result.parameters_after < result.parameters_before
    kept = result.to_dict()["kept"]
    assert kept == {
        "layers": [0], "of_layers": 2, "heads_per_layer": [2], "of_heads": 4, "neurons_per_layer": [16],
        "of_neurons": 64,
    }  # fmt: skip


def test_recovery_brings_the_pruned_model_back_towards_the_unpruned_one():
    model, data = _bert(), _texts()
    teacher = predict_logits(model, data)
    result = prune_and_recover(model, data, PruneSpec.parse("heads:0.5,ffn:0.5"), recover_epochs=20, lr=3e-3)
    assert result.recovery_steps == 40  # 32 texts in batches of 16, 20 epochs
    assert result.kl_before > 0.01  # pruning moved the model
    assert result.kl_after < 0.25 * result.kl_before  # measured: 0.038 -> 0.0034
    assert result.kl_after == pytest.approx(kl_to_teacher(predict_logits(model, data), teacher), rel=1e-5)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_refused():
    data = _texts(4)
    with pytest.raises(ValueError, match="layers:3 keeps more layers than the model's 2"):
        prune_and_recover(_bert(), data, PruneSpec(layers=3), recover_epochs=0, lr=1e-3)
    with pytest.raises(ValueError, match="at least one text"):
        prune_and_recover(_bert(), Encoded([]), PruneSpec(heads=0.5), recover_epochs=0, lr=1e-3)
    with pytest.raises(ValueError, match="not a BERT-family encoder"):
        prune_and_recover(torch.nn.Linear(2, 2), data, PruneSpec(heads=0.5), recover_epochs=0, lr=1e-3)
