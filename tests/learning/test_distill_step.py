"""The teacher's round, in the pieces that need no model: gathering targets, the targets' arithmetic, seeds.
(teach_step itself runs on real models in tests/server/unlearning/test_model_modes.py:
replay = checkpoints, bit for bit.)"""

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.probabilities import merge_consensus, teacher_targets
from nebula.learning.distill_step import round_seed


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
