"""Label priors and the prior shift of logit-adjusted training (nebula.common.priors)."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.common.priors import class_prior, prior_shift


def test_prior_is_smoothed_distribution():
    p = class_prior(np.array([8, 0, 2]), smoothing=1.0)
    np.testing.assert_allclose(p, [9 / 13, 1 / 13, 3 / 13])
    np.testing.assert_allclose(class_prior(np.array([3, 1]), smoothing=0.0), [0.75, 0.25])


def test_shift_is_zero_for_a_client_shaped_like_the_federation():
    np.testing.assert_allclose(
        prior_shift(np.array([10, 20, 30]), np.array([100, 200, 300]), smoothing=0.0), 0.0, atol=1e-7
    )


def test_shift_turns_federation_posterior_into_client_posterior():
    """Bayes: p_k(y|x) is proportional to p(y|x) pi_k(y) / pi(y), i.e. softmax(z + delta)."""
    rng = np.random.default_rng(0)
    local, glob = np.array([50, 5, 0]), np.array([300, 200, 100])
    z = rng.normal(size=(4, 3))  # the federation's posterior logits
    delta = prior_shift(local, glob)
    post = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    pk, pg = class_prior(local), class_prior(glob)
    expected = post * pk / pg
    expected /= expected.sum(1, keepdims=True)
    got = np.exp(z + delta) / np.exp(z + delta).sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert delta[2] < delta[1] < delta[0]  # an unseen class is shifted down the most, yet finitely
    assert np.isfinite(delta).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: class_prior(np.array([])), "non-empty"),
        (lambda: class_prior(np.array([[1, 2]])), "non-empty vector"),
        (lambda: class_prior(np.array([1.0, np.nan])), "finite and >= 0"),
        (lambda: class_prior(np.array([1, -1])), "finite and >= 0"),
        (lambda: class_prior(np.array([0, 0]), smoothing=0.0), "smoothing"),
        (lambda: prior_shift(np.array([1, 2]), np.array([1, 2, 3])), "differ in shape"),
    ],
)
def test_bad_counts_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
