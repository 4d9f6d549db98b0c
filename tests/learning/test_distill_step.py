"""The teacher's round, in the pieces that need no model: gathering targets, the targets' arithmetic, seeds.
(teach_step itself runs on real models in tests/server/unlearning/test_model_modes.py:
replay = checkpoints, bit for bit.)"""

import numpy as np
import pytest

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.probabilities import merge_consensus, teacher_targets
from nebula.learning.distill_step import round_seed, student_weights


def test_gathering_appends_new_ids_and_replaces_resent_ones():
    ids, probs = merge_consensus(None, None, np.array([0, 1, 2]), np.full((3, 2), 0.5))
    ids, probs = merge_consensus(ids, probs, np.array([2, 3]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])  # the re-sent id 2 moves to the round that sent it last
    np.testing.assert_array_equal(probs[2:], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(probs[:2], np.full((2, 2), 0.5))


def test_targets_are_the_consensus_up_to_float32_rounding_and_sum_to_one():
    rng = np.random.default_rng(0)
    consensus = rng.dirichlet(np.ones(3), size=50)  # (50, 3) float64
    consensus[0] = [1.0, 0.0, 0.0]  # a zero is floored at 1e-12 before the log
    targets = teacher_targets(consensus)
    assert targets.dtype == np.float32
    np.testing.assert_allclose(targets, consensus, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)


def test_each_round_has_its_own_seed():
    config = NebulaConfig()
    config.data.seed = 3
    assert [round_seed(config, r) for r in (1, 2)] == [3001, 3002]


def _phased(phases: str, rounds: int = 4, **weights) -> NebulaConfig:
    flat = {"federation.rounds": rounds, "train.student_phases": phases}
    return NebulaConfig.from_flat(flat | {f"train.student_{k}_weight": v for k, v in weights.items()})


def test_the_student_phases_give_each_round_its_terms():
    config = _phased("warmup:1,finetune:1", relation=2.0, hidden=0.5)
    weights = [student_weights(config, r) for r in (1, 2, 3, 4, 5)]
    assert weights[0].as_dict() == {"kd": 0.0, "ce": 0.0, "hidden": 0.5, "attention": 0.0, "relation": 2.0}
    assert weights[1] == weights[2] and weights[1].active() == ("kd", "hidden", "relation")
    assert weights[3] is None and weights[4] is None  # fine-tune (and a resumed round past the last): logits only
    assert [student_weights(_phased("", relation=1.0), r).active() for r in (1, 4)] == [("kd", "relation")] * 2
    assert student_weights(_phased("finetune:1"), 1) is None  # no deep term: logits only, phases or not


@pytest.mark.parametrize(
    "phases, rounds, weights, message",
    [
        ("warmup=1", 4, {"relation": 1.0}, "entry 'warmup=1' is not 'warmup:R' or 'finetune:R'"),
        ("cooldown:1", 4, {"relation": 1.0}, "entry 'cooldown:1'"),
        ("warmup:-1", 4, {"relation": 1.0}, "entry 'warmup:-1'"),
        ("warmup:1", 4, {}, "a warm-up trains the intermediate-layer terms alone, and every one of"),
        ("warmup:2,finetune:3", 4, {"relation": 1.0}, "does not fit federation.rounds \\(4\\)"),
        ("warmup:2", 2, {"relation": 1.0}, "the warm-up must leave one round that trains the logits"),
    ],
)
def test_student_phases_that_cannot_work_are_refused_naming_them(phases, rounds, weights, message):
    with pytest.raises(ConfigError, match=message):
        _phased(phases, rounds, **weights)
