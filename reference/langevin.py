"""Langevin dynamics, annealed Langevin dynamics and predictor–corrector sampling (VE SDE).

Notation (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of
the Data Distribution"; Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", code ``score_sde``):

    s(x, σ)    score_fn(x, sigma) ≈ ∇_x log p_σ(x), σ a float tensor ``(B,)``
    σ_i        sigmas[i], descending; σ after the last is 0
    Langevin   x ← x + (α/2) · ∇ log p(x) + √α · z            (Song & Ermon Alg. 1)
    predictor  x ← x + (σ_i² − σ_{i+1}²) · s(x, σ_i) + √(σ_i² − σ_{i+1}²) · z
    corrector  x ← x + ε · s(x, σ_i) + √(2ε) · z,  ε = 2 (snr · ‖z‖ / ‖s‖)²

Every loop draws its noise with ``torch.randn(x.shape, generator=generator,
device=x.device, dtype=x.dtype)``, one draw per step, in the order the steps
run; single steps take ``noise`` (deterministic) or a ``generator``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "langevin_dynamics",
    "annealed_langevin_dynamics",
    "ve_sigmas",
    "reverse_diffusion_predictor",
    "langevin_corrector",
    "pc_sample",
]


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like ``x``, drawn with ``generator`` on ``x``'s device and dtype."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _as_tensor(v) -> torch.Tensor:
    """A tensor as is; a Python number as a float64 0-dim tensor (never rounded through float32)."""
    return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64)


def _per_sample(v, x: torch.Tensor) -> torch.Tensor:
    """A scalar or ``(B,)`` coefficient as a tensor broadcasting over ``x``'s non-batch dims."""
    v = _as_tensor(v).to(device=x.device, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as the score model's argument: a float tensor ``(B,)`` in ``x``'s dtype and device."""
    sigma = _as_tensor(sigma).to(device=x.device, dtype=x.dtype)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


def langevin_dynamics(
    score_fn,
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unadjusted Langevin dynamics toward p (Song & Ermon 2019, eq. 4).

    x ← x + (α/2) · ∇_x log p(x) + √α · z,   z ~ N(0, I),   n_steps times.

    Args:
        score_fn: ``score_fn(x) -> ∇ log p(x)``, same shape as ``x``.
        x: ``(B, ...)`` the starting points.
        step_size: α > 0.
        n_steps: number of steps.
        generator: the source of the n_steps noise draws.

    Returns:
        ``(B, ...)`` the final points, in ``x``'s dtype and device.
    """
    for _ in range(n_steps):
        x = x + (step_size / 2) * score_fn(x) + math.sqrt(step_size) * _randn_like(x, generator)
    return x


def annealed_langevin_dynamics(
    score_fn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    step_lr: float,
    n_steps_each: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics over descending noise levels (Song & Ermon 2019, Algorithm 1).

    For each σ_i:  α_i = step_lr · (σ_i / σ_L)²,  then n_steps_each times
        x ← x + (α_i/2) · s(x, σ_i) + √α_i · z.

    This is the paper's parametrisation; the authors' code (``ncsn``) writes
    the same step as x + ε·s + √(2ε)·z with ε = α/2, so its ``step_lr`` is
    half of this one.

    Args:
        score_fn: ``score_fn(x, sigma) -> score`` with sigma a float tensor ``(B,)``.
        x: ``(B, ...)`` the starting points.
        sigmas: ``(L,)`` descending noise levels σ_1 > … > σ_L.
        step_lr: ε of Algorithm 1, the step at the smallest σ.
        n_steps_each: Langevin steps per noise level.
        generator: the source of the L · n_steps_each noise draws.

    Returns:
        ``(B, ...)`` the final points, in ``x``'s dtype and device.
    """
    sigma_last = sigmas[-1]
    for sigma in sigmas:
        alpha = _per_sample(step_lr * (sigma / sigma_last) ** 2, x)
        sigma_batch = _sigma_batch(sigma, x)
        for _ in range(n_steps_each):
            x = x + (alpha / 2) * score_fn(x, sigma_batch) + alpha.sqrt() * _randn_like(x, generator)
    return x


def ve_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    """The geometric noise levels of NCSN and the VE SDE, from sigma_max down to sigma_min.

    σ_i = σ_max · (σ_min/σ_max)^{i/(n−1)},   i = 0…n−1

    (Song & Ermon 2019 §4.2; Song et al. 2021, VE SDE).

    Returns:
        float64 ``(n,)``, descending, first σ_max and last σ_min.
    """
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))


def reverse_diffusion_predictor(
    score_fn,
    x: torch.Tensor,
    sigma,
    sigma_next,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse-diffusion predictor step of the VE SDE (Song et al. 2021, eq. 47; ``ReverseDiffusionPredictor``).

    x_mean = x + (σ² − σ_next²) · s(x, σ)
    x      = x_mean + √(σ² − σ_next²) · z

    Args:
        score_fn: ``score_fn(x, sigma) -> score`` with sigma a float tensor ``(B,)``.
        x: ``(B, ...)`` samples at noise level σ.
        sigma: σ, a float or a tensor ``()`` or ``(B,)``.
        sigma_next: the next (smaller) noise level, same kinds; 0 for the last step.
        noise: ``(B, ...)`` z; drawn with ``generator`` when None.
        generator: the generator for z when ``noise`` is None.

    Returns:
        ``(x, x_mean)``, each ``(B, ...)`` in ``x``'s dtype and device.
    """
    if noise is None:
        noise = _randn_like(x, generator)
    sigma_batch = _sigma_batch(sigma, x)
    g2 = _per_sample(_as_tensor(sigma) ** 2 - _as_tensor(sigma_next) ** 2, x)  # (B, 1, ..., 1) or ()
    x_mean = x + g2 * score_fn(x, sigma_batch)
    return x_mean + g2.sqrt() * noise, x_mean


def langevin_corrector(
    score_fn,
    x: torch.Tensor,
    sigma,
    snr: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Langevin corrector step with a signal-to-noise step size (Song et al. 2021, Algorithm 4; ``LangevinCorrector``).

    ε      = 2 · (snr · mean_b ‖z_b‖ / mean_b ‖s_b‖)²   (norms over non-batch dims, averaged over the batch)
    x_mean = x + ε · s(x, σ)
    x      = x_mean + √(2ε) · z

    ε is one scalar for the whole batch and depends on the noise z and on x,
    so the step is not an affine map of x with independent Gaussian noise
    (see :mod:`reference.laws`).

    Args:
        score_fn: ``score_fn(x, sigma) -> score`` with sigma a float tensor ``(B,)``.
        x: ``(B, ...)`` samples at noise level σ.
        sigma: σ, a float or a tensor ``()`` or ``(B,)``.
        snr: the target signal-to-noise ratio r.
        noise: ``(B, ...)`` z; drawn with ``generator`` when None.
        generator: the generator for z when ``noise`` is None.

    Returns:
        ``(x, x_mean)``, each ``(B, ...)`` in ``x``'s dtype and device.
    """
    if noise is None:
        noise = _randn_like(x, generator)
    score = score_fn(x, _sigma_batch(sigma, x))
    score_norm = torch.linalg.vector_norm(score.reshape(score.shape[0], -1), dim=-1).mean()
    noise_norm = torch.linalg.vector_norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step = 2 * (snr * noise_norm / score_norm) ** 2  # () ε
    x_mean = x + step * score
    return x_mean + (2 * step).sqrt() * noise, x_mean


def pc_sample(
    score_fn,
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    snr: float = 0.16,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predictor–corrector sampling of the VE SDE (Song et al. 2021, Algorithm 2 with the reverse-diffusion predictor).

    x = σ_0 · z;  for i = 0…N−1:  n_corrector × langevin_corrector(σ_i),
    then reverse_diffusion_predictor(σ_i → σ_{i+1}), σ_N = 0; return the
    last predictor's x_mean (no noise on the final step, ``noise_removal``).

    Random draws, all with ``generator``, in this order: z for x (on the
    generator's device, the CPU without one, in ``torch.get_default_dtype()``),
    then per level the n_corrector corrector draws and the predictor draw
    (the final predictor's draw is made and discarded, as in ``score_sde``).

    Args:
        score_fn: ``score_fn(x, sigma) -> score`` with sigma a float tensor ``(B,)``.
        shape: ``(B, ...)`` the sample shape.
        sigmas: ``(N,)`` descending noise levels, e.g. :func:`ve_sigmas`.
        snr: the corrector's signal-to-noise ratio.
        n_corrector: corrector steps per noise level.
        generator: the source of every random draw.

    Returns:
        ``(B, ...)`` samples in the default dtype, on the generator's device.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    x = _per_sample(sigmas[0], x) * x
    x_mean = x
    for i in range(len(sigmas)):
        sigma = sigmas[i]
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else torch.zeros_like(sigma)
        for _ in range(n_corrector):
            x, _ = langevin_corrector(score_fn, x, sigma, snr, generator=generator)
        x, x_mean = reverse_diffusion_predictor(score_fn, x, sigma, sigma_next, generator=generator)
    return x_mean
