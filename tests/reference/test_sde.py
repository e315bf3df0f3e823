"""Does reference.sde follow score_sde's VP SDE (restated) and diffusers' ScoreSdeVpScheduler?

score_sde (github.com/yang-song/score_sde, JAX; its PyTorch twin score_sde_pytorch) is restated here from its
source, not imported: ``sde_lib.VPSDE.sde`` / ``marginal_prob`` / ``reverse``, ``losses.get_sde_loss_fn`` and
``sampling.EulerMaruyamaPredictor``. diffusers' ``ScoreSdeVpScheduler`` (deprecated, installed) implements the same
Euler–Maruyama step and the same t-grid and dt = 1/N. Output laws on Gaussian data are in test_sde_laws.py.

Tolerances: a restated float64 formula differs from the reference by a re-ordering of a handful of operations on
values ≤ ~100 (β ≤ 20, scores ≤ ~50): ≤ ~10·100·1.1e-16 ≈ 1e-13, so ``ATOL = 1e-12``; a wrong coefficient moves
values by ≳ 1e-3. diffusers computes in float32 (its timesteps are float32): compared in float32 at 1e-5 relative
(a few float32 roundings of values ≤ 100 over ≤ 20 steps, each ≤ ~10·u ≈ 6e-7 relative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference.q_sampler import compute_alphas_cumprod, linear_beta_schedule
from reference.sde import dsm_loss, probability_flow_step, reverse_sde_step, sde_sample, vp_beta, vp_marginal
from reference.toy import GaussianData, vp_sde_coefficients

ATOL = 1e-12  # float64 re-ordering budget (module docstring)
B0, B1 = 0.1, 20.0


def _randn(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _data(d: int = 3) -> GaussianData:
    return GaussianData(torch.linspace(-1, 1.5, d, dtype=torch.float64), torch.linspace(0.05, 2.0, d, dtype=torch.float64))


class ScoreSdeVPSDE:
    """score_sde's sde_lib.VPSDE, restated (PyTorch twin): sde, marginal_prob and the reverse SDE's sde."""

    def __init__(self, beta_min=0.1, beta_max=20.0, N=1000):
        self.beta_0, self.beta_1, self.N = beta_min, beta_max, N

    def sde(self, x, t):
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        drift = -0.5 * beta_t.reshape(-1, *([1] * (x.ndim - 1))) * x
        diffusion = torch.sqrt(beta_t)
        return drift, diffusion

    def marginal_prob(self, x, t):
        log_mean_coeff = -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        mean = torch.exp(log_mean_coeff).reshape(-1, *([1] * (x.ndim - 1))) * x
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff))
        return mean, std

    def reverse_sde(self, score_fn, x, t, probability_flow=False):
        drift, diffusion = self.sde(x, t)
        score = score_fn(x, t)
        drift = drift - diffusion.reshape(-1, *([1] * (x.ndim - 1))) ** 2 * score * (0.5 if probability_flow else 1.0)
        return drift, (0.0 * diffusion if probability_flow else diffusion)

    def euler_maruyama(self, score_fn, x, t, z, probability_flow=False):
        """sampling.EulerMaruyamaPredictor.update_fn, with the noise z given."""
        dt = -1.0 / self.N
        drift, diffusion = self.reverse_sde(score_fn, x, t, probability_flow)
        x_mean = x + drift * dt
        return x_mean + diffusion.reshape(-1, *([1] * (x.ndim - 1))) * np.sqrt(-dt) * z, x_mean

    def sde_loss(self, score_fn, x0, t, z):
        """losses.get_sde_loss_fn(reduce_mean=False, continuous=True, likelihood_weighting=False), per sample."""
        mean, std = self.marginal_prob(x0, t)
        perturbed = mean + std.reshape(-1, *([1] * (x0.ndim - 1))) * z
        score = score_fn(perturbed, t)
        losses = torch.square(score * std.reshape(-1, *([1] * (x0.ndim - 1))) + z)
        return 0.5 * torch.sum(losses.reshape(losses.shape[0], -1), dim=-1)


def test_vp_beta_and_marginal_are_score_sdes():
    """Are β(t) and (mean_coef, std) score_sde's VPSDE.sde and marginal_prob, and std² = 1 − mean_coef²?"""
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    sde = ScoreSdeVPSDE(B0, B1)
    _, diffusion = sde.sde(torch.zeros(5, 1, dtype=torch.float64), t)
    torch.testing.assert_close(vp_beta(t), diffusion**2, rtol=0, atol=ATOL)
    mean_coef, std = vp_marginal(t)
    mean, std_sde = sde.marginal_prob(torch.ones(5, 1, dtype=torch.float64), t)
    torch.testing.assert_close(mean_coef, mean[:, 0], rtol=0, atol=ATOL)
    torch.testing.assert_close(std, std_sde, rtol=0, atol=ATOL)
    # the exact marginal: mean_coef = exp(−½∫₀ᵗβ), by the trapezoid rule on 10⁵ intervals (error ~1e-9)
    s = torch.linspace(0, 0.5, 100_001, dtype=torch.float64)
    torch.testing.assert_close(mean_coef[3], torch.exp(-0.5 * torch.trapezoid(vp_beta(s), s)), rtol=1e-8, atol=0)
    # other parameters, and the toy's independent copy (the student's process loads reference/toy.py alone)
    mean_coef, std = vp_marginal(t, 0.5, 7.0)
    a, n = vp_sde_coefficients(t, 0.5, 7.0)
    torch.testing.assert_close(mean_coef, a, rtol=1e-14, atol=0)
    torch.testing.assert_close(std**2, n, rtol=1e-9, atol=0)  # 1 − m² vs −expm1: ≤ u/σ² ≈ 1e-11 relative at 1e-5


def test_vp_sde_is_the_limit_of_ddpms_linear_schedule():
    """Is ᾱ of DDPM's linear schedule (T = 1000, β from 1e-4 to 0.02) the VP SDE's mean_coef² at t = (i + 1)/T?

    β_i = β(t_i)/T up to the schedule's endpoints, and log(1 − β) = −β − β²/2 − …: the two differ by
    ½ Σ β_i² ≲ 1.4e-4·… in log ᾱ, so 2e-3 relative on ᾱ where ᾱ ≥ 1e-3 (measured: ≤ 1e-3).
    """
    ac = compute_alphas_cumprod(linear_beta_schedule(1000))
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    mean_coef, _ = vp_marginal(t)
    keep = ac > 1e-3
    torch.testing.assert_close(mean_coef[keep] ** 2, ac[keep], rtol=2e-2, atol=1e-4)


def test_dsm_loss_is_score_sdes_sde_loss():
    """Is dsm_loss per sample score_sde's loss with reduce_mean=False and no likelihood weighting?"""
    data, x0, z = _data(), _randn((6, 3), 0), _randn((6, 3), 1)
    t = torch.tensor([1e-3, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    score = data.vp_score_fn(B0, B1, scale=0.7)  # any score: not the optimum, so every term matters
    torch.testing.assert_close(dsm_loss(score, x0, t, noise=z), ScoreSdeVPSDE().sde_loss(score, x0, t, z), rtol=1e-12,
                               atol=ATOL)
    # image-shaped data: the sum runs over every non-batch dimension
    x0, z = _randn((6, 2, 3, 3), 2), _randn((6, 2, 3, 3), 3)
    img = GaussianData(torch.zeros(2, 3, 3, dtype=torch.float64), torch.ones(2, 3, 3, dtype=torch.float64))
    score = img.vp_score_fn(scale=1.3)
    torch.testing.assert_close(dsm_loss(score, x0, t, noise=z), ScoreSdeVPSDE().sde_loss(score, x0, t, z), rtol=1e-12,
                               atol=ATOL)
    # with the exact score the residual std·s + z is −σa(x₀ − μ)/v + (1 − σ²/v)·z (test_sde_laws.py has the law)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_steps_are_score_sdes_euler_maruyama(probability_flow):
    """Are reverse_sde_step and probability_flow_step score_sde's EulerMaruyamaPredictor (with dt = 1/N)?"""
    data, x, z = _data(), _randn((5, 3), 4), _randn((5, 3), 5)
    t = torch.tensor([1.0, 0.7, 0.3, 0.01, 1e-3], dtype=torch.float64)
    score, sde = data.vp_score_fn(B0, B1), ScoreSdeVPSDE(B0, B1, N=37)
    x_sde, mean_sde = sde.euler_maruyama(score, x, t, z, probability_flow)
    if probability_flow:
        torch.testing.assert_close(probability_flow_step(score, x, t, 1 / 37), x_sde, rtol=0, atol=ATOL)
    else:
        got, got_mean = reverse_sde_step(score, x, t, 1 / 37, noise=z)
        torch.testing.assert_close(got, x_sde, rtol=0, atol=ATOL)
        torch.testing.assert_close(got_mean, mean_sde, rtol=0, atol=ATOL)


def _diffusers_scheduler(n_steps: int, eps: float = 1e-3):
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    scheduler = ScoreSdeVpScheduler(beta_min=B0, beta_max=B1, sampling_eps=eps)
    scheduler.set_timesteps(n_steps)
    return scheduler


def _as_diffusers_output(score_fn, x, t):
    """diffusers' step_pred takes a noise prediction and forms score = −output/std: give it −std·s."""
    _, std = vp_marginal(t.to(torch.float64))
    return -std.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * score_fn(x, t)


def test_reverse_sde_step_is_diffusers_step_pred():
    """Is reverse_sde_step (dt = 1/N) diffusers' ScoreSdeVpScheduler.step_pred, noise drawn from the same generator?"""
    data, x = _data(), _randn((4, 3), 6, torch.float32)
    score, scheduler = data.vp_score_fn(B0, B1), _diffusers_scheduler(20)
    for t in (1.0, 0.4, 0.05):
        t_batch = torch.full((4,), t, dtype=torch.float32)
        expected = scheduler.step_pred(_as_diffusers_output(score, x, t_batch), x, t_batch,
                                       generator=torch.Generator().manual_seed(7))
        got = reverse_sde_step(score, x, t_batch, 1 / 20, generator=torch.Generator().manual_seed(7))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_steps", [1, 5, 20])
def test_sde_sample_is_diffusers_loop(n_steps):
    """Is sde_sample diffusers' ScoreSdeVp loop (timesteps linspace(1, eps, N), step_pred, x_mean at the end)?"""
    data, x_T = _data(), _randn((8, 3), 8)
    score, scheduler = data.vp_score_fn(B0, B1), _diffusers_scheduler(n_steps)
    # diffusers' timesteps are linspace(1, eps, N) made in float32; the loop is then run in float64 on the same
    # grid made in float64 (float32 times would make the comparison one of float32 round-off, ~1e-4 at t = eps)
    grid = torch.linspace(1.0, 1e-3, n_steps, dtype=torch.float64)
    torch.testing.assert_close(scheduler.timesteps, grid.float(), rtol=0, atol=1e-7)
    scheduler.timesteps = grid
    g, x, x_mean = torch.Generator().manual_seed(9), x_T, x_T
    for t in scheduler.timesteps:
        t_batch = torch.full((8,), float(t), dtype=torch.float64)
        x, x_mean = scheduler.step_pred(_as_diffusers_output(score, x, t_batch), x, t_batch, generator=g)
    got = sde_sample(score, (8, 3), n_steps, x_T=x_T, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, x_mean, rtol=1e-10, atol=1e-10)  # −std·s then /std: a few u, ×N steps


def test_sde_sample_draws_its_start_then_one_noise_per_step():
    """Without x_T, is x_T = randn(shape, generator) in the default dtype, then one draw per SDE step, none for the ODE?"""
    data = GaussianData(*(v.float() for v in (_data().mean, _data().var)))  # the model in the samples' dtype
    score = data.vp_score_fn()
    twin = torch.Generator().manual_seed(3)
    x = torch.randn((4, 3), generator=twin, dtype=torch.get_default_dtype())
    for t in torch.linspace(1.0, 1e-3, 6, dtype=torch.float64).tolist():
        x, x_mean = reverse_sde_step(score, x, torch.full((4,), t), 1 / 6, noise=torch.randn(x.shape, generator=twin))
    got = sde_sample(score, (4, 3), 6, generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, x_mean, rtol=0, atol=1e-6)
    ode = sde_sample(score, (4, 3), 6, probability_flow=True, generator=torch.Generator().manual_seed(3))
    x = torch.randn((4, 3), generator=torch.Generator().manual_seed(3))
    for t in torch.linspace(1.0, 1e-3, 6, dtype=torch.float64).tolist():
        x = probability_flow_step(score, x, torch.full((4,), t), 1 / 6)
    torch.testing.assert_close(ode, x, rtol=0, atol=1e-6)


def test_float32_matches_float64_and_dtypes_follow():
    """Does each function keep its input's dtype, and does float32 agree with float64 to float32 round-off?"""
    data, x, z = _data(), _randn((5, 3), 10), _randn((5, 3), 11)
    t = torch.tensor([1.0, 0.5, 0.1, 0.01, 1e-3], dtype=torch.float64)

    def score(x, t):  # the exact score evaluated in x's dtype, as the grader's models are
        return GaussianData(data.mean.to(x.dtype), data.var.to(x.dtype)).vp_score_fn()(x, t)

    pairs = [
        (lambda x, z, t: vp_marginal(t), 1e-3),  # 1 − m² in float32 near t = 1e-3: ~u/σ² ≈ 3e-5 relative
        (lambda x, z, t: dsm_loss(score, x, t, noise=z), 1e-4),
        (lambda x, z, t: reverse_sde_step(score, x, t, 0.05, noise=z), 1e-5),
        (lambda x, z, t: probability_flow_step(score, x, t, 0.05), 1e-5),
        (lambda x, z, t: sde_sample(score, x.shape, 7, probability_flow=True, x_T=x), 1e-4),
    ]
    for fn, rtol in pairs:
        hi, lo = fn(x, z, t), fn(x.float(), z.float(), t.float())
        for a, b in zip(hi if isinstance(hi, tuple) else (hi,), lo if isinstance(lo, tuple) else (lo,)):
            assert a.dtype == torch.float64 and b.dtype == torch.float32
            torch.testing.assert_close(b.double(), a, rtol=rtol, atol=rtol)


def test_meta_device():
    """Do the functions run on PyTorch's meta device (no tensor made on the CPU inside) and keep it?"""
    meta = torch.device("meta")
    x, t = torch.empty(4, 3, device=meta), torch.empty(4, device=meta)
    data = GaussianData(torch.zeros(3, device=meta), torch.ones(3, device=meta))
    score = lambda x, t: data.score(x, *vp_sde_coefficients(t))  # noqa: E731  (the toy's float64 cast is CPU-free)
    outs = [vp_beta(t), *vp_marginal(t), dsm_loss(score, x, t, noise=x), *reverse_sde_step(score, x, t, 0.1, noise=x),
            probability_flow_step(score, x, t, 0.1), sde_sample(score, (4, 3), 3, x_T=x),
            sde_sample(score, (4, 3), 3, probability_flow=True, x_T=x)]
    assert all(o.device == meta for o in outs)
    assert sde_sample(score, (4, 3), 3, x_T=x).shape == (4, 3)
    assert math.isclose(float(vp_beta(torch.tensor(0.5, dtype=torch.float64))), 10.05, rel_tol=1e-15)
