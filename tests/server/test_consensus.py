"""The round consensus (server/consensus.py): the prior an isolated federation applies on the server."""

import numpy as np
import pytest

from nebula.common.priors import class_prior
from nebula.common.probabilities import softmax
from nebula.server.aggregation import get_rule
from nebula.server.consensus import federation_log_prior, round_consensus

RULE = get_rule("mean")


def _consensus(logits, **kw):
    out, why = round_consensus(logits, [1.0] * len(logits), rule=RULE, temperature=1.0, min_replies=1, **kw)
    assert why is None
    return out


def test_no_prior_is_the_plain_rule():
    z = [np.array([[1.0, 0.0, -1.0]], dtype=np.float32), np.array([[0.0, 2.0, 0.0]], dtype=np.float32)]
    assert np.array_equal(_consensus(z), RULE.aggregate(np.stack([softmax(x) for x in z]), weights=np.ones(2)))


def test_the_prior_turns_balanced_posteriors_into_the_federations():
    # A client whose logits are the class-balanced posterior (all equal: it cannot tell the classes apart)
    # answers with the federation's prior once the server adds log pi.
    counts = [60, 30, 10]
    out = _consensus([np.zeros((2, 3), dtype=np.float32)], log_prior=federation_log_prior(counts))
    assert np.allclose(out, class_prior(np.array(counts)))


def test_a_uniform_prior_changes_nothing():
    z = [np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=np.float32)]
    assert np.allclose(_consensus(z, log_prior=federation_log_prior([5, 5, 5])), _consensus(z))


@pytest.mark.parametrize("counts", [[1, 2], [0, 0, 7]])
def test_the_log_prior_is_a_smoothed_distribution(counts):
    prior = np.exp(federation_log_prior(counts))
    assert prior.shape == (len(counts),) and np.isclose(prior.sum(), 1.0) and (prior > 0).all()
