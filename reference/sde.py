"""The VP SDE of score-based generative modelling: its marginals, denoising score matching, the reverse SDE and the
probability-flow ODE.

Notation (Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations", code
``score_sde``: ``sde_lib.VPSDE``, ``losses.get_sde_loss_fn``, ``sampling.EulerMaruyamaPredictor``), continuous
time t ∈ [0, 1]:

    β(t)        β_min + t·(β_max − β_min)                                   (VPSDE.sde: dx = −½β(t)x dt + √β(t) dw)
    mean_coef   exp(−¼t²(β_max − β_min) − ½tβ_min)                          (VPSDE.marginal_prob)
    std         √(1 − mean_coef²)                                           p_t(x | x₀) = N(mean_coef·x₀, std²·I)
    s(x, t)     score_fn(x, t) ≈ ∇_x log p_t(x), t a float tensor ``(B,)``
    DSM loss    ½ Σ_dims (std·s(mean_coef·x₀ + std·z, t) + z)²              (reduce_mean=False, no weighting)
    reverse SDE dx = [−½β(t)x − β(t)s(x, t)] dt + √β(t) dw̄, integrated from t = 1 down to eps
    PF ODE      dx = [−½β(t)x − ½β(t)s(x, t)] dt

One Euler–Maruyama step from t to t − dt (dt > 0) is x_mean = x + (½β(t)x + β(t)s)·dt, x = x_mean + √(β(t)dt)·z; the
probability-flow step is x + (½β(t)x + ½β(t)s)·dt. :func:`sde_sample` visits t ∈ linspace(1, eps, n_steps) with
dt = 1/n_steps (score_sde's ``EulerMaruyamaPredictor`` and diffusers' ``ScoreSdeVpScheduler.step_pred``: dt is not
the grid's spacing (1 − eps)/(n_steps − 1)) and returns the last step's x_mean (score_sde's ``noise_removal``).

The continuous VP SDE is DDPM's limit: with T discrete steps and β_i = β(i/T)/T, 1 − β_i ≈ exp(−β(t)/T), so the
discrete ᾱ of DDPM's linear schedule (β from 1e-4 to 0.02, T = 1000) is mean_coef² with β_min = 0.1, β_max = 20.

Coefficients are computed in ``t``'s dtype (the t-only functions) or in ``x``'s; randomness comes only from
``noise=`` (single steps, dsm_loss) or ``generator=`` (the sampler), drawn on ``x``'s device in ``x``'s dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "vp_beta",
    "vp_marginal",
    "dsm_loss",
    "reverse_sde_step",
    "probability_flow_step",
    "sde_sample",
]


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` (or scalar) coefficient in ``x``'s dtype and device, broadcasting over its non-batch dims."""
    v = torch.as_tensor(v).to(device=x.device, dtype=x.dtype)
    return v if v.ndim == 0 else v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def _time_batch(t, x: torch.Tensor) -> torch.Tensor:
    """t as the score model's argument: a float tensor ``(B,)`` in ``x``'s dtype and device."""
    t = torch.as_tensor(t).to(device=x.device, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def vp_beta(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """β(t) = β_min + t·(β_max − β_min), the VP SDE's noise rate (Song et al. 2021, eq. 11; ``VPSDE.sde``).

    Args:
        t: float tensor, any shape (usually ``(B,)``), times in [0, 1].
        beta_min, beta_max: β(0) and β(1).

    Returns:
        β(t), shaped like ``t``, in its dtype and on its device.
    """
    return beta_min + t * (beta_max - beta_min)


def vp_marginal(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The VP SDE's perturbation kernel p_t(x | x₀) = N(mean_coef·x₀, std²·I) (eq. 29; ``VPSDE.marginal_prob``).

    log mean_coef = −¼t²(β_max − β_min) − ½tβ_min = −½∫₀ᵗ β(s) ds,   std = √(1 − mean_coef²).

    score_sde's own formula for std, which loses ~u/(2·std²) relative accuracy near t = 0 (in float32 ~1e-4 relative
    at t = 1e-3); √(−expm1(2·log mean_coef)) is the accurate way to write the same value.

    Args:
        t: float tensor ``(B,)`` of times.
        beta_min, beta_max: β(0) and β(1).

    Returns:
        ``(mean_coef, std)``, each shaped like ``t``, in its dtype and on its device.
    """
    log_mean_coef = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    mean_coef = torch.exp(log_mean_coef)
    return mean_coef, torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coef))


def dsm_loss(
    score_fn,
    x0: torch.Tensor,
    t: torch.Tensor,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising score matching at times t (Vincent 2011; Song et al. 2021, eq. 7; score_sde's ``get_sde_loss_fn``).

    x_t = mean_coef·x₀ + std·z, and the loss per sample is ½ Σ_dims (std·s(x_t, t) + z)²: the score of the perturbation
    kernel is −z/std, so std·s is regressed onto −z (score_sde with ``reduce_mean=False`` and no likelihood weighting:
    λ(t) = std², ½ and a sum over the non-batch dimensions). Its minimiser over all functions is the score of p_t.

    Args:
        score_fn: ``score_fn(x, t) -> score`` with t a float tensor ``(B,)``.
        x0: ``(B, ...)`` clean data.
        t: ``(B,)`` float times in (0, 1].
        beta_min, beta_max: the VP SDE's β(0) and β(1).
        noise: ``(B, ...)`` z; ``torch.randn_like(x0)`` when None.

    Returns:
        ``(B,)`` the loss of each sample, in ``x0``'s dtype and on its device.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    t = _time_batch(t, x0)
    mean_coef, std = vp_marginal(t, beta_min, beta_max)
    mean_coef, std = _per_sample(mean_coef, x0), _per_sample(std, x0)
    xt = mean_coef * x0 + std * noise
    residual = std * score_fn(xt, t) + noise
    return 0.5 * residual.pow(2).reshape(x0.shape[0], -1).sum(dim=-1)


def reverse_sde_step(
    score_fn,
    x: torch.Tensor,
    t: torch.Tensor,
    dt: float,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler–Maruyama step of the reverse VP SDE from t to t − dt (eq. 6; ``EulerMaruyamaPredictor``).

    x_mean = x + (½β(t)·x + β(t)·s(x, t))·dt,   x = x_mean + √(β(t)·dt)·z.

    score_sde writes the same step with a negative dt: x + [f − g²s]·dt′ + g√(−dt′)·z, f = −½βx, g² = β, dt′ = −dt.

    Args:
        score_fn: ``score_fn(x, t) -> score`` with t a float tensor ``(B,)``.
        x: ``(B, ...)`` samples at time t.
        t: ``(B,)`` float times (a scalar is broadcast over the batch).
        dt: the step, a positive float.
        beta_min, beta_max: β(0) and β(1).
        noise: ``(B, ...)`` z; drawn with ``generator`` when None.
        generator: the generator for z when ``noise`` is None.

    Returns:
        ``(x, x_mean)``, each ``(B, ...)`` in ``x``'s dtype and on its device.
    """
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    t = _time_batch(t, x)
    beta = _per_sample(vp_beta(t, beta_min, beta_max), x)
    x_mean = x + (0.5 * beta * x + beta * score_fn(x, t)) * dt
    return x_mean + torch.sqrt(beta * dt) * noise, x_mean


def probability_flow_step(
    score_fn,
    x: torch.Tensor,
    t: torch.Tensor,
    dt: float,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from t to t − dt (eq. 13; score_sde's ``ReverseDiffusion`` with
    ``probability_flow=True``: the drift f − ½g²s, no noise).

    x′ = x + (½β(t)·x + ½β(t)·s(x, t))·dt.

    Args:
        score_fn: ``score_fn(x, t) -> score`` with t a float tensor ``(B,)``.
        x: ``(B, ...)`` samples at time t.
        t: ``(B,)`` float times (a scalar is broadcast over the batch).
        dt: the step, a positive float.
        beta_min, beta_max: β(0) and β(1).

    Returns:
        ``(B, ...)`` in ``x``'s dtype and on its device.
    """
    t = _time_batch(t, x)
    beta = _per_sample(vp_beta(t, beta_min, beta_max), x)
    return x + (0.5 * beta * x + 0.5 * beta * score_fn(x, t)) * dt


def sde_sample(
    score_fn,
    shape: tuple[int, ...],
    n_steps: int,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    eps: float = 1e-3,
    probability_flow: bool = False,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampling by the reverse VP SDE (Euler–Maruyama) or the probability-flow ODE (Euler), from t = 1 down to eps.

    x = x_T, or z ~ N(0, I) as ``pc_sample`` draws its start (σ = 1: the VP prior); then at each t of
    linspace(1, eps, n_steps) one step with dt = 1/n_steps, :func:`reverse_sde_step` (its noise drawn with
    ``generator``) or :func:`probability_flow_step`; the result is the last step's x_mean (for the ODE its x), the
    noise-free final step (score_sde's ``noise_removal``).

    Args:
        score_fn: ``score_fn(x, t) -> score`` with t a float tensor ``(B,)``.
        shape: ``(B, ...)`` the sample shape.
        n_steps: number of steps (= score evaluations).
        beta_min, beta_max: β(0) and β(1).
        eps: the last time (score_sde's ``sampling_eps``).
        probability_flow: integrate the ODE instead of the SDE.
        generator: the source of every random draw (the start, then one draw per SDE step, in order).
        x_T: ``(B, ...)`` a given start; then no start is drawn.

    Returns:
        ``(B, ...)`` samples in x_T's dtype and device (without x_T: the default dtype, the generator's device).
    """
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    x = x_mean = x_T
    dt = 1.0 / n_steps
    for t in torch.linspace(1.0, eps, n_steps, dtype=torch.float64).tolist():
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        if probability_flow:
            x = x_mean = probability_flow_step(score_fn, x, t_batch, dt, beta_min, beta_max)
        else:
            x, x_mean = reverse_sde_step(score_fn, x, t_batch, dt, beta_min, beta_max, generator=generator)
    return x_mean
