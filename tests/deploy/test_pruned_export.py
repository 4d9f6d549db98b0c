"""A structurally pruned tiny BERT (learning/pruning.py) exports to ONNX (deploy/export/onnx_export.py) and the
graph gives the PyTorch logits: per-layer head counts and FFN widths survive tracing."""

import numpy as np
import onnxruntime as ort
import torch

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
