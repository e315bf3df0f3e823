"""Does reference.langevin follow Song & Ermon (2019) and score_sde's VE predictor–corrector conventions?

These are the deterministic checks (injected noise, replayed generators); the
output laws on Gaussian data are checked in test_laws.py.

Tolerances: every comparison below recomputes the same float64 formula in a
different order, a handful of operations on values of size ≤ 100, so the
difference is ≤ ~10 · 100 · 1.1e-16 ≈ 1e-13; ``atol=1e-12`` is that budget,
far below the ≳ 1e-3 any wrong coefficient would cause.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference.langevin import (
    annealed_langevin_dynamics,
    langevin_corrector,
    langevin_dynamics,
    pc_sample,
    reverse_diffusion_predictor,
    ve_sigmas,
)

ATOL = 1e-12  # float64 re-ordering budget, see the module docstring


def _randn(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The VE score of N(1, 0.5²) data: −(x − 1)/(0.25 + σ²), σ a ``(B,)`` tensor."""
    assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype, "score_fn must get σ as a float (B,) tensor"
    return -(x - 1) / (0.25 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def test_ve_sigmas_are_descending_geometric_float64():
    """Does ve_sigmas run from sigma_max down to sigma_min with a constant ratio, in float64?"""
    sigmas = ve_sigmas(0.01, 50.0, 11)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (11,)
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([50.0, 0.01], dtype=torch.float64), rtol=1e-14, atol=0)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.01 / 50.0) ** 0.1), rtol=1e-13, atol=0)


def test_langevin_dynamics_draws_one_noise_per_step_from_the_generator():
    """Is langevin_dynamics x ← x + (α/2)·∇log p(x) + √α·z with z = torch.randn(x.shape, generator) each step?"""
    x0 = _randn((5, 3), 0)
    score = lambda x: -(x - 2) / 0.3  # noqa: E731
    actual = langevin_dynamics(score, x0, 0.01, 4, generator=torch.Generator().manual_seed(1))
    twin, x = torch.Generator().manual_seed(1), x0
    for _ in range(4):
        x = x + 0.005 * score(x) + 0.1 * torch.randn(x.shape, generator=twin, dtype=x.dtype)
    torch.testing.assert_close(actual, x, rtol=0, atol=ATOL)
    assert torch.equal(langevin_dynamics(score, x0, 0.01, 0), x0)


def test_annealed_langevin_is_langevin_per_level_with_scaled_steps():
    """Is annealed_langevin_dynamics, level by level, langevin_dynamics with α_i = step_lr·(σ_i/σ_L)² and s(·, σ_i)?"""
    sigmas = ve_sigmas(0.1, 2.0, 3)
    x0 = _randn((4, 2), 3)
    actual = annealed_langevin_dynamics(_score, x0, sigmas, 1e-3, 2, generator=torch.Generator().manual_seed(4))
    twin, x = torch.Generator().manual_seed(4), x0
    for sigma in sigmas:
        sigma_batch = torch.full((4,), float(sigma), dtype=torch.float64)
        x = langevin_dynamics(lambda y: _score(y, sigma_batch), x, 1e-3 * float(sigma / sigmas[-1]) ** 2, 2, twin)
    torch.testing.assert_close(actual, x, rtol=0, atol=ATOL)


@pytest.mark.parametrize("sigma_next", [0.7, 0.0])
def test_reverse_diffusion_predictor_matches_the_ve_formula(sigma_next):
    """Is x_mean = x + (σ² − σ′²)·s(x, σ) and x = x_mean + √(σ² − σ′²)·z, also for the last step σ′ = 0?"""
    x, z = _randn((6, 2, 2), 5), _randn((6, 2, 2), 6)
    out, out_mean = reverse_diffusion_predictor(_score, x, 1.3, sigma_next, noise=z)
    g2 = 1.3**2 - sigma_next**2
    expected_mean = x + g2 * _score(x, torch.full((6,), 1.3, dtype=torch.float64))
    torch.testing.assert_close(out_mean, expected_mean, rtol=0, atol=ATOL)
    torch.testing.assert_close(out, expected_mean + math.sqrt(g2) * z, rtol=0, atol=ATOL)


def _score_sde_langevin_corrector(score, x, noise, snr):
    """A transcription of score_sde's LangevinCorrector.update_fn (VE, α = 1), noise injected."""
    grad_norm = torch.norm(score.reshape(score.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step_size = (snr * noise_norm / grad_norm) ** 2 * 2
    x_mean = x + step_size * score
    return x_mean + torch.sqrt(step_size * 2) * noise, x_mean


def test_langevin_corrector_matches_score_sde():
    """Is langevin_corrector score_sde's step: ε = 2(snr·mean‖z‖/mean‖s‖)², per-sample norms averaged over the batch?"""
    # Samples at very different distances from the mode: the batch mean of norms differs from the
    # norm over the whole batch / √B by ~20%, so the per-sample convention is really exercised.
    x = _randn((5, 3, 2), 7) * torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5], dtype=torch.float64).reshape(5, 1, 1)
    z = _randn((5, 3, 2), 8)
    sigma = torch.full((5,), 0.4, dtype=torch.float64)
    out, out_mean = langevin_corrector(_score, x, 0.4, 0.16, noise=z)
    expected, expected_mean = _score_sde_langevin_corrector(_score(x, sigma), x, z, 0.16)
    torch.testing.assert_close(out_mean, expected_mean, rtol=0, atol=ATOL)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)


def _replay_pc(score_fn, shape, sigmas, snr, n_corrector, seed):
    twin = torch.Generator().manual_seed(seed)
    x = float(sigmas[0]) * torch.randn(shape, generator=twin, dtype=torch.get_default_dtype())
    for i, sigma in enumerate(sigmas):
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        for _ in range(n_corrector):
            x, _ = langevin_corrector(score_fn, x, sigma, snr, noise=torch.randn(x.shape, generator=twin, dtype=x.dtype))
        x, x_mean = reverse_diffusion_predictor(
            score_fn, x, sigma, sigma_next, noise=torch.randn(x.shape, generator=twin, dtype=x.dtype)
        )
    return x_mean


@pytest.mark.parametrize("n_corrector", [0, 1, 2])
def test_pc_sample_order_of_draws_and_noise_free_end(n_corrector):
    """Does pc_sample draw σ_0·z, then per level corrector and predictor noises, and return the last x_mean?"""
    sigmas = ve_sigmas(0.05, 5.0, 6)
    score32 = lambda x, s: -(x - 1) / (0.25 + s.reshape(-1, 1) ** 2)  # noqa: E731  keeps the default dtype
    actual = pc_sample(score32, (7, 2), sigmas, 0.16, n_corrector, generator=torch.Generator().manual_seed(9))
    expected = _replay_pc(score32, (7, 2), sigmas, 0.16, n_corrector, seed=9)
    assert actual.dtype == torch.get_default_dtype() and actual.device.type == "cpu"
    # Same float32 (default dtype) operations in the same order: identical up to at most a few float32 ulps.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_steps_keep_the_input_dtype(dtype):
    """Do the single steps and the Langevin loops return the input's dtype?"""
    x = _randn((3, 2), 10, dtype)
    score = lambda y, s: -y / (1 + s.reshape(-1, 1) ** 2)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    assert reverse_diffusion_predictor(score, x, 1.0, 0.5, generator=g)[0].dtype == dtype
    assert langevin_corrector(score, x, 1.0, 0.16, generator=g)[0].dtype == dtype
    assert langevin_dynamics(lambda y: -y, x, 0.1, 2, g).dtype == dtype
    assert annealed_langevin_dynamics(score, x, ve_sigmas(0.1, 1.0, 3), 0.01, 2, g).dtype == dtype
