"""DPM-Solver++(2M): the probability-flow ODE solved in λ, first order (DDIM) and second order multistep.

Notation (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2; code names as in diffusers'
``scheduling_dpmsolver_multistep.py``):

    α_t, σ_t   √ᾱ_t, √(1 − ᾱ_t), with ᾱ₋₁ = 1 (σ = 0, the clean data)
    λ_t        log α_t − log σ_t, half the log-SNR (+∞ at t = −1)
    x̂₀         x0_pred = (x_t − σ_t · ε) / α_t, the data prediction
    h          λ_{t_prev} − λ_t > 0, the step in λ

The ODE in λ has the exact solution x_prev = (σ_prev/σ_t)·x_t + σ_prev ∫ e^{λ} x̂₀(λ) dλ
(the integral from λ_t to λ_prev). Freezing x̂₀ at its value at t gives the first-order
step, which is DDIM with η = 0:

    x_prev = (σ_prev/σ_t) · x_t − α_prev (e^{−h} − 1) · x̂₀

and a linear extrapolation of x̂₀ in λ through the previous prediction gives the
second-order multistep step ("2M", the midpoint variant):

    r = (λ_t − λ_last)/h,   D₀ = x̂₀,   D₁ = (x̂₀ − x̂₀_last)/r
    x_prev = (σ_prev/σ_t) · x_t − α_prev (e^{−h} − 1) · D₀ − ½ α_prev (e^{−h} − 1) · D₁

Timesteps are Python ints shared by the whole batch; the model is called with a
LongTensor ``(B,)``. Schedule coefficients are computed in the schedule's dtype (float64
for the course's schedules) and cast to the sample's dtype, as :mod:`reference.ddim` does.

Relation to diffusers: :func:`dpm_solver_sample` is ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
``timestep_spacing="linspace"``, ``final_sigmas_type="zero"``, ``prediction_type="epsilon"``
and no thresholding, driven by its usual loop (``set_timesteps`` then ``step`` at each
timestep): the first step has no previous prediction and is first order, and the last one,
to σ = 0, is first order (``final_sigmas_type="zero"`` forces it, whatever the number of
steps). :func:`dpm_solver_timesteps` is its ``set_timesteps`` (``lambda_min_clipped = −∞``).
"""

from __future__ import annotations

import torch

from reference.ddim import _draw_x_T, _timestep_batch  # x_T and the model's (B,) timestep, as ddim and cfg

__all__ = [
    "dpm_lambda",
    "dpm_solver_timesteps",
    "dpm_solver_first_order_step",
    "dpm_solver_2m_step",
    "dpm_solver_sample",
]


def dpm_lambda(alpha_cumprod):
    """λ = log α − log σ = ½ log ᾱ − ½ log(1 − ᾱ), half the log signal-to-noise ratio, elementwise.

    λ = +∞ where ᾱ = 1 (the clean data) and −∞ where ᾱ = 0.

    Args:
        alpha_cumprod: ᾱ, a tensor (or a float) with values in [0, 1].

    Returns:
        λ, a tensor of ``alpha_cumprod``'s shape, dtype and device.
    """
    a = torch.as_tensor(alpha_cumprod)
    return 0.5 * torch.log(a) - 0.5 * torch.log1p(-a)


def dpm_solver_timesteps(T: int, num_steps: int) -> torch.Tensor:
    """The descending timesteps of DPM-Solver++ with diffusers' "linspace" spacing.

    round(linspace(0, T − 1, num_steps + 1)), reversed, without its last entry (0): the
    sampler steps from each entry to the next and from the last to the data (t = −1).
    The float arithmetic is numpy's (see :func:`reference.ddim.ddim_timesteps`): Python
    floats, ``i · (T − 1)/num_steps`` with an exact endpoint, round half to even.

    Args:
        T: number of training timesteps.
        num_steps: number of sampling steps (model evaluations), ``1 ≤ num_steps ≤ T − 1``.

    Returns:
        LongTensor ``(num_steps,)`` on the CPU, strictly descending, starting at T − 1.

    Raises:
        ValueError: for num_steps outside ``[1, T − 1]``.
    """
    if not 1 <= num_steps <= T - 1:
        raise ValueError(f"num_steps must be between 1 and T − 1 = {T - 1}, got {num_steps}.")
    step = (T - 1) / num_steps
    ascending = [round(i * step) for i in range(1, num_steps)] + [T - 1]
    return torch.tensor(ascending[::-1], dtype=torch.long)


def _alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """ᾱ_t as a 0-dim tensor in the schedule's dtype, with ᾱ_t = 1 for t < 0."""
    if t < 0:
        return torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    return alphas_cumprod[t]


def _coefficients(alphas_cumprod: torch.Tensor, t: int, t_prev: int):
    """(σ_prev/σ_t, α_prev·(e^{−h} − 1), λ_t, h) in the schedule's dtype; h = +∞ and e^{−h} − 1 = −1 at t_prev < 0."""
    a_t, a_prev = _alpha_bar(alphas_cumprod, t), _alpha_bar(alphas_cumprod, t_prev)
    lam_t, lam_prev = dpm_lambda(a_t), dpm_lambda(a_prev)
    h = lam_prev - lam_t
    return (1 - a_prev).sqrt() / (1 - a_t).sqrt(), a_prev.sqrt() * torch.expm1(-h), lam_t, h


def _cast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(device=x.device, dtype=x.dtype)


def dpm_solver_first_order_step(
    x0_pred: torch.Tensor,
    t: int,
    t_prev: int,
    xt: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """One first-order DPM-Solver++ step from x_t to x_{t_prev}: DDIM (η = 0) written in λ.

    h = λ_{t_prev} − λ_t,   x_prev = (σ_prev/σ_t) · x_t − α_prev (e^{−h} − 1) · x̂₀

    (Lu et al. 2022, eq. 9 with k = 1.) With x̂₀ = (x_t − σ_t ε)/α_t this equals
    ``reference.ddim.ddim_step(ε, t, t_prev, x_t, ᾱ, η=0)``. ``t_prev < 0`` means ᾱ_prev = 1:
    σ_prev = 0, h = +∞ and the step returns x̂₀.

    Args:
        x0_pred: ``(B, ...)`` x̂₀, the data predicted at (x_t, t).
        t: the current timestep, ``0 ≤ t < T``.
        t_prev: the target timestep, ``t_prev < t``; negative for the data.
        xt: ``(B, ...)`` the current sample.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` x_{t_prev}, in ``xt``'s dtype and device.
    """
    ratio, phi, _, _ = _coefficients(alphas_cumprod, t, t_prev)
    return _cast(ratio, xt) * xt - _cast(phi, xt) * x0_pred


def dpm_solver_2m_step(
    x0_pred: torch.Tensor,
    x0_pred_last: torch.Tensor,
    t: int,
    t_prev: int,
    t_last: int,
    xt: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """One second-order multistep DPM-Solver++(2M) step (midpoint), from x_t to x_{t_prev}.

    h = λ_{t_prev} − λ_t,  r = (λ_t − λ_{t_last})/h,  D₀ = x̂₀,  D₁ = (x̂₀ − x̂₀_last)/r
    x_prev = (σ_prev/σ_t) · x_t − α_prev (e^{−h} − 1) · D₀ − ½ α_prev (e^{−h} − 1) · D₁

    (Lu et al. 2022, Algorithm 2; diffusers' ``multistep_dpm_solver_second_order_update``
    with ``solver_type="midpoint"``.) x̂₀ is extrapolated linearly in λ through the
    prediction of the step before, made at t_last.

    Args:
        x0_pred: ``(B, ...)`` x̂₀ at (x_t, t).
        x0_pred_last: ``(B, ...)`` x̂₀ of the previous step, at t_last.
        t: the current timestep.
        t_prev: the target timestep, ``0 ≤ t_prev < t``.
        t_last: the previous step's timestep, ``t_last > t``.
        xt: ``(B, ...)`` the current sample.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` x_{t_prev}, in ``xt``'s dtype and device.
    """
    ratio, phi, lam_t, h = _coefficients(alphas_cumprod, t, t_prev)
    r = (lam_t - dpm_lambda(_alpha_bar(alphas_cumprod, t_last))) / h
    d1 = (x0_pred - x0_pred_last) / _cast(r, xt)
    return _cast(ratio, xt) * xt - _cast(phi, xt) * x0_pred - _cast(0.5 * phi, xt) * d1


def dpm_solver_sample(
    eps_model,
    shape: tuple[int, ...],
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample with DPM-Solver++(2M) in ``num_steps`` model evaluations.

    x ← x_T;  for each t of dpm_solver_timesteps, t_prev the next entry (−1 after the last):
        x̂₀ = (x − σ_t · ε_θ(x, t)) / α_t
        x  ← first-order step   at the first step and at the last one (to the data),
             2M step with (x̂₀ of the step before, its t) at every other step

    The only random draw is x_T ~ N(0, I) when ``x_T`` is None: with ``generator``, on its
    device (the CPU without one), in ``torch.get_default_dtype()``, as ``ddim_sample``.

    Args:
        eps_model: ``eps_model(x, t) -> eps`` with ``t`` a LongTensor ``(B,)``.
        shape: ``(B, ...)`` the sample shape (ignored when ``x_T`` is given).
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps: number of model evaluations, ``1 ≤ num_steps ≤ T − 1``.
        generator: the source of x_T.
        x_T: ``(B, ...)`` the starting noise; drawn when None.

    Returns:
        ``(B, ...)`` x₀ samples, in x_T's dtype and device.
    """
    if x_T is None:
        x_T = _draw_x_T(shape, generator)
    timesteps = dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x, x0_last = x_T, None
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = alphas_cumprod[t]
        eps = eps_model(x, _timestep_batch(t, x))
        x0_pred = (x - _cast((1 - a_t).sqrt(), x) * eps) / _cast(a_t.sqrt(), x)
        if i == 0 or t_prev < 0:
            x = dpm_solver_first_order_step(x0_pred, t, t_prev, x, alphas_cumprod)
        else:
            x = dpm_solver_2m_step(x0_pred, x0_last, t, t_prev, timesteps[i - 1], x, alphas_cumprod)
        x0_last = x0_pred
    return x
