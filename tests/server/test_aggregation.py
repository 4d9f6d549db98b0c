"""Aggregation rules: one table of shared checks for every registered rule, then rule-specific tests."""

from __future__ import annotations

import numpy as np
import pytest

from nebula.server.aggregation import AggregationError, AggregationRule, available_rules, get_rule
from nebula.server.aggregation.base import check_inputs
from nebula.server.aggregation.registry import register

K, N, C = 5, 6, 4
RULES = available_rules()


def _probs(seed: int = 0, k: int = K, n: int = N, c: int = C) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(c), size=(k, n))  # (K, N, C)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed + 1000)
    return _probs(seed), rng.uniform(1, 10, size=K), rng.integers(0, 20, size=(K, C)).astype(float)


def test_table_covers_the_expected_rules():
    assert set(RULES) >= {"mean", "entropy", "class-support", "median", "trimmed-mean"}


# -- one table: every rule through the same checks --------------------------------------


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("with_support", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_output_is_a_distribution(name, with_support, seed):
    probs, weights, support = _inputs(seed)
    rule = get_rule(name)
    assert isinstance(rule, AggregationRule) and rule.name == name
    out = rule.aggregate(probs, weights=weights, support=support if with_support else None)
    assert out.shape == (N, C)
    assert np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", RULES)
def test_identical_clients_give_their_probs(name):
    one = _probs(3, k=1)  # (1, N, C)
    probs = np.repeat(one, K, axis=0)
    _, weights, support = _inputs()
    for s in (support, None):
        np.testing.assert_allclose(get_rule(name).aggregate(probs, weights=weights, support=s), one[0], atol=1e-12)


@pytest.mark.parametrize("name", RULES)
def test_client_permutation_invariance(name):
    probs, weights, support = _inputs(7)
    perm = np.random.default_rng(0).permutation(K)
    rule = get_rule(name)
    a = rule.aggregate(probs, weights=weights, support=support)
    b = rule.aggregate(probs[perm], weights=weights[perm], support=support[perm])
    np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("name", RULES)
def test_single_client(name):
    probs, weights, support = _inputs()
    out = get_rule(name).aggregate(probs[:1], weights=weights[:1], support=support[:1])
    assert out.shape == (N, C)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", RULES)
def test_all_uniform_clients(name):
    probs = np.full((K, N, C), 1.0 / C)
    out = get_rule(name).aggregate(probs, weights=np.ones(K), support=np.zeros((K, C)))
    np.testing.assert_allclose(out, 1.0 / C)


def _nan_probs():
    p, _, _ = _inputs()
    p[1, 2, 3] = np.nan
    return p


def _inf_probs():
    p, _, _ = _inputs()
    p[0, 0, 0] = np.inf
    return p


def _unnormalised():
    p, _, _ = _inputs()
    p[2, 4] *= 2
    return p


def _negative_probs():
    p = np.full((K, N, C), 1.0 / C)
    p[0, 0, :2] = [-0.25, 0.75]
    return p


P, W, S = _inputs()
INVALID = [
    ("nan probs", lambda: (_nan_probs(), W, S), "probs has 1 non-finite"),
    ("inf probs", lambda: (_inf_probs(), W, S), "probs has 1 non-finite"),
    ("negative probs", lambda: (_negative_probs(), W, S), "probs must be >= 0"),
    ("rows do not sum to 1", lambda: (_unnormalised(), W, S), "client 2, input 4 sums to 2"),
    ("probs 2-D", lambda: (P[0], W, S), r"probs must be \(K, N, C\)"),
    ("probs empty", lambda: (P[:, :0], W, S), "K, N, C >= 1"),
    ("weights wrong length", lambda: (P, W[:-1], S), r"weights must have shape \(5,\)"),
    ("weights 2-D", lambda: (P, W[:, None], S), r"weights must have shape \(5,\)"),
    ("negative weights", lambda: (P, W * np.array([1, -1, 1, 1, 1]), S), "weights must be >= 0"),
    ("all-zero weights", lambda: (P, np.zeros(K), S), "weights are all zero"),
    ("nan weights", lambda: (P, np.full(K, np.nan), S), "weights has 5 non-finite"),
    ("support wrong shape", lambda: (P, W, S[:, :-1]), r"support must have shape \(5, 4\)"),
    ("negative support", lambda: (P, W, -S - 1), "support must be >= 0"),
    ("nan support", lambda: (P, W, np.full((K, C), np.nan)), "support has 20 non-finite"),
]


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("case, make, match", INVALID, ids=[c[0] for c in INVALID])
def test_input_validation(name, case, make, match):
    probs, weights, support = make()
    with pytest.raises(AggregationError, match=match):
        get_rule(name).aggregate(probs, weights=weights, support=support)


# -- registry ---------------------------------------------------------------------------


def test_unknown_rule_lists_available():
    with pytest.raises(AggregationError, match="unknown aggregation rule 'krum'; available: .*median"):
        get_rule("krum")


def test_unknown_parameter_is_named():
    with pytest.raises(AggregationError, match="rule 'mean'.*'trim'"):
        get_rule("mean", trim=0.1)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("trimmed-mean", {"trim": 0.5}, "trim must be in"),
        ("trimmed-mean", {"trim": -0.1}, "trim must be in"),
        ("entropy", {"sharpen_temperature": 0.0}, "sharpen_temperature must be > 0"),
        ("entropy", {"epsilon": 0.0}, "epsilon must be > 0"),
    ],
)
def test_bad_parameters(name, params, match):
    with pytest.raises(AggregationError, match=match):
        get_rule(name, **params)


def test_register_refuses_a_second_rule_with_the_same_name():
    class Impostor(AggregationRule):
        name = "mean"

        def aggregate(self, probs, *, weights, support=None):
            return probs[0]

    with pytest.raises(TypeError, match="already registered"):
        register(Impostor)
    assert type(get_rule("mean")).__name__ == "MeanRule"


def test_check_inputs_accepts_valid_inputs():
    check_inputs(P, W, S)
    check_inputs(P, W, None)


# -- rule-specific behaviour ------------------------------------------------------------


def test_mean_honours_weights():
    probs, _, _ = _inputs()
    weights = np.array([3.0, 1.0, 0.0, 0.0, 0.0])
    out = get_rule("mean").aggregate(probs, weights=weights)
    np.testing.assert_allclose(out, 0.75 * probs[0] + 0.25 * probs[1])


def test_entropy_favours_the_confident_client():
    confident = np.array([0.97, 0.01, 0.01, 0.01])
    vague = np.array([0.1, 0.4, 0.3, 0.2])
    probs = np.stack([np.tile(confident, (N, 1)), np.tile(vague, (N, 1))])  # (2, N, C)
    weights = np.ones(2)
    out = get_rule("entropy").aggregate(probs, weights=weights)
    mean = get_rule("mean").aggregate(probs, weights=weights)
    assert out[0, 0] > mean[0, 0] + 0.2
    assert (out.argmax(axis=1) == 0).all()


def test_entropy_sharpening_lowers_entropy_and_keeps_argmax():
    probs, weights, _ = _inputs()
    plain = get_rule("entropy").aggregate(probs, weights=weights)
    sharp = get_rule("entropy", sharpen_temperature=0.5).aggregate(probs, weights=weights)
    h = lambda p: -(p * np.log(p)).sum(axis=1)
    assert (h(sharp) < h(plain)).all()
    np.testing.assert_array_equal(sharp.argmax(axis=1), plain.argmax(axis=1))
    np.testing.assert_allclose(sharp, plain**2 / (plain**2).sum(axis=1, keepdims=True))


def test_class_support_lets_the_client_that_saw_a_class_dominate_it():
    # client 0 saw only class 0 and is sure of it; clients 1-2 never saw class 0 and put little mass there
    expert = np.array([0.9, 0.05, 0.03, 0.02])
    others = np.array([0.05, 0.45, 0.3, 0.2])
    probs = np.stack([np.tile(expert, (N, 1)), np.tile(others, (N, 1)), np.tile(others, (N, 1))])  # (3, N, C)
    support = np.array([[100, 0, 0, 0], [0, 50, 50, 50], [0, 50, 50, 50]], dtype=float)
    weights = support.sum(axis=1)
    out = get_rule("class-support").aggregate(probs, weights=weights, support=support)
    mean = get_rule("mean").aggregate(probs, weights=weights)
    assert (out.argmax(axis=1) == 0).all()
    assert (mean.argmax(axis=1) != 0).all()
    raw = np.array([0.9, 0.45, 0.3, 0.2])  # per class, only the clients that saw it count
    np.testing.assert_allclose(out[0], raw / raw.sum())


def test_class_support_without_support_is_the_weighted_mean():
    probs, weights, _ = _inputs()
    np.testing.assert_allclose(
        get_rule("class-support").aggregate(probs, weights=weights),
        get_rule("mean").aggregate(probs, weights=weights),
    )


def test_class_support_unseen_class_uses_weighted_mean_column():
    probs, weights, support = _inputs()
    support[:, 2] = 0
    out = get_rule("class-support").aggregate(probs, weights=weights, support=support)
    mean = np.tensordot(weights / weights.sum(), probs, axes=1)  # (N, C)
    seen = np.einsum("kc,knc->nc", support, probs) / np.where(support.sum(0) > 0, support.sum(0), 1)
    raw = np.where(np.arange(C) == 2, mean, seen)
    np.testing.assert_allclose(out, raw / raw.sum(axis=1, keepdims=True))


def _attacked(seed: int = 0):
    """Four honest clients agreeing on class 0, one Byzantine client sending a one-hot on class 3."""
    honest = np.tile([0.4, 0.3, 0.2, 0.1], (N, 1)) + np.random.default_rng(seed).normal(0, 0.01, size=(4, N, C))
    honest /= honest.sum(axis=2, keepdims=True)
    attacker = np.tile(np.eye(C)[3], (1, N, 1))
    return np.concatenate([honest, attacker]), honest.mean(axis=0)


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
@pytest.mark.parametrize("seed", range(3))
def test_robust_rules_resist_one_adversarial_client(name, seed):
    probs, honest_mean = _attacked(seed)
    weights = np.ones(K)
    robust = get_rule(name).aggregate(probs, weights=weights)
    mean = get_rule("mean").aggregate(probs, weights=weights)
    np.testing.assert_array_equal(robust.argmax(axis=1), 0)  # consensus argmax unchanged
    shift_robust = np.abs(robust - honest_mean).sum(axis=1)
    shift_mean = np.abs(mean - honest_mean).sum(axis=1)
    assert (shift_robust < 0.5 * shift_mean).all()


def test_median_of_disagreeing_one_hots_falls_back_to_mean():
    probs = np.eye(3)[:, None, :]  # (3, 1, 3): three clients, three different one-hots
    out = get_rule("median").aggregate(probs, weights=np.ones(3))
    np.testing.assert_allclose(out, [[1 / 3, 1 / 3, 1 / 3]])


def test_trimmed_mean_zero_trim_is_unweighted_mean():
    probs, weights, _ = _inputs()
    np.testing.assert_allclose(get_rule("trimmed-mean", trim=0.0).aggregate(probs, weights=weights), probs.mean(axis=0))


# -- class-contrast ------------------------------------------------------------------------


def _log_softmax(f: np.ndarray) -> np.ndarray:
    return f - np.log(np.exp(f).sum(axis=-1, keepdims=True))


def test_class_contrast_recovers_the_posterior_from_partial_views():
    """Each client sees the true log-posterior only on its classes, shifted by its own offset per input;
    its other columns are garbage. The rule recovers softmax(f) exactly when the classes are linked."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(N, C))  # (N, C) true log-posterior up to a constant
    held = [[0, 1], [1, 2], [2, 3], [0], [3]]
    z = np.empty((len(held), N, C))
    support = np.zeros((len(held), C))
    for k, classes in enumerate(held):
        garbage = rng.normal(scale=5.0, size=(N, C))
        garbage[:, classes] = f[:, classes] + rng.normal(size=(N, 1))  # own offset per input
        z[k] = _log_softmax(garbage)
        support[k, classes] = rng.integers(5, 50, size=len(classes))
    out = get_rule("class-contrast").aggregate(np.exp(z), weights=np.ones(len(held)), support=support)
    np.testing.assert_allclose(out, np.exp(_log_softmax(f)), atol=1e-6)


def test_class_contrast_ignores_clients_holding_one_class():
    probs, weights, support = _inputs(4)
    support[support == 0] = 1.0  # the base clients hold every class
    base = get_rule("class-contrast").aggregate(probs, weights=weights, support=support)
    loud = np.tile([0.97, 0.01, 0.01, 0.01], (1, N, 1))  # a big one-class client, sure of its class everywhere
    out = get_rule("class-contrast").aggregate(
        np.concatenate([probs, loud]), weights=np.append(weights, 1e6), support=np.vstack([support, [5000, 0, 0, 0]])
    )
    np.testing.assert_allclose(out, base, atol=1e-9)
    mean = get_rule("mean").aggregate(np.concatenate([probs, loud]), weights=np.append(weights, 1e6))
    assert (mean.argmax(axis=1) == 0).all()  # the mean is taken over by it


def test_class_contrast_without_support_is_the_weighted_geometric_mean():
    probs, weights, _ = _inputs(5)
    geo = np.exp(np.tensordot(weights / weights.sum(), np.log(probs), axes=1))
    np.testing.assert_allclose(
        get_rule("class-contrast").aggregate(probs, weights=weights), geo / geo.sum(axis=1, keepdims=True), atol=1e-9
    )


@pytest.mark.parametrize("sweeps", [0, -1, 2.5])
def test_class_contrast_refuses_bad_sweeps(sweeps):
    with pytest.raises(AggregationError, match="sweeps must be a positive integer"):
        get_rule("class-contrast", sweeps=sweeps)


# -- robust-contrast ------------------------------------------------------------------------


def test_robust_contrast_recovers_the_posterior_from_partial_views():
    """The same partial views as class-contrast's test: with no outlier the Huber fit is the least-squares one."""
    rng = np.random.default_rng(1)
    f = rng.normal(size=(N, C))
    held = [[0, 1], [1, 2], [2, 3], [0, 3]]
    z = np.empty((len(held), N, C))
    support = np.zeros((len(held), C))
    for k, classes in enumerate(held):
        garbage = rng.normal(scale=5.0, size=(N, C))
        garbage[:, classes] = f[:, classes] + rng.normal(size=(N, 1))
        z[k] = _log_softmax(garbage)
        support[k, classes] = rng.integers(5, 50, size=len(classes))
    out = get_rule("robust-contrast").aggregate(np.exp(z), weights=np.ones(len(held)), support=support)
    np.testing.assert_allclose(out, np.exp(_log_softmax(f)), atol=1e-6)


def _flipped_round(n: int = 60):
    """Eight clients lean to the truth by one logit with noise; two flip class 0 to class 1 by 6 logits on the
    inputs of class 0 and hold the most class-0 examples (the ``flip`` attack where it hurts most)."""
    rng = np.random.default_rng(5)
    truth = np.arange(n) % C
    honest = [np.eye(C)[truth] + rng.normal(0, 0.3, (n, C)) for _ in range(8)]
    flipped = []
    for k in range(2):
        z = honest[k].copy()
        z[truth == 0, 1] = z[truth == 0].max(axis=1) + 6.0
        flipped.append(z)
    probs = np.stack([np.exp(_log_softmax(z)) for z in honest + flipped])
    support = np.vstack([np.full((8, C), 10.0), np.tile([40.0, 10.0, 10.0, 10.0], (2, 1))])
    return probs, np.ones(10), support, truth


def test_robust_contrast_holds_a_confident_minority_that_flips_class_contrast():
    probs, weights, support, truth = _flipped_round()
    plain = get_rule("class-contrast").aggregate(probs, weights=weights, support=support)
    robust = get_rule("robust-contrast").aggregate(probs, weights=weights, support=support)
    on_zero = truth == 0
    assert (plain[on_zero].argmax(axis=1) == 1).mean() > 0.9  # least squares is carried by the two
    assert (robust.argmax(axis=1) == truth).mean() > 0.95  # the Huber fit is not
    clean = get_rule("robust-contrast").aggregate(probs[:8], weights=weights[:8], support=support[:8])
    assert np.abs(robust[~on_zero] - clean[~on_zero]).max() < 0.1  # elsewhere the two flippers are honest


def test_robust_contrast_bounds_the_pull_of_one_answer():
    """One client shouting ever louder on one input moves the least-squares fit without bound, the Huber fit by a
    bounded amount."""
    probs, weights, support = _inputs(2)
    support[support == 0] = 1.0

    def moved(rule: str, shout: float) -> float:
        z = np.log(probs).copy()
        z[0, 0, 1] += shout
        loud = np.exp(_log_softmax(z))
        base = get_rule(rule).aggregate(probs, weights=weights, support=support)
        return float(
            np.abs(np.log(get_rule(rule).aggregate(loud, weights=weights, support=support)[0]) - np.log(base[0])).max()
        )

    assert moved("class-contrast", 20.0) > 3 * moved("class-contrast", 5.0) > 0
    assert moved("robust-contrast", 20.0) < 1.1 * moved("robust-contrast", 5.0)


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"sweeps": -1}, {"iterations": 1.5}])
def test_robust_contrast_refuses_bad_settings(kwargs):
    with pytest.raises(AggregationError, match="must be a positive integer"):
        get_rule("robust-contrast", **kwargs)
