"""Tests of reference.q_sampler: the schedules, q(x_t | x_0), q(x_t | x_{t−1}) and the posterior.

Two kinds of oracle: diffusers' DDPMScheduler (the field's implementation of the same
schedules and of the posterior step), and identities restated independently of the
reference's formulas (iterating the one-step kernel gives the marginal; Bayes' rule
gives the posterior by completing the square).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference.q_sampler import (
    compute_alphas_cumprod,
    cosine_beta_schedule,
    linear_beta_schedule,
    posterior_coefficients,
    q_posterior,
    q_sample,
    q_step,
)

T = 1000
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=40)
SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}


def _scheduler(beta_schedule: str, T: int = T):
    diffusers = pytest.importorskip("diffusers")  # a test dependency; skip, not fail, without it
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule=beta_schedule, clip_sample=False, prediction_type="sample"
    )
    scheduler.set_timesteps(T)  # so that step(t) goes to t − 1
    return scheduler


# -- Schedules -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ours", "theirs"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedules_equal_diffusers(ours, theirs):
    """Are our float64 β the same schedules as diffusers' (which rounds them to float32)?"""
    betas = SCHEDULES[ours](T)
    expected = _scheduler(theirs).betas
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    # diffusers computes in float64 (cosine: Python floats) and rounds once to float32: ≤ ½ ulp.
    torch.testing.assert_close(betas.float(), expected, rtol=torch.finfo(torch.float32).eps, atol=0)


def test_linear_schedule_ends_where_asked():
    betas = linear_beta_schedule(10, beta_start=0.1, beta_end=0.2)
    assert betas[0] == 0.1 and betas[-1] == 0.2
    assert torch.allclose(betas.diff(), torch.full((9,), 0.1 / 9, dtype=torch.float64))


@pytest.mark.parametrize("T", [1, 2, 50, 1000, 4000])
def test_cosine_schedule_is_capped_increasing_and_tracks_its_alpha_bar(T):
    """β in (0, max_beta], nondecreasing, and ᾱ_t = f(t + 1)/f(0) wherever the cap is not reached."""
    betas = cosine_beta_schedule(T)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (betas.diff() >= 0).all()

    def f(u):  # Nichol & Dhariwal eq. 17
        return math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2

    alpha_bar = compute_alphas_cumprod(betas)
    uncapped = int((betas < 0.999).sum())  # the cap can only bind at the end
    for t in range(uncapped):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert cosine_beta_schedule(T, max_beta=0.5).max() <= 0.5


def test_cumprod_keeps_dtype_and_device_of_the_betas():
    betas = linear_beta_schedule(20).float()
    alpha_bar = compute_alphas_cumprod(betas)
    assert alpha_bar.dtype == torch.float32 and alpha_bar.device == betas.device
    assert torch.allclose(alpha_bar.double(), torch.tensor([math.prod(1 - b for b in betas.double().tolist()[: t + 1])
                                                            for t in range(20)], dtype=torch.float64), rtol=1e-6)


# -- q(x_t | x_0) as the iterated one-step kernel -----------------------------------------------

@PROPERTY
@given(schedule=st.sampled_from(sorted(SCHEDULES)), t=st.integers(0, 59), seed=st.integers(0, 2**31 - 1))
@example(schedule="cosine", t=59, seed=0)
@example(schedule="linear", t=0, seed=0)
def test_iterating_q_step_gives_the_marginal_of_q_sample(schedule, t, seed):
    """x_t after t + 1 steps of q_step is linear in (x₀, ε_0..ε_t): its x₀ coefficient must be √ᾱ_t and
    its noise variance Σ_s c_s² = 1 − ᾱ_t — which is what q_sample draws (Ho et al. eq. 4 from eq. 2)."""
    betas = SCHEDULES[schedule](60)
    alpha_bar = compute_alphas_cumprod(betas)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=g)
    noises = torch.randn(t + 1, 3, 2, dtype=torch.float64, generator=g)
    x = x0
    for s in range(t + 1):
        x = q_step(x, torch.full((3,), s), betas, noise=noises[s])
    # The same chain with unit noise at one step s only gives the coefficient c_s of ε_s.
    coefficients = []
    for s in range(t + 1):
        y = torch.zeros(1, dtype=torch.float64)
        for r in range(t + 1):
            y = q_step(y, torch.tensor([r]), betas, noise=torch.full((1,), float(r == s), dtype=torch.float64))
        coefficients.append(y.item())
    c = torch.tensor(coefficients, dtype=torch.float64)
    torch.testing.assert_close(x, alpha_bar[t].sqrt() * x0 + torch.einsum("s,sbd->bd", c, noises))
    assert (c**2).sum().item() == pytest.approx(1 - alpha_bar[t].item(), rel=1e-10, abs=1e-15)
    # q_sample with the combined noise ε = Σ c_s ε_s / √(1 − ᾱ_t) (a unit Gaussian) reproduces x exactly.
    eps = torch.einsum("s,sbd->bd", c, noises) / (1 - alpha_bar[t]).sqrt()
    torch.testing.assert_close(q_sample(x0, torch.full((3,), t), alpha_bar, noise=eps), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4,), (4, 3), (4, 1, 2, 3)])
def test_q_sample_and_q_step_keep_dtype_shape_and_broadcast_per_sample(dtype, shape):
    alpha_bar = compute_alphas_cumprod(linear_beta_schedule(T))
    t = torch.tensor([0, 1, 500, T - 1])
    x0 = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for out in (q_sample(x0, t, alpha_bar, noise=eps), q_step(x0, t, linear_beta_schedule(T), noise=eps)):
        assert out.dtype == dtype and out.shape == shape
    out = q_sample(x0, t, alpha_bar, noise=eps)
    for b in range(4):  # each sample uses its own timestep
        expected = alpha_bar[t[b]].sqrt() * x0[b].double() + (1 - alpha_bar[t[b]]).sqrt() * eps[b].double()
        torch.testing.assert_close(out[b].double(), expected, rtol=4 * torch.finfo(dtype).eps, atol=1e-30)


def test_q_sample_without_noise_draws_from_the_global_generator():
    alpha_bar = compute_alphas_cumprod(linear_beta_schedule(T))
    x0, t = torch.ones(2, 3), torch.tensor([10, 900])
    torch.manual_seed(5)
    first = q_sample(x0, t, alpha_bar)
    torch.manual_seed(5)
    torch.testing.assert_close(q_sample(x0, t, alpha_bar), first)
    torch.manual_seed(5)
    torch.testing.assert_close(first, q_sample(x0, t, alpha_bar, noise=torch.randn(2, 3)))


# -- The posterior ------------------------------------------------------------------------------

@PROPERTY
@given(schedule=st.sampled_from(sorted(SCHEDULES)), t=st.integers(1, T - 1), seed=st.integers(0, 2**31 - 1))
@example(schedule="linear", t=1, seed=0)
@example(schedule="cosine", t=T - 1, seed=0)
def test_posterior_is_bayes_rule_by_completing_the_square(schedule, t, seed):
    """q(x_{t−1} | x_t, x₀) ∝ N(x_t; √α_t x_{t−1}, β_t) · N(x_{t−1}; √ᾱ_{t−1} x₀, 1 − ᾱ_{t−1}):
    precision α_t/β_t + 1/(1 − ᾱ_{t−1}), mean (√α_t x_t/β_t + √ᾱ_{t−1} x₀/(1 − ᾱ_{t−1})) / precision."""
    betas = SCHEDULES[schedule](T)
    alpha_bar = compute_alphas_cumprod(betas)
    g = torch.Generator().manual_seed(seed)
    x0, xt = torch.randn(2, 2, 3, dtype=torch.float64, generator=g)
    tt = torch.full((2,), t)
    mean, variance, log_variance = q_posterior(x0, xt, tt, betas)
    beta, alpha, prev = betas[t], 1 - betas[t], alpha_bar[t - 1]
    precision = alpha / beta + 1 / (1 - prev)
    torch.testing.assert_close(variance, torch.full_like(xt, 1 / precision.item()), rtol=1e-10, atol=0)
    torch.testing.assert_close(log_variance, variance.log(), rtol=1e-10, atol=1e-12)
    expected_mean = (alpha.sqrt() * xt / beta + prev.sqrt() * x0 / (1 - prev)) / precision
    torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-12)


def test_posterior_at_t0_is_the_data_with_a_clipped_log_variance():
    betas = linear_beta_schedule(T)
    x0, xt = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, variance, log_variance = q_posterior(x0, xt, torch.zeros(3, dtype=torch.long), betas)
    torch.testing.assert_close(mean, x0)
    assert (variance == 0).all()
    # improved-diffusion: log β̃_0 (= −∞) is replaced by log β̃_1, so the L_0 term stays finite.
    torch.testing.assert_close(log_variance, torch.full_like(x0, posterior_coefficients(betas)["posterior_variance"][1].log().item()))


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("t", [1, 2, 500, T - 1])
def test_posterior_sample_equals_diffusers_ddpm_step(beta_schedule, t):
    """DDPMScheduler.step with an x₀-prediction draws μ̃_t + √β̃_t·z: with diffusers' own β (float32,
    upcast exactly) and the same z, our posterior gives the same x_{t−1} up to diffusers' float32 ᾱ."""
    scheduler = _scheduler(beta_schedule)
    betas = scheduler.betas.double()
    g = torch.Generator().manual_seed(t)
    x0, xt = torch.randn(2, 4, 3, generator=g, dtype=torch.float64).float().double()
    mean, variance, _ = q_posterior(x0, xt, torch.full((4,), t), betas)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(99))
    theirs = scheduler.step(x0.float(), t, xt.float(), generator=torch.Generator().manual_seed(99)).prev_sample
    ours = mean + variance.sqrt() * z.double()
    # diffusers' ᾱ is a float32 cumprod; its error against the exact cumprod of the same β is measured
    # here, Δ = max(|Δᾱ_t|, |Δᾱ_{t−1}|). To first order the coefficients then move relatively by:
    # β√ᾱ_{t−1}/(1 − ᾱ_t) ≤ Δ/(2ᾱ_{t−1}) + Δ/(1 − ᾱ_t); (1 − ᾱ_{t−1})√α_t/(1 − ᾱ_t) and β̃_t ≤
    # Δ/(1 − ᾱ_{t−1}) + Δ/(1 − ᾱ_t) (√β̃_t half that): large at t = 1, where 1 − ᾱ_0 = β_0 = 1e-4.
    # Twice that, plus 8 float32 ulps of each term for diffusers' own arithmetic.
    eps32 = torch.finfo(torch.float32).eps
    exact = compute_alphas_cumprod(betas)
    delta = (scheduler.alphas_cumprod.double() - exact)[t - 1 : t + 1].abs().max()
    a, p = exact[t], exact[t - 1]
    c = posterior_coefficients(betas)
    terms = [
        (c["posterior_mean_coef1"][t] * x0).abs() * (delta / (2 * p) + delta / (1 - a)),
        (c["posterior_mean_coef2"][t] * xt).abs() * (delta / (1 - p) + delta / (1 - a)),
        (variance.sqrt() * z.double()).abs() * (delta / (1 - p) + delta / (1 - a)) / 2,
    ]
    bound = 2 * sum(terms) + 8 * eps32 * (x0.abs() + xt.abs() + z.abs().double())
    assert ((ours - theirs.double()).abs() <= bound).all(), ((ours - theirs.double()).abs() / bound).max()
    # Not vacuous: the bound is a few thousandths at t ≤ 2 and below 1e-5 from t = 500.
    assert bound.max() < (5e-3 if t < 10 else 1e-5)
