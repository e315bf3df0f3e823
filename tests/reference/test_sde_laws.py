"""Are reference.laws' VP-SDE laws the exact laws of reference.sde on Gaussian data, and DSM's closed forms right?

Deterministic: from a fixed x_T the probability-flow sampler is an affine map, so its law's mean *is* the sample
(to float64 round-off, ATOL) with zero variance; one Euler–Maruyama step's law from a point is the step run with
its noise. Monte Carlo: samples of the reference, standardised by the exact law, are i.i.d. N(0, 1) per coordinate;
``assert_matches_law`` (test_laws.py) rejects a correct sampler with probability ≤ 1e-6 per test (Bonferroni over
its statistics, exact normal and χ² quantiles). The DSM loss's law under the exact score is ½ Σ c_i·χ²₁
(``laws.dsm_loss_weights``, derivation there): its Monte Carlo mean is tested against the exact Chernoff bounds
of ``laws.weighted_chi2_bounds`` at 1e-6, and those bounds against scipy's exact χ² quantiles.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from reference import laws
from reference.sde import dsm_loss, reverse_sde_step, sde_sample
from reference.toy import GaussianData, vp_sde_coefficients
from tests.reference.test_laws import N, assert_matches_law

ATOL = 1e-10  # float64 round-off of ≤ 50 chained affine steps (≤ 1e-12 each, values ≤ 10)
DATA = GaussianData(torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
                    torch.tensor([1.0, 0.01, 4.0, 0.25], dtype=torch.float64))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_steps", [1, 3, 50])
def test_probability_flow_from_a_fixed_start_is_its_law_exactly(n_steps):
    """From a given x_T, is sde_sample(probability_flow=True) the mean of sde_sample_law, with variance 0?"""
    x_T = 1.5 * torch.randn((6, 4), generator=_gen(0), dtype=torch.float64)
    mean, var = laws.sde_sample_law(DATA, n_steps, probability_flow=True, x_T=x_T)
    torch.testing.assert_close(sde_sample(DATA.vp_score_fn(), (6, 4), n_steps, probability_flow=True, x_T=x_T), mean,
                               rtol=0, atol=ATOL)
    assert torch.equal(var, torch.zeros_like(var))


def test_one_euler_maruyama_step_from_a_point_is_its_law():
    """Is one reverse_sde_step from a point x, with noise z, mean + √var·z of the one-step law?"""
    x, z = torch.randn((5, 4), generator=_gen(1), dtype=torch.float64), torch.randn((5, 4), generator=_gen(2),
                                                                                    dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    steps = laws.sde_steps(DATA, 1, ts=torch.tensor([0.4], dtype=torch.float64), dt=0.05, noisy_end=True)
    mean, var = laws.affine_chain(laws.point_law(x), steps)
    got, _ = reverse_sde_step(DATA.vp_score_fn(), x, t, 0.05, noise=z)
    torch.testing.assert_close(got, mean + var.sqrt() * z, rtol=0, atol=ATOL)


@pytest.mark.parametrize("n_steps,probability_flow", [(2, False), (10, False), (10, True)])
def test_sde_sample_from_a_drawn_start_has_the_exact_law(n_steps, probability_flow):
    """With x_T ~ N(0, I) drawn by the sampler, are the samples distributed as sde_sample_law says?"""
    samples = sde_sample(DATA.vp_score_fn(), (N, 4), n_steps, probability_flow=probability_flow, generator=_gen(3),
                         x_T=torch.randn((N, 4), generator=_gen(4), dtype=torch.float64))
    assert_matches_law(samples, *laws.sde_sample_law(DATA, n_steps, probability_flow=probability_flow))


def test_many_steps_approach_the_data_law_and_the_variants_differ():
    """Do both samplers' laws approach N(μ, s²) at eps as n grows (first order), and do the mistakes' laws differ?"""
    for pf in (False, True):
        errors = []
        for n in (50, 200, 800):
            mean, var = laws.sde_sample_law(DATA, n, eps=1e-5, probability_flow=pf)
            errors.append(float((var - DATA.var).abs().max() + (mean - DATA.mean).abs().max()))
        assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors
    exact = laws.sde_sample_law(DATA, 10)
    assert torch.equal(laws.sde_sample_variant_law(DATA, 10)[1], exact[1])
    for mistake in ({"x_coef": -0.5}, {"score_coef": 0.5}, {"noisy_end": True}, {"dt": 0.999 / 9},
                    {"beta_of": lambda t: (0.1 + 19.9 * t) / 10}, {"noise_of": lambda b, dt: b.sqrt() * dt}):
        assert not torch.allclose(laws.sde_sample_variant_law(DATA, 10, **mistake)[1], exact[1], rtol=1e-3), mistake


def test_dsm_loss_under_the_exact_score_has_the_closed_form_law():
    """Under the exact score, is dsm_loss's mean over draws of (x₀, z) the closed-form minimum ½ Σ (1 − σ²/v)?

    The sum of the losses is ½ Σ c·χ²₁ (``dsm_loss_weights``): it must lie within the exact Chernoff bounds at 1e-6.
    """
    t = torch.rand(N, generator=_gen(5), dtype=torch.float64) * (1 - 1e-3) + 1e-3
    x0 = DATA.sample(N, _gen(6))
    loss = dsm_loss(DATA.vp_score_fn(), x0, t, noise=torch.randn((N, 4), generator=_gen(7), dtype=torch.float64))
    low, high = laws.weighted_chi2_bounds(laws.dsm_loss_weights(DATA, t), 1e-6)
    assert low <= float(loss.sum()) <= high
    minimum = laws.dsm_loss_minimum(DATA, t)
    torch.testing.assert_close(minimum, 0.5 * laws.dsm_loss_weights(DATA, t).sum(-1))
    assert low <= float(minimum.sum()) <= high


@pytest.mark.parametrize("scale", [0.8, 1.25])
def test_dsm_loss_is_larger_for_other_linear_scores(scale):
    """Is the expected DSM loss of λ·s* larger than of s* (the minimum)? With the same (x₀, z), by far more than noise.

    For s = −A(x − aμ), E w² = σ²A²a²s² + (1 − σ²A)² per coordinate, minimised at A = 1/v (laws.dsm_loss_weights).
    """
    t = torch.full((N,), 0.3, dtype=torch.float64)
    x0, z = DATA.sample(N, _gen(8)), torch.randn((N, 4), generator=_gen(9), dtype=torch.float64)
    best = dsm_loss(DATA.vp_score_fn(), x0, t, noise=z).mean()
    other = dsm_loss(DATA.vp_score_fn(scale=scale), x0, t, noise=z).mean()
    a, n = (c[0] for c in vp_sde_coefficients(t[:1]))
    v = a**2 * DATA.var + n
    A = scale / v
    expected = 0.5 * (n * A**2 * a**2 * DATA.var + (1 - n * A) ** 2).sum()
    torch.testing.assert_close(other, expected, rtol=0.02, atol=0)  # 40,000 draws: ~1% standard error
    assert float(other - best) > 0.05 * float(best)


def test_weighted_chi2_bounds_are_conservative():
    """Are the Chernoff bounds outside scipy's exact χ² quantiles at the same level (equal weights: S = ½χ²_k)?"""
    for k, level in ((1, 1e-3), (16, 1e-6), (4000, 1e-6)):
        low, high = laws.weighted_chi2_bounds(torch.ones(k, dtype=torch.float64), level)
        assert stats.chi2.cdf(2 * low, k) <= level / 2 and stats.chi2.sf(2 * high, k) <= level / 2
    # and not loose where the checks use them (thousands of terms): within 1.3x of the exact quantiles' distances
    assert 2 * high - k <= 1.3 * (stats.chi2.isf(level / 2, k) - k)
    assert k - 2 * low <= 1.3 * (k - stats.chi2.ppf(level / 2, k))
    # unequal weights: a mixture of scales, checked against a 200,000-draw Monte Carlo quantile at 1e-2 (loose: the
    # empirical 5e-3 quantile, 1,000 draws beyond it, has a few % error; the bound must lie beyond it)
    c = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    low, high = laws.weighted_chi2_bounds(c, 1e-2)
    draws = 0.5 * (c * torch.randn((200_000, 50), generator=_gen(10), dtype=torch.float64) ** 2).sum(-1)
    assert low < float(draws.quantile(5e-3)) and high > float(draws.quantile(1 - 5e-3))
