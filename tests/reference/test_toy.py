"""Tests of reference.toy: the analytic toy problems every sampler check relies on.

The exact predictors are checked against quantities computed another way: the score
against autograd of the log-density of the noised marginal (written with
torch.distributions, not with the module's formulas), E[x₀ | x] against Tweedie's
formula E[a·x₀ | x] = x + n·∇log p(x), the mixture's responsibilities against Bayes'
rule, and the samplers of the data against their moments.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule
from reference.toy import GaussianData, GaussianMixture, vp_coefficients

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=30)


def _mixture(seed: int, K: int = 3, D: tuple = (2,)) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(
        weights=weights / weights.sum(),
        means=3 * torch.randn(K, *D, generator=g, dtype=torch.float64),
        vars=0.05 + torch.rand(K, *D, generator=g, dtype=torch.float64),
    )


def _noised_law(data, a: float, n: float):
    """The law of a·x₀ + √n·z as a torch.distributions object over the flattened data."""
    if isinstance(data, GaussianData):
        return Independent(Normal(a * data.mean.flatten(), (a**2 * data.var.flatten() + n).sqrt()), 1)
    components = Independent(Normal(a * data.means.flatten(1), (a**2 * data.vars.flatten(1) + n).sqrt()), 1)
    return MixtureSameFamily(Categorical(probs=data.weights), components)


def _autograd_score(data, x: torch.Tensor, a: float, n: float) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    _noised_law(data, a, n).log_prob(x.flatten(1)).sum().backward()
    return x.grad


noise_levels = st.tuples(st.floats(0.05, 1.0), st.floats(1e-3, 4.0))  # (a, n)


@PROPERTY
@given(levels=noise_levels, seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(2,), (1, 2, 3)]))
def test_scores_are_the_gradient_of_the_noised_log_density(levels, seed, shape):
    a, n = levels
    g = torch.Generator().manual_seed(seed)
    gaussian = GaussianData(torch.randn(shape, generator=g, dtype=torch.float64),
                            0.01 + torch.rand(shape, generator=g, dtype=torch.float64))
    for data in (gaussian, _mixture(seed, D=shape)):
        x = 2 * torch.randn(5, *shape, generator=g, dtype=torch.float64)
        score = data.score(x, torch.full((5,), a, dtype=torch.float64), torch.full((5,), n, dtype=torch.float64))
        torch.testing.assert_close(score, _autograd_score(data, x, a, n), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(levels=noise_levels, seed=st.integers(0, 2**31 - 1))
def test_denoisers_satisfy_tweedie(levels, seed):
    """E[x₀ | x] = (x + n·∇log p(x)) / a for x = a·x₀ + √n·z (Tweedie's formula)."""
    a, n = levels
    g = torch.Generator().manual_seed(seed)
    gaussian = GaussianData(torch.randn(3, generator=g, dtype=torch.float64),
                            0.01 + torch.rand(3, generator=g, dtype=torch.float64))
    for data in (gaussian, _mixture(seed, D=(3,))):
        x = 2 * torch.randn(6, 3, generator=g, dtype=torch.float64)
        tweedie = (x + n * _autograd_score(data, x, a, n)) / a
        a_batch, n_batch = torch.full((6,), a, dtype=torch.float64), torch.full((6,), n, dtype=torch.float64)
        torch.testing.assert_close(data.denoise(x, a_batch, n_batch), tweedie, rtol=1e-9, atol=1e-9)
        # The optimal ε is E[z | x] = (x − a·E[x₀ | x]) / √n.
        torch.testing.assert_close(data.eps(x, a_batch, n_batch), (x - a * tweedie) / n**0.5, rtol=1e-9, atol=1e-9)


def test_mixture_responsibilities_are_bayes_rule():
    data = _mixture(7, K=4, D=(2, 2))
    x = torch.randn(8, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, n = torch.full((8,), 0.6, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    components = Independent(Normal(0.6 * data.means.flatten(1), (0.36 * data.vars.flatten(1) + 0.5).sqrt()), 1)
    log_joint = components.log_prob(x.flatten(1).unsqueeze(1)) + data.weights.log()  # (B, K)
    torch.testing.assert_close(data.responsibilities(x, a, n), torch.softmax(log_joint, dim=1).T)


def test_a_one_component_mixture_is_gaussian_data():
    mean, var = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.2, 2.0], dtype=torch.float64)
    gaussian = GaussianData(mean, var)
    mixture = GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], var[None])
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, n = torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64), torch.tensor([1e-3, 0.19, 0.75, 0.99])
    for method in ("score", "denoise", "eps"):
        torch.testing.assert_close(getattr(mixture, method)(x, a, n), getattr(gaussian, method)(x, a, n))


def test_eps_model_and_score_fn_use_the_vp_and_ve_coefficients():
    data = _mixture(3)
    alphas_cumprod = compute_alphas_cumprod(cosine_beta_schedule(100))
    t = torch.tensor([0, 50, 99])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, n = vp_coefficients(t, alphas_cumprod)
    torch.testing.assert_close(a, alphas_cumprod[t].sqrt())
    torch.testing.assert_close(n, 1 - alphas_cumprod[t])
    torch.testing.assert_close(data.eps_model(alphas_cumprod)(x, t), data.eps(x, a, n))
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(data.score_fn()(x, sigma), data.score(x, torch.ones(3, dtype=torch.float64), sigma**2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predictors_keep_the_data_dtype(dtype):
    """With the problem's parameters in x's dtype (as the grader builds them), so are the predictions."""
    mixture = _mixture(1)
    data = GaussianMixture(mixture.weights, mixture.means.to(dtype), mixture.vars.to(dtype))
    x = torch.randn(3, 2, dtype=dtype)
    a, n = torch.full((3,), 0.5), torch.full((3,), 0.75)
    for method in ("score", "denoise", "eps"):
        assert getattr(data, method)(x, a, n).dtype == dtype


def test_samples_have_the_data_moments_and_mixture_weights():
    """Moments of 40 000 draws within 6 standard errors (each check fails with probability < 2e-9)."""
    gaussian = GaussianData(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.25, 4.0], dtype=torch.float64))
    x = gaussian.sample(40_000, torch.Generator().manual_seed(0))
    se_mean = (gaussian.var / 40_000).sqrt()
    assert ((x.mean(0) - gaussian.mean).abs() < 6 * se_mean).all()
    se_var = gaussian.var * (2 / 40_000) ** 0.5
    assert ((x.var(0) - gaussian.var).abs() < 6 * se_var).all()
    mixture = _mixture(4)
    x, k = mixture.sample(40_000, torch.Generator().manual_seed(1))
    frequency = torch.bincount(k, minlength=3).double() / 40_000
    se = (mixture.weights * (1 - mixture.weights) / 40_000).sqrt()
    assert ((frequency - mixture.weights).abs() < 6 * se).all()
    for j in range(3):  # each draw comes from the component it is labelled with
        z = (x[k == j] - mixture.means[j]) / mixture.vars[j].sqrt()
        assert (z.mean(0).abs() < 6 / len(z) ** 0.5).all()
