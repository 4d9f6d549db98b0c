"""Vocabulary pruning: pure id maps on toy arrays, then exactness on the real model."""

import numpy as np
import pytest
import torch

from nebula.client.runtime.predictor import EdgePredictor
from nebula.deploy.export.vocab import build_id_map, kept_token_ids, prune_model_vocab, prune_rows, remap_ids


def test_kept_ids_are_sorted_unique_and_include_specials():
    kept = kept_token_ids([[5, 9, 5], [2, 7]], special_ids=[0, 1, 100])
    assert kept.tolist() == [0, 1, 2, 5, 7, 9, 100]


def test_id_map_sends_kept_ids_to_their_rows_and_the_rest_to_unk():
    kept = np.array([0, 1, 4, 6])
    id_map = build_id_map(kept, vocab_size=8, unk_id=1)
    assert id_map.tolist() == [0, 1, 1, 1, 2, 1, 3, 1]
    weight = np.arange(16, dtype=np.float32).reshape(8, 2)  # (V, H)
    pruned = prune_rows(weight, kept)  # (K, H)
    ids = np.array([[0, 4, 6], [6, 6, 0]])
    np.testing.assert_array_equal(pruned[remap_ids(ids, id_map)], weight[ids])  # same vectors for kept ids
    assert remap_ids(ids, None) is ids


@pytest.mark.parametrize(
    "kept, message",
    [
        ([0, 2, 2], "sorted and unique"),
        ([0, 9], "outside the vocabulary"),
        ([0, 2], "unknown token id 1 must be kept"),
        ([], "non-empty"),
    ],
)
def test_id_map_rejects_bad_kept_sets(kept, message):
    with pytest.raises(ValueError, match=message):
        build_id_map(np.array(kept, dtype=np.int64), vocab_size=8, unk_id=1)


def test_pruned_tiny_bert_gives_identical_logits_on_kept_tokens(tiny_bert):
    model = tiny_bert(pad_token_id=0).eval()
    ids = torch.tensor([[1, 7, 30, 44, 2], [1, 12, 2, 0, 0]])  # (B, L)
    mask = (ids != 0).long()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    kept = kept_token_ids(ids.tolist(), special_ids=[0, 1, 2, 3])
    id_map = prune_model_vocab(model, kept, unk_id=3)
    assert model.get_input_embeddings().weight.shape == (len(kept), 16) and model.config.vocab_size == len(kept)
    with torch.no_grad():
        after = model(input_ids=torch.from_numpy(id_map[ids.numpy()]), attention_mask=mask).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_pruned_package_predicts_like_the_full_model_inside_its_vocabulary(
    pruned_package, fp32_package, merged_logits, tweets
):
    """The corpus was the first 20 test tweets: on them the pruned export equals the unpruned one."""
    inside = tweets["test"][:20]
    pruned, full = EdgePredictor(pruned_package), EdgePredictor(fp32_package)
    assert not pruned.outside_vocabulary(inside).any()
    np.testing.assert_allclose(pruned.predict_logits(inside), full.predict_logits(inside), atol=1e-5, rtol=0)
    np.testing.assert_allclose(pruned.predict_logits(inside), merged_logits[:20], atol=1e-5, rtol=0)
    assert pruned.manifest.kept_vocab_size < 1000 and (pruned_package / "vocab_map.npy").is_file()


def test_words_outside_the_pruned_vocabulary_are_read_as_unknown(pruned_package):
    predictor = EdgePredictor(pruned_package)
    assert predictor.outside_vocabulary(["xylophone zeppelin quasar"]).tolist() == [True]
    unk = predictor.encode(["[UNK]"])[0][1]  # the special token itself, mapped
    assert unk in predictor.encode(["xylophone zeppelin quasar"])[0]
