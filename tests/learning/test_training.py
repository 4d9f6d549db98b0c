"""The shared training loop on a tiny randomly initialised BERT (no files, fast)."""

import numpy as np
import pytest
import torch

from nebula.common.probabilities import softmax
from nebula.learning.training import Encoded, accuracy, fit, predict_logits


@pytest.fixture
def tiny_model(tiny_bert):
    """Factory: the tiny BERT without dropout, so that updates are deterministic."""
    return lambda: tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def toy_data(n: int = 24, seed: int = 0) -> tuple[Encoded, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [[1, *rng.integers(5, 50, size=rng.integers(3, 9)).tolist(), 2] for _ in range(n)]
    return Encoded(rows), rng.integers(0, 3, size=n)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("micro", [1, 3, 4])
def test_micro_batches_accumulate_to_the_full_batch_update(micro, tiny_model):
    data, labels = toy_data()
    full, split = tiny_model(), tiny_model()
    kw = dict(labels=labels, epochs=1, lr=1e-2, batch_size=12, seed=0)
    fit(full, data, micro_batch_size=12, **kw)
    fit(split, data, micro_batch_size=micro, **kw)
    torch.testing.assert_close(params(full), params(split), atol=2e-5, rtol=1e-4)


def test_distillation_moves_the_student_toward_the_targets(tiny_model):
    data, _ = toy_data(32)
    model = tiny_model()
    targets = np.tile([0.8, 0.1, 0.1], (32, 1))
    before = softmax(predict_logits(model, data))[:, 0].mean()
    fit(model, data, targets=targets, epochs=15, lr=1e-2, batch_size=8, micro_batch_size=8, temperature=1.0)
    after = softmax(predict_logits(model, data))[:, 0].mean()
    assert after > before + 0.2


def test_predict_keeps_input_order_despite_length_sorting(tiny_model):
    data, _ = toy_data(10)
    model = tiny_model()
    together = predict_logits(model, data, batch_size=4)
    one_by_one = np.concatenate([predict_logits(model, data.subset([i]), batch_size=1) for i in range(10)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_fit_rejects_mismatched_inputs(tiny_model):
    data, labels = toy_data(8)
    with pytest.raises(ValueError, match="labels has 7 rows for 8 inputs"):
        fit(tiny_model(), data, labels=labels[:7], epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4)
    with pytest.raises(ValueError, match="needs labels, targets or both"):
        fit(tiny_model(), data, epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4)


def test_accuracy_and_softmax():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert accuracy(logits, np.array([0, 1])) == 0.5
    p = softmax(logits, temperature=2.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] < softmax(logits)[0, 0]  # higher temperature, softer
