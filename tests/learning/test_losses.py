"""Property tests of the distillation losses (Hinton et al. 2015)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nebula.learning.losses import distillation_loss, kd_kl_loss, soft_targets

B, C = 8, 6
SEEDS = range(5)


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g, dtype=torch.float64) * scale


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_zero_for_identical_inputs(seed, temperature):
    s = _logits(seed)
    loss = kd_kl_loss(s, soft_targets(s, temperature=temperature), temperature=temperature)
    assert abs(loss.item()) < 1e-12
    assert (
        distillation_loss(s, soft_targets(s, temperature=temperature), temperature=temperature, alpha=1.0).abs() < 1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_positive_otherwise(seed, temperature):
    s, t = _logits(seed), _logits(seed + 100)
    assert kd_kl_loss(s, soft_targets(t, temperature=temperature), temperature=temperature).item() > 0


def test_matches_kl_definition():
    s, t, T = _logits(0), _logits(1), 3.0
    q = soft_targets(t, temperature=T)
    log_p = F.log_softmax(s / T, dim=-1)
    expected = T**2 * (q * (q.log() - log_p)).sum(-1).mean()
    torch.testing.assert_close(kd_kl_loss(s, q, temperature=T), expected)


def test_handles_zero_target_probabilities():
    s = _logits(0)
    q = F.one_hot(torch.arange(B) % C, C).double()  # 0 log 0 = 0
    loss = kd_kl_loss(s, q, temperature=2.0)
    assert torch.isfinite(loss) and loss > 0


def test_gradient_is_documented_formula():
    s, t, T = _logits(0).requires_grad_(), _logits(1), 2.5
    q = soft_targets(t, temperature=T)
    kd_kl_loss(s, q, temperature=T).backward()
    expected = T * (torch.softmax(s.detach() / T, -1) - q) / B  # dL/ds = T (p - q) / B
    torch.testing.assert_close(s.grad, expected)


def _grad(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    s = s.clone().requires_grad_()
    kd_kl_loss(s, soft_targets(t, temperature=T), temperature=T).backward()
    return s.grad


def test_t_squared_keeps_gradient_magnitude_across_temperatures():
    # Zero-mean logits: for large T the gradient tends to (s - t) / (B C), independent of T.
    s, t = _logits(0), _logits(1)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    norms = {T: _grad(s, t, T).norm().item() for T in (4.0, 8.0, 16.0, 32.0)}
    assert max(norms.values()) / min(norms.values()) < 1.5  # comparable across an 8x range of T
    # without the T^2 factor the gradient would shrink by 64x over the same range
    torch.testing.assert_close(_grad(s, t, 1000.0), (s - t) / (B * C), rtol=0.02, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_higher_temperature_gives_softer_targets(seed):
    z = _logits(seed)
    entropies = [_entropy(soft_targets(z, temperature=T)) for T in (0.5, 1.0, 2.0, 5.0, 20.0)]
    for low, high in zip(entropies, entropies[1:]):
        assert (high > low).all()
    assert (entropies[-1] <= torch.log(torch.tensor(C, dtype=torch.float64)) + 1e-12).all()


def test_soft_targets_rows_sum_to_one():
    p = soft_targets(_logits(0, scale=50.0), temperature=0.1)
    torch.testing.assert_close(p.sum(-1), torch.ones(B, dtype=torch.float64))
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_alpha_zero_is_cross_entropy(seed):
    s, t = _logits(seed), _logits(seed + 1)
    y = torch.arange(B) % C
    loss = distillation_loss(s, soft_targets(t, temperature=2.0), y, temperature=2.0, alpha=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(s, y))


@pytest.mark.parametrize("seed", SEEDS)
def test_alpha_one_is_kd_kl(seed):
    s, t = _logits(seed), _logits(seed + 1)
    q = soft_targets(t, temperature=3.0)
    expected = kd_kl_loss(s, q, temperature=3.0)
    torch.testing.assert_close(distillation_loss(s, q, temperature=3.0, alpha=1.0), expected)
    y = torch.arange(B) % C
    torch.testing.assert_close(distillation_loss(s, q, y, temperature=3.0, alpha=1.0), expected)


def test_mixture_is_linear_in_alpha():
    s, t, y = _logits(0), _logits(1), torch.arange(B) % C
    q = soft_targets(t, temperature=2.0)
    expected = 0.3 * kd_kl_loss(s, q, temperature=2.0) + 0.7 * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, q, y, temperature=2.0, alpha=0.3), expected)


def test_logit_shift_moves_only_the_cross_entropy_term():
    s, t, y = _logits(0), _logits(1), torch.arange(B) % C
    q = soft_targets(t, temperature=2.0)
    delta = torch.linspace(-2.0, 1.0, C, dtype=torch.float64)
    expected = 0.3 * kd_kl_loss(s, q, temperature=2.0) + 0.7 * F.cross_entropy(s + delta, y)
    torch.testing.assert_close(distillation_loss(s, q, y, temperature=2.0, alpha=0.3, logit_shift=delta), expected)
    torch.testing.assert_close(
        distillation_loss(s, q, y, temperature=2.0, alpha=1.0, logit_shift=delta), kd_kl_loss(s, q, temperature=2.0)
    )


def test_uniform_logit_shift_changes_nothing():
    s, y = _logits(0), torch.arange(B) % C
    q = soft_targets(_logits(1), temperature=1.0)
    plain = distillation_loss(s, q, y, temperature=1.0, alpha=0.0)
    torch.testing.assert_close(
        distillation_loss(s, q, y, temperature=1.0, alpha=0.0, logit_shift=torch.full((C,), 3.0, dtype=torch.float64)),
        plain,
    )


def test_backward_through_distillation_loss():
    s = _logits(0).float().requires_grad_()
    q = soft_targets(_logits(1).float(), temperature=2.0)
    distillation_loss(s, q, torch.arange(B) % C, temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


S, Q = _logits(0), soft_targets(_logits(1), temperature=1.0)
Y = torch.arange(B) % C


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: soft_targets(S, temperature=0.0), "temperature must be > 0"),
        (lambda: soft_targets(S, temperature=float("nan")), "temperature must be > 0"),
        (lambda: kd_kl_loss(S, Q, temperature=-1.0), "temperature must be > 0"),
        (lambda: kd_kl_loss(S, Q[:, :-1], temperature=1.0), r"\(8, 5\) does not match .* \(8, 6\)"),
        (lambda: kd_kl_loss(S[0], Q[0], temperature=1.0), "must be \\(B, C\\)"),
        (lambda: kd_kl_loss(S, S, temperature=1.0), "pass soft_targets"),
        (lambda: distillation_loss(S, Q, Y, temperature=1.0, alpha=1.5), "alpha must be in"),
        (lambda: distillation_loss(S, Q, Y, temperature=1.0, alpha=-0.1), "alpha must be in"),
        (lambda: distillation_loss(S, Q, None, temperature=1.0, alpha=0.5), "labels is None"),
        (lambda: distillation_loss(S, Q, Y[:-1], temperature=1.0, alpha=0.5), r"labels must have shape \(8,\)"),
        (lambda: distillation_loss(S, Q, Y.double(), temperature=1.0, alpha=0.5), "integer class indices"),
        (lambda: distillation_loss(S, Q[:-1], Y, temperature=1.0, alpha=0.5), "does not match"),
        (
            lambda: distillation_loss(S, Q, Y, temperature=1.0, alpha=0.5, logit_shift=torch.zeros(C + 1)),
            "logit_shift must have shape",
        ),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
