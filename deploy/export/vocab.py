"""Vocabulary pruning: keep only the embedding rows a deployment's texts can reach.

In a small encoder most of the weights are the token embedding table (MiniLM-L3: 30522 x 384
floats, 47 MB of its 69 MB). A device that only sees one domain's texts reaches a few thousand of
those rows. Pruning keeps the rows of the token ids a corpus produces (plus the special tokens)
in their original order and builds an id map ``old id -> new id``:

    E_new = E_old[kept]                  # (K, H) from (V, H)
    id_map[kept[j]] = j                  # (V,)
    id_map[i] = id_map[unk]  for i not in kept

Since ``E_new[id_map[i]] == E_old[i]`` for every kept id, a text whose tokens are all kept gets
exactly the same logits as from the unpruned model. A token outside the kept set becomes
``[UNK]``. The export package stores ``id_map`` and the runtime applies it to the tokenizer's ids
before inference, so the tokenizer itself is left untouched.

Everything here except :func:`prune_model_vocab` is numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def kept_token_ids(id_lists: Iterable[Sequence[int]], *, special_ids: Iterable[int]) -> np.ndarray:
    """Sorted unique token ids found in ``id_lists`` together with ``special_ids``, int64 (K,)."""
    seen: set[int] = {int(i) for i in special_ids}
    for ids in id_lists:
        seen.update(int(i) for i in ids)
    return np.asarray(sorted(seen), dtype=np.int64)


def build_id_map(kept: np.ndarray, *, vocab_size: int, unk_id: int) -> np.ndarray:
    """Old-to-new id table, int64 (vocab_size,); ids outside ``kept`` map to ``unk_id``'s new id.

    Raises
    ------
    ValueError
        ``kept`` is not sorted and unique, reaches outside ``[0, vocab_size)``, or lacks ``unk_id``.
    """
    kept = np.asarray(kept, dtype=np.int64)
    if kept.ndim != 1 or len(kept) == 0:
        raise ValueError(f"kept ids must be a non-empty 1-D array, got shape {kept.shape}")
    if np.any(np.diff(kept) <= 0):
        raise ValueError("kept ids must be sorted and unique")
    if kept[0] < 0 or kept[-1] >= vocab_size:
        raise ValueError(f"kept ids span {kept[0]}..{kept[-1]}, outside the vocabulary 0..{vocab_size - 1}")
    position = np.searchsorted(kept, unk_id)
    if position >= len(kept) or kept[position] != unk_id:
        raise ValueError(f"the unknown token id {unk_id} must be kept")
    id_map = np.full(vocab_size, position, dtype=np.int64)
    id_map[kept] = np.arange(len(kept), dtype=np.int64)
    return id_map


def remap_ids(ids: np.ndarray, id_map: np.ndarray | None) -> np.ndarray:
    """Token ids of the full vocabulary -> ids of the pruned table (unchanged when ``id_map`` is None)."""
    return ids if id_map is None else id_map[ids]


def prune_rows(weight: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Rows ``kept`` of an embedding matrix: (V, H) -> (K, H), in the order of ``kept``."""
    return weight[np.asarray(kept, dtype=np.int64)]


def corpus_kept_ids(tokenizer, texts: Sequence[str], *, max_length: int) -> np.ndarray:
    """Ids the (transformers) ``tokenizer`` produces on ``texts`` at ``max_length``, plus its special tokens.

    Truncation as at inference: a token only ever seen past ``max_length`` never reaches the model.
    """
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return kept_token_ids(ids, special_ids=tokenizer.all_special_ids)


def prune_model_vocab(model, kept: np.ndarray, *, unk_id: int) -> np.ndarray:
    """Replace ``model``'s input embedding table by its ``kept`` rows, in place; returns the id map.

    ``model`` is a ``transformers`` model (``get_input_embeddings`` / ``set_input_embeddings``);
    its ``config.vocab_size`` becomes K. Only the word embeddings change: position and token-type
    embeddings are indexed by position, not by token id.
    """
    import torch

    old = model.get_input_embeddings()
    id_map = build_id_map(kept, vocab_size=old.num_embeddings, unk_id=unk_id)
    pad = old.padding_idx
    new = torch.nn.Embedding(
        len(kept),
        old.embedding_dim,
        padding_idx=None if pad is None else int(id_map[pad]),
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(prune_rows(old.weight.detach().cpu().numpy(), kept)))  # (K, H)
    new.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)
    return id_map
