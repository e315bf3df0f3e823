"""DDIM: deterministic and η-stochastic sampling on a subsequence of timesteps, and inversion.

Notation (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"; code
names as in diffusers' ``scheduling_ddim.py``):

    ᾱ_t        alphas_cumprod[t], with ᾱ₋₁ = 1 (the clean data)
    ε          eps, the predicted noise ε_θ(x_t, t)
    x̂₀         x0_hat = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t                    (eq. 12, "predicted x₀")
    σ_t(η)     sigma = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)  (eq. 16)
    x_prev     √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev − σ²) · ε + σ · z             (eq. 12)

η = 0 is DDIM (deterministic), η = 1 with t_prev = t − 1 is DDPM's ancestral
step with variance β̃_t. Timesteps are Python ints shared by the whole batch;
the model is called with a LongTensor ``(B,)``. Schedule coefficients are
computed in the schedule's dtype (float64 for the course's schedules) and cast
to the sample's dtype, as :func:`reference._broadcast.extract` does.

Relation to diffusers (``DDIMScheduler``, ``DDIMInverseScheduler``):

- :func:`ddim_timesteps` equals ``set_timesteps`` for all three spacings,
  except where diffusers' "trailing" float ``arange`` overshoots and appends a
  spurious ``−1`` (e.g. T = 1000, num_steps = 61); there it returns diffusers'
  first ``num_steps`` entries.
- diffusers' ``step`` goes from t to ``t − T // num_steps``, whereas
  :func:`ddim_sample` and :func:`ddim_invert` go from each entry of the
  timesteps to the next one. The two agree whenever consecutive entries are
  ``T // num_steps`` apart: always for "leading", for "trailing" when
  num_steps divides T, for "linspace" only in special cases.
"""

from __future__ import annotations

import torch

__all__ = [
    "ddim_timesteps",
    "ddim_sigma",
    "ddim_step",
    "ddim_sample",
    "ddim_invert",
]

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(T: int, num_steps: int, spacing: str = "leading") -> torch.Tensor:
    """The descending subsequence of timesteps DDIM visits, with diffusers' spacings.

    "leading"  = arange(num_steps) · (T // num_steps)
    "trailing" = round(arange(T, 0, −T/num_steps)) − 1
    "linspace" = round(linspace(0, T − 1, num_steps))

    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Table 2.) The float arithmetic is numpy's, done in Python floats
    (IEEE double, round half to even), so ties round exactly as in diffusers:
    ``arange`` fills ``start + i·δ`` with ``δ = (start + step) − start`` and
    ``linspace`` fills ``i · (T − 1)/(num_steps − 1)`` with an exact endpoint.

    Args:
        T: number of training timesteps.
        num_steps: number of sampling steps, ``1 ≤ num_steps ≤ T``.
        spacing: "leading", "trailing" or "linspace".

    Returns:
        LongTensor ``(num_steps,)`` on the CPU, descending.

    Raises:
        ValueError: for an unknown spacing or num_steps outside ``[1, T]``.
    """
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be between 1 and T = {T}, got {num_steps}.")
    if spacing == "leading":
        ratio = T // num_steps
        steps = [i * ratio for i in range(num_steps)]
    elif spacing == "trailing":
        start, step = float(T), -T / num_steps
        delta = (start + step) - start  # numpy's arange fill step
        steps = [round(start + i * delta) - 1 for i in range(num_steps)][::-1]
    elif spacing == "linspace":
        if num_steps == 1:
            steps = [0]
        else:
            step = (T - 1) / (num_steps - 1)
            steps = [round(i * step) for i in range(num_steps - 1)] + [T - 1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}.")
    return torch.tensor(steps, dtype=torch.long).flip(0)


def ddim_sigma(alpha_cumprod_t, alpha_cumprod_prev, eta: float):
    """The DDIM noise scale σ_t(η) (Song et al. 2021, eq. 16).

    σ_t(η) = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)

    With η = 1 this is √β̃_t, the DDPM posterior standard deviation, when
    prev = t − 1.

    Args:
        alpha_cumprod_t: ᾱ_t, a float or a tensor.
        alpha_cumprod_prev: ᾱ_prev, broadcastable against ``alpha_cumprod_t``.
        eta: η ≥ 0.

    Returns:
        σ, broadcast from the inputs (a tensor if either input is one).
    """
    return (
        eta
        * ((1 - alpha_cumprod_prev) / (1 - alpha_cumprod_t)) ** 0.5
        * (1 - alpha_cumprod_t / alpha_cumprod_prev) ** 0.5
    )


def _alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """ᾱ_t as a 0-dim tensor in the schedule's dtype, with ᾱ_t = 1 for t < 0."""
    if t < 0:
        return torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    return alphas_cumprod[t]


def _transition(
    eps: torch.Tensor,
    xt: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_next: torch.Tensor,
    sigma: torch.Tensor | float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Eq. 12 of Song et al. (2021) from ᾱ_t to ᾱ_next: √ᾱ_next · x̂₀ + √(1 − ᾱ_next − σ²) · ε + σ · z.

    Coefficients are formed in the schedule's dtype and cast to ``xt``'s. With
    ``noise=None`` the σ · z term is left out (σ = 0). The direction
    coefficient is clamped at 0 against round-off (it is ≥ 0 for η ≤ 1).
    """
    sigma = torch.as_tensor(sigma, dtype=alpha_bar_t.dtype, device=alpha_bar_t.device)

    def cast(c: torch.Tensor) -> torch.Tensor:
        return c.to(device=xt.device, dtype=xt.dtype)

    x0_hat = (xt - cast((1 - alpha_bar_t).sqrt()) * eps) / cast(alpha_bar_t.sqrt())
    direction = cast((1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt()) * eps
    x_next = cast(alpha_bar_next.sqrt()) * x0_hat + direction
    if noise is not None:
        x_next = x_next + cast(sigma) * noise
    return x_next


def ddim_step(
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    xt: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step from x_t to x_{t_prev} (Song et al. 2021, eq. 12).

    x̂₀     = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t
    x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev − σ²) · ε + σ · z,   σ = ddim_sigma(ᾱ_t, ᾱ_prev, η)

    ``t_prev < 0`` means ᾱ_prev = 1 (the final step to the data). Equals
    diffusers' ``DDIMScheduler.step(eps, t, xt, eta, variance_noise=noise)``
    when ``t_prev = t − T // num_steps`` (``clip_sample=False``,
    ``set_alpha_to_one=True``). With η = 1 and ``t_prev = t − 1`` it is the
    DDPM ancestral step N(μ̃_t(x̂₀, x_t), β̃_t).

    Args:
        eps: ``(B, ...)`` the predicted noise ε_θ(x_t, t).
        t: the current timestep, ``0 ≤ t < T``.
        t_prev: the target timestep, ``t_prev < t``; negative for ᾱ_prev = 1.
        xt: ``(B, ...)`` the current sample x_t.
        alphas_cumprod: ``(T,)`` ᾱ.
        eta: η ≥ 0, the weight of fresh noise (0: DDIM, 1: DDPM).
        noise: ``(B, ...)`` z; when None and η > 0 it is drawn with ``generator``.
        generator: the generator for z when ``noise`` is None (one draw, only when η > 0).

    Returns:
        ``(B, ...)`` x_{t_prev}, in ``xt``'s dtype and device.
    """
    alpha_bar_t = _alpha_bar(alphas_cumprod, t)
    alpha_bar_prev = _alpha_bar(alphas_cumprod, t_prev)
    if eta == 0:
        return _transition(eps, xt, alpha_bar_t, alpha_bar_prev, 0.0, None)
    if noise is None:
        noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    return _transition(eps, xt, alpha_bar_t, alpha_bar_prev, sigma, noise)


def _draw_x_T(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """x_T ~ N(0, I) of ``shape``, in the default dtype, on the generator's device (the CPU without one)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())


def _timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """The model's timestep argument: LongTensor ``(B,)`` filled with ``t``, on ``x``'s device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def ddim_sample(
    eps_model,
    shape: tuple[int, ...],
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    eta: float = 0.0,
    spacing: str = "leading",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample with DDIM on a sub-sequence of ``num_steps`` timesteps (Song et al. 2021, eq. 12 over τ, §4.2).

    x ← x_T;  for consecutive (t, t_prev) of ddim_timesteps, then (last, −1):
        x ← ddim_step(ε_θ(x, t), t, t_prev, x, ᾱ, η)

    Random draws, all with ``generator``: x_T ~ N(0, I) first (only when
    ``x_T`` is None: on the generator's device, the CPU without one, in
    ``torch.get_default_dtype()``, as ``pc_sample``'s start), then one z per
    step when η > 0 (none when η = 0).

    Args:
        eps_model: ``eps_model(x, t) -> eps`` with ``t`` a LongTensor ``(B,)``.
        shape: ``(B, ...)`` the sample shape (ignored when ``x_T`` is given).
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps: number of model evaluations.
        eta: η ≥ 0 (0: deterministic DDIM, 1: DDPM-like).
        spacing: "leading", "trailing" or "linspace" (see :func:`ddim_timesteps`).
        generator: the source of every random draw.
        x_T: ``(B, ...)`` the starting noise; drawn when None.

    Returns:
        ``(B, ...)`` x₀ samples, in x_T's dtype and device.
    """
    if x_T is None:
        x_T = _draw_x_T(shape, generator)
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    x = x_T
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = eps_model(x, _timestep_batch(t, x))
        x = ddim_step(eps, t, t_prev, x, alphas_cumprod, eta, generator=generator)
    return x


def ddim_invert(
    eps_model,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    spacing: str = "leading",
) -> torch.Tensor:
    """DDIM inversion: map data x₀ to the noise x_T that η = 0 DDIM sampling maps back to ≈ x₀.

    Starting from x₀ with ᾱ = 1, for each τ of the ascending timesteps:
        ε  = ε_θ(x, τ)                         (current sample, target timestep)
        x̂₀ = (x − √(1 − ᾱ_cur) · ε) / √ᾱ_cur
        x  ← √ᾱ_τ · x̂₀ + √(1 − ᾱ_τ) · ε,      ᾱ_cur ← ᾱ_τ

    This is diffusers' ``DDIMInverseScheduler`` (``set_alpha_to_one=True``,
    ``clip_sample=False``) driven as its pipelines do (the model called at the
    current sample with the target timestep), except that diffusers takes
    ᾱ_cur from timestep ``τ − T // num_steps`` rather than the previous entry;
    the two agree exactly for "leading", and for "trailing" when num_steps
    divides T ("linspace" has no diffusers counterpart). Inversion is exact
    only in the limit of small steps: ε is evaluated at the start of each
    step where sampling evaluates it at the end (Mokady et al. 2023).

    Args:
        eps_model: ``eps_model(x, t) -> eps`` with ``t`` a LongTensor ``(B,)``.
        x0: ``(B, ...)`` data.
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps: number of model evaluations.
        spacing: "leading", "trailing" or "linspace" (see :func:`ddim_timesteps`).

    Returns:
        ``(B, ...)`` x_T at the largest timestep of ``ddim_timesteps``, in ``x0``'s dtype and device.
    """
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).flip(0).tolist()
    x, t_cur = x0, -1
    for t in timesteps:
        eps = eps_model(x, _timestep_batch(t, x))
        x = _transition(eps, x, _alpha_bar(alphas_cumprod, t_cur), _alpha_bar(alphas_cumprod, t), 0.0, None)
        t_cur = t
    return x
