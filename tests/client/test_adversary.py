"""Simulated poisoning clients (client/adversary.py): the spec's grammar, each attack on small arrays, the payload."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.client.adversary import (
    ATTACKS,
    INVERT_SCALE,
    Round,
    colluding_logits,
    collusion_classes,
    flipped_logits,
    inverted_logits,
    parse_adversaries,
    poison,
    random_logits,
)
from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits, encode_logits

C = 3
IDS = np.arange(100, 340, dtype=np.int64)  # (N,)


def _honest(seed: int = 0, n: int = len(IDS)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, size=(n, C))  # (N, C)


def _at(round_index: int = 1, client_index: int = 2, seed: int = 0, ids: np.ndarray = IDS) -> Round:
    return Round(ids, round_index, client_index, seed)


# -- the spec ---------------------------------------------------------------------------


def test_spec_parses_every_kind():
    spec = "2:random, 5:inverted,3:flip=0>1,7:collude,8:collude"
    assert NebulaConfig.from_flat({"federation.adversaries": spec}).federation.adversary_kinds() == {
        2: ("random", ()),
        5: ("inverted", ()),
        3: ("flip", (0, 1)),
        7: ("collude", ()),
        8: ("collude", ()),
    }
    attacks = parse_adversaries(spec)
    assert sorted(attacks) == [2, 3, 5, 7, 8]
    assert attacks[2] is random_logits and attacks[7] is colluding_logits
    assert parse_adversaries("") == {}


def test_the_grammar_and_the_transforms_know_the_same_kinds():
    for kind in ATTACKS:
        entry = "0:flip=0>1" if kind == "flip" else f"0:{kind}"
        assert NebulaConfig.from_flat({"federation.adversaries": entry}).federation.adversary_kinds()[0][0] == kind


@pytest.mark.parametrize(
    "spec, message",
    [
        ("2", "entry '2' is not 'client-index:kind'"),
        ("x:random", "entry 'x:random' is not"),
        ("2:evil", "entry '2:evil' is not"),
        ("2:flip", "entry '2:flip' is not"),
        ("2:flip=a>b", "entry '2:flip=a>b' is not"),
        ("2:flip=1>1", "entry '2:flip=1>1' flips class 1 to itself"),
        ("1:random,1:inverted", "entry '1:inverted' repeats client 1"),
    ],
)
def test_bad_specs_name_the_entry(spec, message):
    with pytest.raises(ConfigError, match=message):
        NebulaConfig.from_flat({"federation.adversaries": spec})
    with pytest.raises(ConfigError, match=message):
        parse_adversaries(spec)


# -- each attack ------------------------------------------------------------------------


def test_random_has_the_honest_scale_and_is_seeded():
    z = _honest()
    out = random_logits(z, _at())
    assert out.shape == z.shape
    assert 0.8 < out.std() / z.std() < 1.25
    np.testing.assert_array_equal(out, random_logits(z, _at()))
    assert not np.array_equal(out, random_logits(z, _at(client_index=3)))
    assert not np.array_equal(out, random_logits(z, _at(round_index=2)))
    assert abs(np.corrcoef(out.ravel(), z.ravel())[0, 1]) < 0.2  # unrelated to the honest answer


def test_inverted_answers_the_least_likely_class_more_confidently():
    z = _honest()
    out = inverted_logits(z, _at())
    np.testing.assert_array_equal(out.argmax(axis=1), z.argmin(axis=1))
    np.testing.assert_allclose(out, -INVERT_SCALE * z)
    assert softmax(out).max(axis=1).mean() > softmax(z).max(axis=1).mean()


def test_flip_rewrites_only_the_source_class_rows():
    z = _honest()
    out = flipped_logits(z, _at(), source=0, target=1)
    source = z.argmax(axis=1) == 0
    assert 0 < source.sum() < len(z)
    assert (out[source].argmax(axis=1) == 1).all()
    assert (softmax(out[source])[:, 1] > 0.99).all()
    np.testing.assert_array_equal(out[~source], z[~source])


def test_flip_to_a_class_the_task_lacks_is_named():
    with pytest.raises(ValueError, match="target class 5 is not one of the 3 classes"):
        flipped_logits(_honest(), _at(), source=0, target=5)


def test_colluders_send_the_same_answer_whatever_their_own():
    a, b = colluding_logits(_honest(1), _at(client_index=7)), colluding_logits(_honest(2), _at(client_index=8))
    np.testing.assert_array_equal(a, b)
    assert (softmax(a).max(axis=1) > 0.99).all()
    assert set(a.argmax(axis=1)) == set(range(C))  # spread over the classes, not one class for everything
    assert not np.array_equal(a, colluding_logits(_honest(1), _at(round_index=2)))


def test_collusion_class_depends_on_the_id_not_the_row():
    classes = collusion_classes(IDS, num_classes=C, seed=0, round_index=1)
    shuffled = np.random.default_rng(0).permutation(len(IDS))
    again = collusion_classes(IDS[shuffled], num_classes=C, seed=0, round_index=1)
    np.testing.assert_array_equal(again, classes[shuffled])
    counts = np.bincount(classes, minlength=C)
    assert counts.min() > len(IDS) / C / 2  # about uniform
    assert not np.array_equal(classes, collusion_classes(IDS, num_classes=C, seed=1, round_index=1))


# -- on the wire ------------------------------------------------------------------------


def test_an_honest_client_payload_is_untouched():
    blob = encode_logits(IDS, _honest(), dtype="float16")
    assert poison(blob, spec="2:inverted", client_index=1, round_index=1, seed=0, dtype="float16") is blob


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_an_adversary_payload_is_well_formed_and_attacked(dtype):
    blob = encode_logits(IDS, _honest(), dtype=dtype)
    out = poison(blob, spec="2:inverted,3:flip=0>1", client_index=2, round_index=4, seed=0, dtype=dtype)
    assert len(out) == len(blob)  # same wire dtype, same shape
    honest, poisoned = decode_logits(blob), decode_logits(out, expected_ids=IDS, num_classes=C)
    np.testing.assert_array_equal(poisoned.ids, IDS)
    np.testing.assert_array_equal(poisoned.logits.argmax(axis=1), honest.logits.argmin(axis=1))
