"""Sentence embeddings of a base model: the space where the flywheel measures typicality and diversity.

``embed(model, texts)`` mean-pools the last hidden layer over the real tokens (mask-weighted), the pooling
the sentence-transformers checkpoints Nebula ships were trained with (paraphrase-MiniLM-L3-v2,
all-MiniLM-L6-v2, all-mpnet-base-v2), so cosine distances between rows mean something before any training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from nebula.learning.assets import resolve_model
from nebula.learning.training import collate, encode


def load_encoder(name_or_path: str):
    """``(model, tokenizer)`` of a builtin name (``minilm-l3``, ...) or a model folder, without a head."""
    path = resolve_model(name_or_path)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64) -> np.ndarray:
    """(N, d) float32: the mask-weighted mean of the last hidden layer of ``model`` over each text's tokens.

    ``model`` is a transformers encoder, or a sequence classifier (its base encoder's last hidden state is
    used through ``output_hidden_states``). Rows are sorted by length into batches, then put back in order.
    """
    data = encode(tokenizer, texts, max_length=max_length)
    pad = getattr(model.config, "pad_token_id", None) or 0
    order = np.argsort([len(r) for r in data.input_ids], kind="stable")
    out: list[torch.Tensor] = []
    for start in range(0, len(order), batch_size):
        ids, mask = collate([data.input_ids[i] for i in order[start : start + batch_size]], pad)  # (B, L) twice
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # (B, L, d)
        weight = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        out.append(((hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)).float())  # (B, d)
    width = model.config.hidden_size
    pooled = torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)
    result = np.empty_like(pooled)
    result[order] = pooled
    return result
