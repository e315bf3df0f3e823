"""Classifier-free guidance: the guided ε, negative prompts, composition, and two fixes for large scales.

Notation (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"; code names as
in diffusers' pipelines):

    ε_u        eps_uncond, ε_θ(x_t, t, ∅) (or a negative prompt in place of ∅)
    ε_c        eps_cond, ε_θ(x_t, t, c)
    w          guidance_scale; ε_w = ε_u + w·(ε_c − ε_u)     (w = 0: ε_u, w = 1: ε_c)
    φ          phi, the rescale factor of Lin et al. (2024), §3.4
    λ          lam, the CFG++ scale (Chung et al. 2024), 0 ≤ λ ≤ 1 in practice

diffusers' ``guidance_scale`` is this w; Ho & Salimans write (1 + w')·ε_c − w'·ε_u, the
same combination with w = 1 + w'. Since −√(1 − ᾱ_t)·∇log p_t = ε, the guided ε is
the ε of p_t(x)·p_t(c | x)^w: ε_c − ε_u = −√(1 − ᾱ_t)·∇log p_t(c | x), the gradient of
the *implicit classifier* p(c | x) ∝ p(x | c)/p(x).

The model is ``eps_model(x, t, cond)``: ``t`` a LongTensor ``(B,)``, ``cond`` a tensor
with batch dimension first. The guided functions call it once, on the batch
[uncond; cond] (2B rows: the unconditional half first, as in diffusers' pipelines),
with x and t repeated; :func:`composed_eps` on [uncond; c_1; …; c_k].

Relation to the field's code (tests in tests/reference/test_cfg.py):

- :func:`rescale_guidance` is diffusers' ``rescale_noise_cfg(noise_cfg, noise_pred_text,
  guidance_rescale=φ)``. diffusers' std is the unbiased one; the ratio of two stds
  over the same number of entries does not depend on that choice.
- :func:`dynamic_threshold` is the schedulers' ``_threshold_sample`` (Saharia et al.
  2022, "Imagen", §2.3) with ``dynamic_thresholding_ratio = percentile`` and no cap
  (``sample_max_value = ∞``).
- :func:`cfg_pp_step` is the DDIM update of the CFG++ authors' ``BaseDDIMCFGpp.sample``
  (``latent_diffusion.py``): x̂₀ from ε_λ, renoised along ε_u.
"""

from __future__ import annotations

from typing import Sequence

import torch

from reference.ddim import _alpha_bar, _draw_x_T, _timestep_batch, ddim_step, ddim_timesteps

__all__ = [
    "cfg_combine",
    "guided_eps",
    "composed_eps",
    "rescale_guidance",
    "dynamic_threshold",
    "cfg_pp_step",
    "cfg_sample",
]


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The guided ε: ε_u + w·(ε_c − ε_u) (Ho & Salimans 2022, eq. 6, in diffusers' convention).

    w = 0 gives the unconditional model, w = 1 the conditional one, w > 1
    extrapolates past it (sharper, less diverse samples), w < 0 steers away.

    Args:
        eps_uncond: ``(B, ...)`` ε_u.
        eps_cond: ``(B, ...)`` ε_c.
        guidance_scale: w, a float.

    Returns:
        ``(B, ...)`` ε_w in the inputs' dtype.
    """
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def _batched_eps(eps_model, xt: torch.Tensor, t: torch.Tensor, conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """ε for each condition of ``conds`` from ONE model call on the stacked batch (len(conds)·B rows)."""
    k = len(conds)
    x_in = torch.cat([xt] * k)  # (k·B, ...)
    t_in = torch.cat([t] * k)  # (k·B,)
    c_in = torch.cat(list(conds))  # (k·B, ...)
    return list(eps_model(x_in, t_in, c_in).chunk(k))  # k blocks of (B, ...)


def guided_eps(eps_model, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               guidance_scale: float) -> torch.Tensor:
    """ε_w at x_t from one batched model call on [uncond; cond] (classifier-free guidance).

    x_in = [x_t; x_t], t_in = [t; t], c_in = [uncond; cond]  (2B rows)
    ε_u, ε_c = the two halves of ε_θ(x_in, t_in, c_in);  returns ε_u + w·(ε_c − ε_u)

    A negative prompt is passed as ``uncond``: it replaces the unconditional
    branch, so guidance pushes away from it and towards ``cond``.

    Args:
        eps_model: ``eps_model(x, t, cond) -> eps``.
        xt: ``(B, ...)`` the current sample.
        t: LongTensor ``(B,)`` timesteps.
        cond: ``(B, ...)`` the condition (batch first).
        uncond: ``(B, ...)`` the unconditional (null) condition or a negative prompt.
        guidance_scale: w.

    Returns:
        ``(B, ...)`` ε_w.
    """
    eps_uncond, eps_cond = _batched_eps(eps_model, xt, t, [uncond, cond])
    return cfg_combine(eps_uncond, eps_cond, guidance_scale)


def composed_eps(eps_model, xt: torch.Tensor, t: torch.Tensor, conds: Sequence[torch.Tensor],
                 weights: Sequence[float], uncond: torch.Tensor) -> torch.Tensor:
    """Composed guidance: ε_u + Σ_i w_i·(ε_{c_i} − ε_u) from one call on [uncond; c_1; …; c_k].

    Liu et al. 2022 ("Compositional Visual Generation with Composable Diffusion
    Models", eq. 12): a product of experts p(x)·Π_i p(c_i | x)^{w_i}; a negative
    w_i divides by p(c_i | x) and steers away from c_i.

    Args:
        eps_model: ``eps_model(x, t, cond) -> eps``.
        xt: ``(B, ...)``.
        t: LongTensor ``(B,)``.
        conds: k conditions, each ``(B, ...)`` (a list, or a tensor ``(k, B, ...)``).
        weights: k floats w_i (any sign).
        uncond: ``(B, ...)``.

    Returns:
        ``(B, ...)`` the composed ε.
    """
    conds = list(conds)
    eps_uncond, *eps_conds = _batched_eps(eps_model, xt, t, [uncond, *conds])
    out = eps_uncond
    for w, eps_c in zip(weights, eps_conds):
        out = out + float(w) * (eps_c - eps_uncond)
    return out


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """The (unbiased) std over all non-batch dims, shaped ``(B, 1, …, 1)``."""
    return x.std(dim=list(range(1, x.ndim)), keepdim=True)


def rescale_guidance(eps_cfg: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Rescaled guidance (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4).

    ε_r = ε_cfg · std(ε_c)/std(ε_cfg)  (stds per sample, over the non-batch dims)
    returns φ·ε_r + (1 − φ)·ε_cfg

    Large w inflates the guided ε's spread beyond the conditional one's (the
    cause of over-exposed images); ε_r restores the conditional std, and φ < 1
    keeps some of the guided ε against over-smoothing (φ = 0.7 in the paper).

    Args:
        eps_cfg: ``(B, ...)`` the guided ε (at least 2 entries per sample).
        eps_cond: ``(B, ...)`` the conditional ε.
        phi: φ ∈ [0, 1].

    Returns:
        ``(B, ...)``.
    """
    eps_rescaled = eps_cfg * (_per_sample_std(eps_cond) / _per_sample_std(eps_cfg))
    return phi * eps_rescaled + (1 - phi) * eps_cfg


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Dynamic thresholding of a predicted x₀ (Saharia et al. 2022, "Imagen", §2.3).

    s = quantile_p(|x₀|) per sample over the non-batch dims (linear interpolation,
    as ``torch.quantile``), s ← max(s, 1), returns clamp(x₀, −s, s)/s.

    The floor s ≥ 1 makes a sample already within [−1, 1] pass unchanged (it is
    then static clipping to [−1, 1]); a saturated one is shrunk back inside.

    Args:
        x0: ``(B, ...)`` the predicted clean sample.
        percentile: p ∈ [0, 1].

    Returns:
        ``(B, ...)`` in ``x0``'s dtype, every entry within [−1, 1].
    """
    flat = x0.reshape(x0.shape[0], -1)  # (B, N)
    s = torch.quantile(flat.abs(), percentile, dim=1).clamp(min=1)  # (B,)
    s = s.reshape(x0.shape[0], *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def cfg_pp_step(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, t: int, t_prev: int, xt: torch.Tensor,
                alphas_cumprod: torch.Tensor, lam: float) -> torch.Tensor:
    """One deterministic DDIM step with CFG++ (Chung et al. 2024, "CFG++", Algorithm 1).

    ε_λ    = ε_u + λ·(ε_c − ε_u)
    x̂₀     = (x_t − √(1 − ᾱ_t)·ε_λ)/√ᾱ_t
    x_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev)·ε_u        (renoised along ε_u, not ε_λ)

    With λ = w this differs from guided DDIM only in the renoising direction; the
    unconditional ε keeps x_prev on the noisy data manifold.

    Args:
        eps_uncond, eps_cond: ``(B, ...)`` ε_u and ε_c at (x_t, t).
        t, t_prev: ints, t_prev < t; t_prev < 0 means ᾱ_prev = 1.
        xt: ``(B, ...)``.
        alphas_cumprod: ``(T,)`` ᾱ.
        lam: λ.

    Returns:
        ``(B, ...)`` x_prev in ``xt``'s dtype and device.
    """
    a_t, a_prev = _alpha_bar(alphas_cumprod, t), _alpha_bar(alphas_cumprod, t_prev)

    def cast(c: torch.Tensor) -> torch.Tensor:
        return c.to(device=xt.device, dtype=xt.dtype)

    eps_lam = cfg_combine(eps_uncond, eps_cond, lam)
    x0_hat = (xt - cast((1 - a_t).sqrt()) * eps_lam) / cast(a_t.sqrt())
    return cast(a_prev.sqrt()) * x0_hat + cast((1 - a_prev).sqrt()) * eps_uncond


def cfg_sample(eps_model, shape: tuple[int, ...], cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float,
               alphas_cumprod: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM (η = 0, "leading" timesteps) with classifier-free guidance.

    x ← x_T;  for consecutive (t, t_prev) of ddim_timesteps(T, num_steps), then (last, −1):
        x ← ddim_step(guided_eps(ε_θ, x, t, cond, uncond, w), t, t_prev, x, ᾱ)

    One model call (of batch 2B) per step, from the largest timestep down.

    Args:
        eps_model: ``eps_model(x, t, cond) -> eps``.
        shape: ``(B, ...)`` the sample shape (ignored when ``x_T`` is given).
        cond, uncond: ``(B, ...)`` the condition and the unconditional one (or a negative prompt).
        guidance_scale: w.
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps: number of DDIM steps.
        generator: draws x_T ~ N(0, I) when ``x_T`` is None (on the generator's
            device, the CPU without one, in the default dtype, as ``ddim_sample``).
        x_T: ``(B, ...)`` the starting noise.

    Returns:
        ``(B, ...)`` samples in x_T's dtype and device.
    """
    if x_T is None:
        x_T = _draw_x_T(shape, generator)
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], num_steps, "leading").tolist()
    x = x_T
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = guided_eps(eps_model, x, _timestep_batch(t, x), cond, uncond, guidance_scale)
        x = ddim_step(eps, t, t_prev, x, alphas_cumprod)
    return x
