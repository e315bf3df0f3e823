"""The forward process of DDPM: noise schedules, q(x_t | x_0), q(x_t | x_{t−1}) and the posterior.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"):

    β_t            betas[t], the variance added at step t
    α_t            1 − β_t
    ᾱ_t            alphas_cumprod[t] = ∏_{s=0..t} α_s, with ᾱ₋₁ = 1 (the clean data)
    q(x_t | x_0)   N(√ᾱ_t · x_0, (1 − ᾱ_t) I)                 (Ho et al. eq. 4)
    q(x_t | x_{t−1}) N(√α_t · x_{t−1}, β_t I)                   (eq. 2)
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)                       (eqs. 6–7)

Timesteps are zero-based: ``t ∈ {0, …, T−1}``, and step 0 is the first noising
step. Schedules are float64; per-timestep coefficients are gathered in float64
and cast to the data's dtype (see :func:`reference._broadcast.extract`).
"""

from __future__ import annotations

import math

import torch

from reference._broadcast import extract, prepend_one

__all__ = [
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "compute_alphas_cumprod",
    "q_sample",
    "q_step",
    "q_posterior",
]


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The linear schedule of Ho et al. (2020): β_t = linspace(beta_start, beta_end, T).

    Returns:
        float64 ``(T,)``.
    """
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of Nichol & Dhariwal (2021), "Improved DDPM", eq. 17.

    f(u) = cos²(((u/T) + s)/(1 + s) · π/2),   β_t = min(1 − f(t+1)/f(t), max_beta),

    so that ᾱ_t = f(t+1)/f(0) up to the cap, which keeps β_t < 1 near u = T
    where f → 0.

    Returns:
        float64 ``(T,)``.
    """
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


def compute_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s=0..t} (1 − β_s).

    Args:
        betas: ``(T,)``.

    Returns:
        ``(T,)`` in ``betas``' dtype and device.
    """
    return torch.cumprod(1 - betas, dim=0)


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I) by reparametrisation.

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,   ε ~ N(0, I).

    Args:
        x0: ``(B, ...)`` clean data.
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.
        noise: ``(B, ...)`` ε; drawn from the global generator when None.

    Returns:
        ``(B, ...)`` x_t, in ``x0``'s dtype and device.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    sqrt_alpha_bar = extract(alphas_cumprod.sqrt(), t, x0)
    sqrt_one_minus_alpha_bar = extract((1 - alphas_cumprod).sqrt(), t, x0)
    return sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * noise


def q_step(
    x_prev: torch.Tensor,
    t: torch.Tensor,
    betas: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward step, a sample of q(x_t | x_{t−1}) = N(√(1 − β_t) · x_{t−1}, β_t I).

    Args:
        x_prev: ``(B, ...)`` x_{t−1} (the clean data when t = 0).
        t: ``(B,)`` LongTensor of timesteps.
        betas: ``(T,)`` β.
        noise: ``(B, ...)`` ε; drawn from the global generator when None.

    Returns:
        ``(B, ...)`` x_t, in ``x_prev``'s dtype and device.
    """
    if noise is None:
        noise = torch.randn_like(x_prev)
    return extract((1 - betas).sqrt(), t, x_prev) * x_prev + extract(betas.sqrt(), t, x_prev) * noise


def posterior_coefficients(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The schedule constants of q(x_{t−1} | x_t, x_0), computed once, as in improved-diffusion.

    Returns a dict of ``(T,)`` tensors:
        ``posterior_mean_coef1`` = β_t √ᾱ_{t−1} / (1 − ᾱ_t)      (multiplies x_0)
        ``posterior_mean_coef2`` = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)  (multiplies x_t)
        ``posterior_variance``   = β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
        ``posterior_log_variance_clipped`` = log β̃_t, with β̃_0 (= 0) replaced by β̃_1.
    """
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, dim=0)
    alpha_bar_prev = prepend_one(alpha_bar)
    variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return {
        "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
        "posterior_mean_coef2": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": torch.log(torch.cat([variance[1:2], variance[1:]])),
    }


def q_posterior(
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    betas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of q(x_{t−1} | x_t, x_0) (Ho et al. eqs. 6–7).

    μ̃_t = β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x_0 + (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t) · x_t
    β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)

    At t = 0, β̃_0 = 0 and the log-variance is clipped to log β̃_1 (improved-diffusion).

    Args:
        x0: ``(B, ...)`` clean data.
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps.
        betas: ``(T,)`` β, T ≥ 2.

    Returns:
        ``(mean, variance, log_variance)``, each ``(B, ...)`` in ``xt``'s dtype and device.
    """
    c = posterior_coefficients(betas)
    mean = extract(c["posterior_mean_coef1"], t, xt) * x0 + extract(c["posterior_mean_coef2"], t, xt) * xt
    variance = extract(c["posterior_variance"], t, xt).expand_as(mean)
    log_variance = extract(c["posterior_log_variance_clipped"], t, xt).expand_as(mean)
    return mean, variance, log_variance
