"""Exact output laws of the discretised samplers on diagonal Gaussian data.

With x₀ ~ N(μ, diag(s²)) (:class:`reference.toy.GaussianData`) the noised
marginal at any level is N(a·μ, a²·s² + n) per coordinate, so the optimal
ε-prediction and score are affine in x, coordinate by coordinate:

    VP:  ε*(x, t) = √(1 − ᾱ_t) · (x − √ᾱ_t·μ) / (ᾱ_t·s² + 1 − ᾱ_t)
    VE:  s*(x, σ) = −(x − μ) / (s² + σ²)

Every step below that uses them is then x′ = A·x + b + S·z with A, b, S of the
data's shape and z ~ N(0, I) independent of x, so a Gaussian law
N(mean, diag(var)) is carried exactly to N(A·mean + b, A²·var + S²), and the
output law of a whole sampler follows by recursion (Pierret & Galerne, ICML
2025). Coordinates never mix, so the covariance stays diagonal, and the batch
elements are independent and identically distributed.

Which laws are exact:

- **Exact Gaussian**: :func:`ddim_step_law` (any η, any pair of timesteps),
  :func:`ddpm_step_law`, :func:`ddim_sample_law` (any η, spacing, start),
  :func:`ddim_invert_law` (deterministic, affine), :func:`langevin_dynamics_law`,
  :func:`annealed_langevin_law`, :func:`reverse_diffusion_predictor_law` and
  :func:`pc_sample_law` (predictor only, i.e. ``pc_sample(..., n_corrector=0)``).
  A start "law" with zero variance (:func:`point_law`) gives the law from a
  fixed starting sample.
- **Not Gaussian**: :func:`reference.langevin.langevin_corrector`. Its step
  ε = 2 (snr · mean_b ‖z_b‖ / mean_b ‖s_b‖)² is shared by the batch and depends
  on the noise radii ‖z_b‖ and on the current samples, so x′ is a scale
  mixture, batch elements are correlated, and conditioning on ε changes the
  law of z (it fixes the mean radius). What is exact, for a *fixed* batch x:
  the first two moments of x′ and x_mean (:func:`langevin_corrector_moments`),
  and, given the radii, the directions u_b = z_b/‖z_b‖ stay uniform on the
  sphere and independent, so (x′_b − x_mean_b)/‖x′_b − x_mean_b‖ is uniform on
  the sphere whatever ε is. Hence ``pc_sample`` with ``n_corrector ≥ 1`` has no
  closed-form law here; test its predictor chain with :func:`pc_sample_law`
  and the corrector step by injected noise and by these moments.
- Gaussian-mixture data (:class:`reference.toy.GaussianMixture`) has
  nonlinear scores: no sampler law is closed-form there.

A law is a pair ``(mean, var)`` of float64 tensors that broadcast against the
data shape ``D`` or a batch ``(B, *D)``. Everything is computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from reference.ddim import ddim_sigma, ddim_step, ddim_timesteps
from reference.q_sampler import q_posterior
from reference.toy import GaussianData

__all__ = [
    "alpha_bar",
    "point_law",
    "standard_normal_law",
    "affine_law",
    "ddim_step_law",
    "ddpm_step_law",
    "ddim_sample_law",
    "ddim_invert_law",
    "langevin_dynamics_law",
    "langevin_stationary_law",
    "annealed_langevin_law",
    "reverse_diffusion_predictor_law",
    "pc_sample_law",
    "chi_moments",
    "langevin_corrector_step_moments",
    "langevin_corrector_moments",
    "affine_chain",
    "langevin_steps",
    "annealed_langevin_steps",
    "pc_predictor_steps",
    "langevin_variant_law",
    "annealed_langevin_variant_law",
    "pc_sample_variant_law",
    "ddim_sample_moves",
    "ddim_invert_moves",
    "ddim_run_moves",
    "ddpm_ancestral_step",
    "per_sample_norm",
    "recover_corrector_noise",
    "pc_transition_noises",
    "ddim_terms_size",
    "ddim_chain_terms_size",
]

Law = tuple[torch.Tensor, torch.Tensor]


def _f64(v, data: GaussianData) -> torch.Tensor:
    """``v`` as a float64 tensor on the data's device."""
    return torch.as_tensor(v, dtype=torch.float64, device=data.mean.device)


def _params(data: GaussianData) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, s²) in float64."""
    return data.mean.to(torch.float64), data.var.to(torch.float64)


def point_law(x: torch.Tensor) -> Law:
    """The degenerate law δ_x: a fixed start, ``(x, 0)`` in float64."""
    x = x.to(torch.float64)
    return x, torch.zeros_like(x)


def standard_normal_law(data: GaussianData) -> Law:
    """N(0, I) over the data shape, the usual start of DDIM sampling."""
    zeros = torch.zeros_like(data.mean, dtype=torch.float64)
    return zeros, torch.ones_like(zeros)


def affine_law(law: Law, a, b, s) -> Law:
    """The law of x′ = a·x + b + s·z for x ~ N(mean, diag(var)) and z ~ N(0, I) independent.

    mean′ = a·mean + b,   var′ = a²·var + s²

    Args:
        law: ``(mean, var)``.
        a, b, s: coefficients broadcasting against the law.

    Returns:
        ``(mean′, var′)``.
    """
    mean, var = law
    return a * mean + b, a**2 * var + s**2


# ---------------------------------------------------------------------------------------------
# VP samplers: DDPM and DDIM with the optimal ε-model
# ---------------------------------------------------------------------------------------------


def alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """ᾱ_t as a float64 0-dim tensor on the schedule's device, with ᾱ_t = 1 for t < 0 (the clean data)."""
    if t < 0:
        return torch.ones((), dtype=torch.float64, device=alphas_cumprod.device)
    return alphas_cumprod[t].to(torch.float64)


def _alpha_bar(alphas_cumprod: torch.Tensor, t: int, data: GaussianData) -> torch.Tensor:
    """ᾱ_t in float64 on the data's device, with ᾱ_t = 1 for t < 0."""
    return _f64(alpha_bar(alphas_cumprod, t), data)


def _ddim_affine(data: GaussianData, alpha_bar_cur, alpha_bar_next, alpha_bar_eval, sigma):
    """(A, b, S) of x′ = √ᾱ_next·x̂₀ + √(1 − ᾱ_next − σ²)·ε + σ·z with ε = ε*(x, ᾱ_eval).

    x̂₀ = (x − √(1 − ᾱ_cur)·ε)/√ᾱ_cur, so x′ = r·x + d·ε + σ·z with
    r = √(ᾱ_next/ᾱ_cur) and d = √(1 − ᾱ_next − σ²) − r·√(1 − ᾱ_cur); and
    ε = k·(x − m) with m = √ᾱ_eval·μ, k = √(1 − ᾱ_eval)/(ᾱ_eval·s² + 1 − ᾱ_eval).
    """
    mu, s2 = _params(data)
    r = (alpha_bar_next / alpha_bar_cur).sqrt()
    d = (1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt() - r * (1 - alpha_bar_cur).sqrt()
    k = (1 - alpha_bar_eval).sqrt() / (alpha_bar_eval * s2 + 1 - alpha_bar_eval)
    m = alpha_bar_eval.sqrt() * mu
    return r + d * k, -d * k * m, sigma * torch.ones_like(mu)


def ddim_step_law(
    data: GaussianData,
    t: int,
    t_prev: int,
    alphas_cumprod: torch.Tensor,
    eta: float,
    x_law: Law,
) -> Law:
    """The exact law of ``ddim_step(ε*(x_t, t), t, t_prev, x_t, ᾱ, η)`` for x_t ~ N(x_law).

    x_prev = A·x_t + b + σ_t(η)·z with A, b from the affine ε* (module docstring).

    Args:
        data: the Gaussian data defining the optimal ε-model.
        t: current timestep; ``t_prev``: target timestep (negative for ᾱ_prev = 1).
        alphas_cumprod: ``(T,)`` ᾱ.
        eta: η.
        x_law: ``(mean, var)`` of x_t; :func:`point_law` for a fixed x_t.

    Returns:
        ``(mean, var)`` of x_{t_prev}.
    """
    a_t, a_prev = _alpha_bar(alphas_cumprod, t, data), _alpha_bar(alphas_cumprod, t_prev, data)
    sigma = ddim_sigma(a_t, a_prev, eta) if eta != 0 else _f64(0.0, data)
    return affine_law(x_law, *_ddim_affine(data, a_t, a_prev, a_t, sigma))


def ddpm_step_law(data: GaussianData, t: int, alphas_cumprod: torch.Tensor, x_law: Law) -> Law:
    """The exact law of DDPM's ancestral step with the optimal denoiser (Ho et al. 2020, Algorithm 2).

    x_{t−1} = μ̃_t(x̂₀, x_t) + √β̃_t · z
    x̂₀      = E[x₀ | x_t] = μ + √ᾱ_t·s²·(x_t − √ᾱ_t·μ)/(ᾱ_t·s² + 1 − ᾱ_t)
    μ̃_t     = β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x̂₀ + (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t) · x_t
    β̃_t     = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)

    Derived through the posterior, independently of DDIM; equal to
    :func:`ddim_step_law` with η = 1 and ``t_prev = t − 1``.

    Args:
        data: the Gaussian data.
        t: the timestep, ``0 ≤ t < T``.
        alphas_cumprod: ``(T,)`` ᾱ (β_t = 1 − ᾱ_t/ᾱ_{t−1}).
        x_law: ``(mean, var)`` of x_t.

    Returns:
        ``(mean, var)`` of x_{t−1}.
    """
    mu, s2 = _params(data)
    a_t, a_prev = _alpha_bar(alphas_cumprod, t, data), _alpha_bar(alphas_cumprod, t - 1, data)
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    c1 = beta_t * a_prev.sqrt() / (1 - a_t)
    c2 = (1 - a_prev) * alpha_t.sqrt() / (1 - a_t)
    g = a_t.sqrt() * s2 / (a_t * s2 + 1 - a_t)  # x̂₀ = μ + g·(x − √ᾱ_t·μ)
    a = c1 * g + c2
    b = c1 * (mu - g * a_t.sqrt() * mu)
    return affine_law(x_law, a, b, (beta_t * (1 - a_prev) / (1 - a_t)).sqrt())


def _start_law(data: GaussianData, x: torch.Tensor | None, law: Law | None) -> Law:
    if x is not None and law is not None:
        raise ValueError("Give a fixed start or a start law, not both.")
    if x is not None:
        return point_law(x)
    if law is not None:
        return tuple(_f64(v, data) for v in law)
    return standard_normal_law(data)


def ddim_sample_law(
    data: GaussianData,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    eta: float = 0.0,
    spacing: str = "leading",
    x_T: torch.Tensor | None = None,
    x_T_law: Law | None = None,
) -> Law:
    """The exact law of ``ddim_sample`` with the optimal ε-model of ``data``.

    Composes :func:`ddim_step_law` along ``ddim_timesteps(T, num_steps, spacing)``
    and the final step to t_prev = −1, as :func:`reference.ddim.ddim_sample` does.

    Args:
        data: the Gaussian data.
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps, eta, spacing: as in ``ddim_sample``.
        x_T: ``(B, *D)`` a fixed start; or
        x_T_law: ``(mean, var)`` of the start; default N(0, I).

    Returns:
        ``(mean, var)`` of the samples, shaped like the start's law.
    """
    law = _start_law(data, x_T, x_T_law)
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        law = ddim_step_law(data, t, t_prev, alphas_cumprod, eta, law)
    return law


def ddim_invert_law(
    data: GaussianData,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    spacing: str = "leading",
    x0: torch.Tensor | None = None,
    x0_law: Law | None = None,
) -> Law:
    """The law of ``ddim_invert`` with the optimal ε-model; the map is deterministic and affine.

    Each inversion step is x ← √ᾱ_τ·x̂₀ + √(1 − ᾱ_τ)·ε*(x, τ) with x̂₀ taken at
    the current level ᾱ_cur, an affine map of x; so for a fixed x₀
    (``x0``) the returned mean *is* the inverted sample and the variance is 0.

    Args:
        data: the Gaussian data.
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps, spacing: as in ``ddim_invert``.
        x0: ``(B, *D)`` fixed data; or
        x0_law: ``(mean, var)`` of x₀; default the data's law N(μ, s²).

    Returns:
        ``(mean, var)`` of x_T.
    """
    if x0 is None and x0_law is None:
        x0_law = _params(data)
    law = _start_law(data, x0, x0_law)
    a_cur = _f64(1.0, data)
    for t in ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).flip(0).tolist():
        a_t = _alpha_bar(alphas_cumprod, t, data)
        law = affine_law(law, *_ddim_affine(data, a_cur, a_t, a_t, _f64(0.0, data)))
        a_cur = a_t
    return law


# ---------------------------------------------------------------------------------------------
# Langevin dynamics and the VE predictor with the exact score
# ---------------------------------------------------------------------------------------------


def _langevin_affine(target_mean, target_var, step_size):
    """(A, b, S) of x′ = x + (α/2)·(−(x − m)/v) + √α·z: A = 1 − α/(2v), b = α·m/(2v), S = √α."""
    rho = 1 - step_size / (2 * target_var)
    return rho, (1 - rho) * target_mean, step_size**0.5 * torch.ones_like(target_mean)


def langevin_dynamics_law(target: GaussianData, x_law: Law, step_size: float, n_steps: int) -> Law:
    """The exact law of ``langevin_dynamics(target's score, x, α, n_steps)`` for x ~ N(x_law).

    With ∇ log p(x) = −(x − m)/v, each step is x′ = ρ·x + (1 − ρ)·m + √α·z,
    ρ = 1 − α/(2v); after n steps mean = m + ρⁿ(mean₀ − m) and
    var = ρ^{2n}·var₀ + α(1 − ρ^{2n})/(1 − ρ²) (computed by recursion).

    Args:
        target: the Gaussian target N(m, diag(v)) (for a VE-noised level use
            ``GaussianData(mean, var + σ²)``).
        x_law: ``(mean, var)`` of the start.
        step_size: α.
        n_steps: number of steps.

    Returns:
        ``(mean, var)`` after n_steps.
    """
    m, v = _params(target)
    law = tuple(_f64(u, target) for u in x_law)
    for _ in range(n_steps):
        law = affine_law(law, *_langevin_affine(m, v, step_size))
    return law


def langevin_stationary_law(target: GaussianData, step_size: float) -> Law:
    """The stationary law of unadjusted Langevin on N(m, v): N(m, v / (1 − α/(4v))), for 0 < α < 4v.

    The fixed point of var = ρ²·var + α with ρ = 1 − α/(2v): the discretisation
    inflates the variance by 1/(1 − α/(4v)) (Roberts & Tweedie 1996).
    """
    m, v = _params(target)
    return m, v / (1 - step_size / (4 * v))


def annealed_langevin_law(
    data: GaussianData,
    x_law: Law,
    sigmas: torch.Tensor,
    step_lr: float,
    n_steps_each: int,
) -> Law:
    """The exact law of ``annealed_langevin_dynamics`` with the exact VE score of ``data``.

    At level σ_i the target is N(μ, s² + σ_i²) and α_i = step_lr·(σ_i/σ_L)²; see
    :func:`langevin_dynamics_law`.

    Args:
        data: the Gaussian data.
        x_law: ``(mean, var)`` of the start.
        sigmas: ``(L,)`` descending noise levels.
        step_lr, n_steps_each: as in ``annealed_langevin_dynamics``.

    Returns:
        ``(mean, var)`` of the output.
    """
    mu, s2 = _params(data)
    sigmas = _f64(sigmas, data)
    law = tuple(_f64(u, data) for u in x_law)
    for sigma in sigmas:
        alpha = step_lr * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            law = affine_law(law, *_langevin_affine(mu, s2 + sigma**2, alpha))
    return law


def reverse_diffusion_predictor_law(
    data: GaussianData,
    x_law: Law,
    sigma,
    sigma_next,
    noise_free: bool = False,
) -> Law:
    """The exact law of ``reverse_diffusion_predictor``'s x (or x_mean) with the exact VE score.

    x_mean = x − g²·(x − μ)/(s² + σ²),  x = x_mean + g·z,  g² = σ² − σ_next².

    Args:
        data: the Gaussian data.
        x_law: ``(mean, var)`` of the input.
        sigma, sigma_next: the levels (floats or 0-dim tensors).
        noise_free: return the law of x_mean instead of x.

    Returns:
        ``(mean, var)``.
    """
    mu, s2 = _params(data)
    sigma, sigma_next = _f64(sigma, data), _f64(sigma_next, data)
    g2 = sigma**2 - sigma_next**2
    a = 1 - g2 / (s2 + sigma**2)
    s = torch.zeros_like(mu) if noise_free else g2.sqrt() * torch.ones_like(mu)
    return affine_law(tuple(_f64(u, data) for u in x_law), a, (1 - a) * mu, s)


def pc_sample_law(data: GaussianData, sigmas: torch.Tensor) -> Law:
    """The exact law of ``pc_sample(..., n_corrector=0)`` with the exact VE score.

    x = σ_0·z ~ N(0, σ_0²), then the predictor from σ_i to σ_{i+1} (σ_N = 0),
    the last one noise-free. With ``n_corrector ≥ 1`` there is no Gaussian law
    (see the module docstring).

    Args:
        data: the Gaussian data.
        sigmas: ``(N,)`` descending noise levels.

    Returns:
        ``(mean, var)`` over the data shape.
    """
    sigmas = _f64(sigmas, data)
    zeros = torch.zeros_like(data.mean, dtype=torch.float64)
    law = (zeros, sigmas[0] ** 2 * torch.ones_like(zeros))
    for i in range(len(sigmas)):
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else _f64(0.0, data)
        law = reverse_diffusion_predictor_law(data, law, sigmas[i], sigma_next, noise_free=i + 1 == len(sigmas))
    return law


# ---------------------------------------------------------------------------------------------
# The Langevin corrector: exact moments for a fixed batch (the law is not Gaussian)
# ---------------------------------------------------------------------------------------------


def chi_moments(d: int) -> tuple[float, float, float, float]:
    """Raw moments E[rᵏ], k = 1…4, of r = ‖z‖ for z ~ N(0, I_d) (the chi distribution).

    E r = κ = √2·Γ((d+1)/2)/Γ(d/2),  E r² = d,  E r³ = (d+1)·κ,  E r⁴ = d(d+2).
    """
    kappa = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    return kappa, float(d), (d + 1) * kappa, float(d * (d + 2))


def langevin_corrector_step_moments(score_norm_mean: float, d: int, batch: int, snr: float) -> dict[str, float]:
    """Exact moments of the corrector's step ε = 2·snr²·r̄²/ḡ² for a fixed batch.

    r̄ = mean_b ‖z_b‖ over ``batch`` independent z_b ~ N(0, I_d), ḡ = ``score_norm_mean``
    = mean_b ‖s(x_b)‖ (fixed, since x is). With S = B·r̄, a sum of B iid chi
    variables with cumulants c_j, S has cumulants K_j = B·c_j and
        E S² = K2 + K1²,   E S⁴ = K4 + 4·K3·K1 + 3·K2² + 6·K2·K1² + K1⁴,
        E[S²·r_b²] = E r⁴ + 2(B−1)·E r³·E r + E r²·((B−1)·E r² + (B−1)(B−2)·(E r)²).

    Returns:
        ``{"mean": E ε, "var": Var ε, "mean_times_r2": E[ε·‖z_b‖²]}`` (any b).
    """
    m1, m2, m3, m4 = chi_moments(d)
    c1 = m1
    c2 = m2 - m1**2
    c3 = m3 - 3 * m2 * m1 + 2 * m1**3
    c4 = m4 - 4 * m3 * m1 - 3 * m2**2 + 12 * m2 * m1**2 - 6 * m1**4
    k1, k2, k3, k4 = (batch * c for c in (c1, c2, c3, c4))
    es2 = k2 + k1**2
    es4 = k4 + 4 * k3 * k1 + 3 * k2**2 + 6 * k2 * k1**2 + k1**4
    es2r2 = m4 + 2 * (batch - 1) * m3 * m1 + m2 * ((batch - 1) * m2 + (batch - 1) * (batch - 2) * m1**2)
    scale = 2 * snr**2 / (score_norm_mean**2 * batch**2)  # ε = scale · S²
    mean = scale * es2
    return {"mean": mean, "var": scale**2 * es4 - mean**2, "mean_times_r2": scale * es2r2}


def langevin_corrector_moments(
    data: GaussianData,
    x: torch.Tensor,
    sigma,
    snr: float,
) -> dict[str, torch.Tensor]:
    """Exact means and variances of ``langevin_corrector``'s outputs for a fixed batch x (not a Gaussian law).

    With s_b = s*(x_b, σ) fixed and ε independent of the directions z_b/‖z_b‖:
        E x′ = E x_mean = x + E[ε]·s,
        Var x_mean      = s²·Var ε,
        Var x′          = s²·Var ε + (2/d)·E[ε·‖z_b‖²]       (d = number of non-batch entries),
    and Cov(x′_{b,i}, x′_{c,j}) = s_{b,i}·s_{c,j}·Var ε for (b,i) ≠ (c,j). The
    cross term E[(ε − Eε)·√(2ε)·z] vanishes by the symmetry z_b → −z_b.

    Args:
        data: the Gaussian data (exact VE score).
        x: ``(B, *D)`` the fixed input batch.
        sigma: the noise level (float or 0-dim tensor).
        snr: the corrector's snr.

    Returns:
        dict of float64 ``(B, *D)`` tensors ``mean``, ``var`` (of x′), ``var_mean`` (of x_mean),
        and the 0-dim ``step_mean``, ``step_var``.
    """
    mu, s2 = _params(data)
    x = x.to(torch.float64)
    score = -(x - mu) / (s2 + _f64(sigma, data) ** 2)
    batch, d = x.shape[0], x[0].numel()
    g = torch.linalg.vector_norm(score.reshape(batch, -1), dim=-1).mean()
    step = langevin_corrector_step_moments(float(g), d, batch, snr)
    return {
        "mean": x + step["mean"] * score,
        "var": score**2 * step["var"] + 2 * step["mean_times_r2"] / d,
        "var_mean": score**2 * step["var"],
        "step_mean": _f64(step["mean"], data),
        "step_var": _f64(step["var"], data),
    }


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: guided DDIM on class-conditional Gaussians
# ---------------------------------------------------------------------------------------------

__all__ += ["guided_ddim_step_law", "cfg_sample_law"]


def guided_ddim_step_law(
    data_uncond: GaussianData,
    data_cond: GaussianData,
    t: int,
    t_prev: int,
    alphas_cumprod: torch.Tensor,
    guidance_scale: float,
    x_law: Law,
) -> Law:
    """The exact law of one η = 0 DDIM step with the guided ε of two Gaussian data laws.

    With ε_u = k_u·(x − m_u) and ε_c = k_c·(x − m_c) (the optimal ε's, affine: module
    docstring), ε_w = ε_u + w·(ε_c − ε_u) = K·x − J with K = (1 − w)·k_u + w·k_c and
    J = (1 − w)·k_u·m_u + w·k_c·m_c, and the step x′ = r·x + d·ε_w (see ``_ddim_affine``)
    is x′ = (r + d·K)·x − d·J: affine, deterministic. The two data laws may carry
    per-sample parameters ``(B, *D)`` (one class per batch element).

    Args:
        data_uncond: the data of the unconditional branch (or the negative prompt).
        data_cond: the data of the condition.
        t, t_prev: the step (t_prev < 0: ᾱ_prev = 1).
        alphas_cumprod: ``(T,)`` ᾱ.
        guidance_scale: w (any real).
        x_law: ``(mean, var)`` of x_t.

    Returns:
        ``(mean, var)`` of x_{t_prev}.
    """
    a_t, a_prev = _alpha_bar(alphas_cumprod, t, data_cond), _alpha_bar(alphas_cumprod, t_prev, data_cond)
    r = (a_prev / a_t).sqrt()
    d = (1 - a_prev).sqrt() - r * (1 - a_t).sqrt()
    w = _f64(guidance_scale, data_cond)

    def slope_and_centre(data: GaussianData):
        mu, s2 = _params(data)
        k = (1 - a_t).sqrt() / (a_t * s2 + 1 - a_t)
        return k, k * a_t.sqrt() * mu

    k_u, km_u = slope_and_centre(data_uncond)
    k_c, km_c = slope_and_centre(data_cond)
    K = (1 - w) * k_u + w * k_c
    J = (1 - w) * km_u + w * km_c
    return affine_law(x_law, r + d * K, -d * J, torch.zeros_like(K))


def cfg_sample_law(
    toy,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    x_T: torch.Tensor | None = None,
    x_T_law: Law | None = None,
) -> Law:
    """The exact law of ``cfg_sample`` with the optimal ε-model of class-conditional Gaussians.

    Composes :func:`guided_ddim_step_law` along ``ddim_timesteps(T, num_steps, "leading")``
    and the final step to t_prev = −1, as :func:`reference.cfg.cfg_sample` does. Each batch
    element has its own classes (``cond[b]``, ``uncond[b]``), so the law is per element.

    Args:
        toy: a :class:`reference.toy.ClassConditionalGaussians`.
        alphas_cumprod: ``(T,)`` ᾱ.
        num_steps: as in ``cfg_sample``.
        cond, uncond: ``(B,)`` labels.
        guidance_scale: w.
        x_T: ``(B, *D)`` a fixed start; or
        x_T_law: ``(mean, var)`` of the start; default N(0, I).

    Returns:
        ``(mean, var)`` of the samples, ``(B, *D)``.
    """
    cond, uncond = cond.reshape(-1).long().cpu(), uncond.reshape(-1).long().cpu()
    if x_T is None and x_T_law is None:
        # The same law for every row with the same (cond, uncond): compute each pair once, then gather.
        pairs, row = torch.unique(torch.stack([cond, uncond], 1), dim=0, return_inverse=True)
        mean, var = cfg_sample_law(toy, alphas_cumprod, num_steps, pairs[:, 0], pairs[:, 1], guidance_scale,
                                   x_T_law=standard_normal_law(toy.given(pairs[:1, 0])))
        return mean[row.to(mean.device)], var[row.to(var.device)]
    data_c, data_u = toy.given(cond), toy.given(uncond)
    law = _start_law(data_c, x_T, x_T_law)
    law = tuple(torch.broadcast_to(v, data_c.mean.shape).clone() for v in law)
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], num_steps, "leading").tolist()
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        law = guided_ddim_step_law(data_u, data_c, t, t_prev, alphas_cumprod, guidance_scale, law)
    return law


# ---------------------------------------------------------------------------------------------
# Samplers as chains of affine steps, with their variants (the laws of known mistakes)
# ---------------------------------------------------------------------------------------------


def affine_chain(law: Law, steps: list[tuple]) -> Law:
    """``law`` carried through the steps ``(a, b, s)`` of x′ = a·x + b + s·z in order (:func:`affine_law`)."""
    for a, b, s in steps:
        law = affine_law(law, a, b, s)
    return law


def langevin_steps(mean: torch.Tensor, var: torch.Tensor, step_size: float, n_steps: int, score_coef: float = 0.5,
                   noise_coef: float | None = None) -> list[tuple]:
    """The steps of x′ = x + score_coef·α·(−(x − m)/v) + noise_coef·z on N(m, diag(v)).

    ``score_coef = 1/2`` and ``noise_coef = √α`` (the default) is Langevin dynamics
    (:func:`langevin_dynamics_law`); other values are the laws of known mistakes.
    """
    noise_coef = math.sqrt(step_size) if noise_coef is None else noise_coef
    rho = 1 - score_coef * step_size / var
    return [(rho, (1 - rho) * mean, noise_coef * torch.ones_like(mean))] * n_steps


def annealed_langevin_steps(data: GaussianData, sigmas: torch.Tensor, alphas: list, n_steps_each: int,
                            score_coef: float = 0.5, noise: Callable[[float], float] | None = None) -> list[tuple]:
    """The steps of annealed Langevin with step α_i at level σ_i (target N(μ, s² + σ_i²)); ``noise(α)`` the noise scale.

    With α_i = step_lr·(σ_i/σ_L)² and the defaults this is :func:`annealed_langevin_law`.
    """
    steps = []
    for sigma, alpha in zip(sigmas, alphas):
        steps += langevin_steps(data.mean, data.var + sigma**2, float(alpha), n_steps_each, score_coef,
                                None if noise is None else noise(float(alpha)))
    return steps


def pc_predictor_steps(data: GaussianData, sigmas: torch.Tensor, *, g2_of: Callable | None = None,
                       score_level: Callable | None = None, noisy_end: bool = False,
                       noiseless: bool = False) -> list[tuple]:
    """The predictor chain of ``pc_sample(..., n_corrector=0)``, with optional mistakes.

    Defaults give :func:`pc_sample_law` (from x = σ_0·z): g² = σ_i² − σ_{i+1}², the score at
    σ_i, the last step noise-free. ``g2_of(σ, σ_next)``, ``score_level(σ, σ_next)``,
    ``noisy_end`` and ``noiseless`` switch on a known mistake.
    """
    steps = []
    n = len(sigmas)
    for i in range(n):
        sigma, nxt = sigmas[i], sigmas[i + 1] if i + 1 < n else torch.zeros((), dtype=torch.float64)
        g2 = sigma**2 - nxt**2 if g2_of is None else g2_of(sigma, nxt)
        level = sigma if score_level is None else score_level(sigma, nxt)
        a = 1 - g2 / (data.var + level**2)
        last = i + 1 == n
        c = 0.0 if (last and not noisy_end) or noiseless else g2.sqrt()
        steps.append((a, (1 - a) * data.mean, c * torch.ones_like(data.mean)))
    return steps


def langevin_variant_law(target: GaussianData, x_law: Law, step_size: float, n_steps: int, score_coef: float = 0.5,
                         noise_coef: float | None = None) -> Law:
    """The law of n steps x′ = x + score_coef·α·∇log p + noise_coef·z (default: :func:`langevin_dynamics_law`).

    Other coefficients are the laws of known mistakes (α·∇log p, α·z, no noise, …).
    """
    return affine_chain(x_law, langevin_steps(target.mean, target.var, step_size, n_steps, score_coef, noise_coef))


def annealed_langevin_variant_law(data: GaussianData, x_law: Law, sigmas: torch.Tensor, step_lr: float,
                                  n_steps_each: int, *, ratio: Callable | None = None, ascending: bool = False,
                                  score_coef: float = 0.5, noise: Callable[[float], float] | None = None) -> Law:
    """Annealed Langevin with α_i = step_lr·ratio(σ_i, σ_0, σ_L) (default (σ_i/σ_L)²: :func:`annealed_langevin_law`).

    ``ascending`` runs the levels from the smallest; ``score_coef`` and ``noise(α)`` change each step.
    """
    ratio = ratio or (lambda s, first, last: (s / last) ** 2)
    levels = sigmas.flip(0) if ascending else sigmas
    alphas = [step_lr * ratio(s, sigmas[0], sigmas[-1]) for s in levels]
    return affine_chain(x_law, annealed_langevin_steps(data, levels, alphas, n_steps_each, score_coef, noise))


def pc_sample_variant_law(data: GaussianData, sigmas: torch.Tensor, start_var: float | None = None, **mistake) -> Law:
    """``pc_sample(..., n_corrector=0)`` from x ~ N(0, start_var) (default σ_0²) with the mistakes of
    :func:`pc_predictor_steps`; with no mistake, :func:`pc_sample_law`."""
    zero = torch.zeros_like(data.mean, dtype=torch.float64)
    start = (zero, (sigmas[0] ** 2 if start_var is None else start_var) * torch.ones_like(zero))
    return affine_chain(start, pc_predictor_steps(data, sigmas, **mistake))


# ---------------------------------------------------------------------------------------------
# DDIM's walks and the size of its terms (what the round-off of a correct implementation is relative to)
# ---------------------------------------------------------------------------------------------


def ddim_sample_moves(T: int, num_steps: int, spacing: str) -> list[tuple[int, int, int]]:
    """``(t_from, t_to, t_eval)`` of each move of ``ddim_sample``: down the timesteps, then to −1 (the data)."""
    ts = ddim_timesteps(T, num_steps, spacing).tolist()
    return [(t, ts[i + 1] if i + 1 < len(ts) else -1, t) for i, t in enumerate(ts)]


def ddim_invert_moves(T: int, num_steps: int, spacing: str) -> list[tuple[int, int, int]]:
    """``(t_from, t_to, t_eval)`` of each move of ``ddim_invert``: from −1 up the timesteps, ε at the target."""
    ts = ddim_timesteps(T, num_steps, spacing).flip(0).tolist()
    return [(ts[i - 1] if i else -1, t, t) for i, t in enumerate(ts)]


def ddim_run_moves(eps_model, x: torch.Tensor, alphas_cumprod: torch.Tensor, moves: list) -> torch.Tensor:
    """η = 0 DDIM along ``moves`` ``(t_from, t_to, t_eval)``, the model evaluated at ``t_eval``.

    ``ddim_run_moves(m, x_T, ᾱ, ddim_sample_moves(T, n, s))`` is ``ddim_sample`` from x_T and
    ``ddim_run_moves(m, x₀, ᾱ, ddim_invert_moves(T, n, s))`` is ``ddim_invert``; other walks
    are the samplers of known mistakes.
    """
    for t_from, t_to, t_eval in moves:
        eps = eps_model(x, torch.full((x.shape[0],), t_eval, dtype=torch.long, device=x.device))
        x = ddim_step(eps, t_from, t_to, x, alphas_cumprod)
    return x


def ddpm_ancestral_step(eps: torch.Tensor, t: int, xt: torch.Tensor, alphas_cumprod: torch.Tensor,
                        noise: torch.Tensor) -> torch.Tensor:
    """DDPM's ancestral step μ̃_t(x̂₀, x_t) + √β̃_t·z with x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t (Ho et al. 2020, Algorithm 2).

    Computed through the posterior q(x_{t−1} | x_t, x₀) of ``reference.q_sampler``, independently
    of DDIM: DDIM with η = 1 and t_prev = t − 1 must equal it.
    """
    a_t = alpha_bar(alphas_cumprod, t)
    x0_hat = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    previous = torch.cat([torch.ones(1, dtype=alphas_cumprod.dtype, device=alphas_cumprod.device), alphas_cumprod[:-1]])
    t_batch = torch.full((xt.shape[0],), t, dtype=torch.long, device=xt.device)
    mean, variance, _ = q_posterior(x0_hat, xt, t_batch, 1 - alphas_cumprod / previous)
    return mean + variance.sqrt() * noise


def ddim_terms_size(xt, eps, a_t, a_prev, sigma=0.0, noise=None) -> torch.Tensor:
    """M = Σ |terms| of √ᾱ_prev·(x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t + √(1 − ᾱ_prev − σ²)·ε + σ·z (float64).

    The terms can be large and cancel (1/√ᾱ_t reaches 2·10⁴ at the end of the cosine
    schedule), so a correct implementation's round-off is bounded relative to M, not to |x′|.
    """
    ratio = (a_prev / a_t).sqrt()
    size = ratio * (xt.abs() + (1 - a_t).sqrt() * eps.abs()) + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps.abs()
    if noise is not None:
        size = size + abs(sigma) * noise.abs()
    return size


def ddim_chain_terms_size(data: GaussianData, alphas_cumprod: torch.Tensor, moves: list, x: torch.Tensor) -> torch.Tensor:
    """The size that round-off along a chain of η = 0 DDIM moves is relative to (float64).

    ``moves`` are ``(t_from, t_to, t_eval)`` (:func:`ddim_sample_moves`). Each move is affine
    per coordinate with the optimal ε, x' = A·x + b; an error δ made at a move is carried as
    A·δ by every later one, so the size is S' = |A|·S + M, with M the size of the move's
    terms (:func:`ddim_terms_size`) plus those of the model's own ε = √n·(x − m)/v, whose
    round-off is relative to √n·(|x| + |m|)/v.
    """
    model = data.eps_model(alphas_cumprod)
    size = torch.zeros_like(x)
    for t_from, t_to, t_eval in moves:
        t_batch = torch.full((x.shape[0],), t_eval, dtype=torch.long, device=x.device)
        a_from, a_to, a_eval = (alpha_bar(alphas_cumprod, t) for t in (t_from, t_to, t_eval))
        eps = model(x, t_batch)
        x_next = ddim_step(eps, t_from, t_to, x, alphas_cumprod)
        slope = ddim_step(model(x + 1, t_batch), t_from, t_to, x + 1, alphas_cumprod) - x_next  # exact: affine
        m, v = data.noised(a_eval.sqrt(), 1 - a_eval, x)
        eps_size = (1 - a_eval).sqrt() * (x.abs() + m.abs()) / v
        eps_coefficient = (a_to / a_from).sqrt() * (1 - a_from).sqrt() + (1 - a_to).sqrt()
        size = slope.abs() * size + ddim_terms_size(x, eps, a_from, a_to) + eps_coefficient * eps_size
        x = x_next
    return size


# ---------------------------------------------------------------------------------------------
# The Langevin corrector read backwards: the noise of a step, from its two states
# ---------------------------------------------------------------------------------------------


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """‖v_b‖ over the non-batch dimensions, ``(B,)``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)


def recover_corrector_noise(x: torch.Tensor, x_next: torch.Tensor, score: torch.Tensor, snr: float) -> torch.Tensor:
    """The noise z of a corrector step x_next = x + ε·s + √(2ε)·z with ε = 2(snr·mean_b‖z_b‖/mean_b‖s_b‖)².

    Writing Δ = x_next − x, the relation holds iff mean_b‖Δ_b − ε·s_b‖ = ε·ḡ/snr with
    ḡ = mean_b‖s_b‖. The left side minus the right, f(ε), is convex, positive at 0 and
    has slope → ḡ(1 − 1/snr) < 0 (snr < 1): it is strictly decreasing with one root,
    found by bisection in float64 to relative precision 1e-15. Then z = (Δ − ε·s)/√(2ε).

    Raises:
        ValueError: the step cannot be read (a zero score, non-finite values, or ε = 0).
    """
    delta = x_next - x
    g_bar = float(per_sample_norm(score).mean())
    if not g_bar > 0 or not bool(torch.isfinite(delta).all()):
        raise ValueError("a corrector step could not be read off its states (zero score or non-finite values)")

    def f(eps: float) -> float:
        return float(per_sample_norm(delta - eps * score).mean()) - eps * g_bar / snr

    low, high = 0.0, float(per_sample_norm(delta).mean()) / (g_bar * (1 / snr - 1)) * 1.01 + 1e-300
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if f(mid) > 0 else (low, mid)
        if high - low <= 1e-15 * high:
            break
    eps = 0.5 * (low + high)
    if not eps > 0:
        raise ValueError("a corrector step did not move the samples: its step size ε is 0")
    return (delta - eps * score) / math.sqrt(2 * eps)


def pc_transition_noises(data: GaussianData, states: list[torch.Tensor], sigmas: torch.Tensor, n_corrector: int,
                         snr: float) -> tuple[list[torch.Tensor], list[str]]:
    """The noise of every transition of ``pc_sample`` with the exact VE score, read off the states the score saw.

    ``states`` are the ``L·(n_corrector + 1)`` full-batch inputs of the score, in order: at each
    level σ_i the corrector steps, then the predictor. The start is x = σ_0·z; a corrector step
    x′ = x + ε·s(x, σ_i) + √(2ε)·z (:func:`recover_corrector_noise`); a predictor step
    x′ = x + g²·s(x, σ_i) + g·z with g² = σ_i² − σ_{i+1}². For a correct sampler every noise is
    i.i.d. N(0, 1). Returns the noises and their kinds ("start", "corrector", "predictor").
    """
    per_level = n_corrector + 1
    noises, kinds = [states[0] / float(sigmas[0])], ["start"]
    for k in range(len(states) - 1):
        i, j = divmod(k, per_level)
        sigma = float(sigmas[i])
        s = data.score(states[k], torch.ones((), dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64) ** 2)
        if j < n_corrector:
            noises.append(recover_corrector_noise(states[k], states[k + 1], s, snr))
            kinds.append("corrector")
        else:
            g2 = sigma**2 - float(sigmas[i + 1]) ** 2
            noises.append((states[k + 1] - states[k] - g2 * s) / math.sqrt(g2))
            kinds.append("predictor")
    return noises, kinds


# ---------------------------------------------------------------------------------------------
# The VP SDE (sde): Euler–Maruyama and probability-flow samplers, denoising score matching
# ---------------------------------------------------------------------------------------------
#
# With the exact score of Gaussian data under the continuous VP SDE, s*(x, t) = −(x − a·μ)/v with
# a = mean_coef(t), v = a²·s² + (1 − a²) (reference.toy.vp_sde_coefficients), one Euler–Maruyama step
# x′ = x + (½β·x + β·s*)·dt + √(β·dt)·z is affine: A = 1 + ½β·dt − β·dt/v, b = β·dt·a·μ/v, S = √(β·dt);
# the probability-flow step is the same with ½β·s* and S = 0. The law of sde_sample is then exact.

__all__ += ["sde_grid", "sde_steps", "sde_sample_law", "sde_sample_variant_law", "dsm_loss_weights",
            "dsm_loss_minimum", "weighted_chi2_bounds", "weighted_chi2_p_value", "dsm_scale_gap_threshold",
            "dsm_scale_gap_p_value"]


def sde_grid(n_steps: int, eps: float = 1e-3) -> torch.Tensor:
    """The times of ``sde_sample``: linspace(1, eps, n_steps) in float64."""
    return torch.linspace(1.0, eps, n_steps, dtype=torch.float64)


def sde_steps(data: GaussianData, n_steps: int, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3,
              probability_flow: bool = False, *, ts: torch.Tensor | None = None, dt: float | None = None,
              beta_of: Callable | None = None, x_coef: float = 0.5, score_coef: float | None = None,
              noise_of: Callable | None = None, noisy_end: bool = False) -> list[tuple]:
    """The affine steps ``(A, b, S)`` of ``sde_sample`` with the exact VP score of ``data``, with optional mistakes.

    Step i at t = ts[i]: x′ = x + (x_coef·β·x + score_coef·β·s*(x, t))·dt + noise_of(β, dt)·z. The defaults are
    the sampler (ts = linspace(1, eps, n), dt = 1/n, β = β(t), x_coef = ½, score_coef = 1 (SDE) or ½ (ODE),
    noise √(β·dt) for the SDE and none for the ODE, the last step noise-free); other values are known mistakes
    (β_t = β(t)·dt for β(t), −½ in the drift, no ½ in the ODE, √β·dt for √(β·dt), …).
    """
    from reference.toy import vp_sde_coefficients

    mu, s2 = _params(data)
    ts = sde_grid(n_steps, eps) if ts is None else ts.to(torch.float64)
    dt = 1.0 / n_steps if dt is None else dt
    beta_of = beta_of or (lambda t: beta_min + t * (beta_max - beta_min))
    score_coef = (0.5 if probability_flow else 1.0) if score_coef is None else score_coef
    if noise_of is None:
        noise_of = (lambda beta, step: 0.0 * beta) if probability_flow else (lambda beta, step: (beta * step).sqrt())
    steps = []
    for i, t in enumerate(ts):
        a, n = vp_sde_coefficients(t, beta_min, beta_max)
        v = a**2 * s2 + n
        beta = _f64(beta_of(t), data)
        k = score_coef * beta * dt / v  # s* = −(x − a·μ)/v
        noise = 0.0 if (i + 1 == len(ts) and not noisy_end) else noise_of(beta, torch.tensor(dt, dtype=torch.float64))
        steps.append((1 + x_coef * beta * dt - k, k * a * mu, _f64(noise, data) * torch.ones_like(mu)))
    return steps


def sde_sample_law(data: GaussianData, n_steps: int, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3,
                   probability_flow: bool = False, x_T: torch.Tensor | None = None, x_T_law: Law | None = None) -> Law:
    """The exact law of ``sde_sample`` with the exact VP score of ``data`` (from x_T, a start law, or N(0, I)).

    For the probability-flow ODE from a fixed x_T the variance is 0 and the mean *is* the sample.
    """
    law = _start_law(data, x_T, x_T_law)
    return affine_chain(law, sde_steps(data, n_steps, beta_min, beta_max, eps, probability_flow))


def sde_sample_variant_law(data: GaussianData, n_steps: int, beta_min: float = 0.1, beta_max: float = 20.0,
                           eps: float = 1e-3, probability_flow: bool = False, x_T: torch.Tensor | None = None,
                           x_T_law: Law | None = None, **mistake) -> Law:
    """:func:`sde_sample_law` with the mistakes of :func:`sde_steps` (the laws known mistakes follow)."""
    law = _start_law(data, x_T, x_T_law)
    return affine_chain(law, sde_steps(data, n_steps, beta_min, beta_max, eps, probability_flow, **mistake))


def dsm_loss_weights(data: GaussianData, t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0,
                     scale: float = 1.0) -> torch.Tensor:
    """c ``(B, *D)`` such that, under the exact score, ``dsm_loss`` of x₀ ~ data is ½ Σ_i c_i·χ²₁ per sample.

    Derivation: x_t = a·x₀ + σ·z with a = mean_coef(t), σ² = 1 − a², and s*(x_t) = −(x_t − a·μ)/v, v = a²s² + σ².
    Then w = σ·s*(x_t) + z = −σ·a·(x₀ − μ)/v + (1 − σ²/v)·z, a sum of independent centred Gaussians, so
    w ~ N(0, σ²a²s²/v² + (a²s²/v)²) = N(0, a²s²/v) (since σ² + a²s² = v), independently over coordinates and samples,
    and the loss ½ Σ w_i² is ½ Σ_i c_i·χ²₁ with c = a²s²/v = 1 − σ²/v. Its mean ½ Σ_i c_i is the minimum over all
    score functions of the expected loss, attained by s* (:func:`dsm_loss_minimum`).

    With ``scale`` λ, the score λ·s* (a family of linear scores): w = −λσa(x₀ − μ)/v + (1 − λq)·z with q = σ²/v, so
    c(λ) = λ²·c·q + (1 − λq)² = c + q·(λ − 1)², larger than c for every λ ≠ 1 (the minimum is at the true score).
    """
    from reference.toy import vp_sde_coefficients

    mu, s2 = _params(data)
    a, n = vp_sde_coefficients(_f64(t, data), beta_min, beta_max)
    a, n = a.reshape(-1, *([1] * mu.ndim)), n.reshape(-1, *([1] * mu.ndim))
    v = a**2 * s2 + n
    c, q = a**2 * s2 / v, n / v
    return c if scale == 1.0 else c + q * (scale - 1) ** 2


def dsm_loss_minimum(data: GaussianData, t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """E[dsm_loss] under the exact score, ``(B,)``: ½ Σ_i (1 − σ_t²/v_i), the closed-form minimum (see above)."""
    c = dsm_loss_weights(data, t, beta_min, beta_max)
    return 0.5 * c.reshape(c.shape[0], -1).sum(-1)


def weighted_chi2_bounds(weights: torch.Tensor, level: float) -> tuple[float, float]:
    """(low, high) with P(S ≤ low) ≤ level/2 and P(S ≥ high) ≤ level/2 for S = ½ Σ_j c_j·χ²₁ (independent).

    Chernoff with the exact cumulant generating function K(θ) = −½ Σ log(1 − θ·c_j) (θ < 1/max c): for θ > 0,
    P(S ≥ s) ≤ exp(−(θs − K(θ))) ≤ level/2 as soon as s ≥ (L + K(θ))/θ with L = log(2/level), so
    high = inf_{θ>0} (L + K(θ))/θ; likewise low = sup_{θ<0} (L + K(θ))/θ. Each one-dimensional optimum is found by
    golden-section search in float64 (any θ gives a valid bound, so an inexact optimum only loosens it).
    """
    c = weights.detach().to("cpu", torch.float64).flatten()
    c = c[c > 0]
    target = math.log(2 / level)

    def bound(theta: float) -> float:
        return (target + float(-0.5 * torch.log1p(-theta * c).sum())) / theta

    def golden(lo: float, hi: float, sign: int) -> float:
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(40):
            m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
            if sign * bound(m1) < sign * bound(m2):
                hi = m2
            else:
                lo = m1
        return bound(0.5 * (lo + hi))

    top = 1 / float(c.max())
    return golden(-1e3 * top, -1e-12 * top, -1), golden(1e-12 * top, top * (1 - 1e-9), +1)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++(2M) (dpm_solver): its affine map, the exact flow of the probability-flow ODE, its order
# ---------------------------------------------------------------------------------------------
#
# With the optimal ε of Gaussian data the data prediction is affine, x̂₀(x, t) = μ + g_t·(x − α_t·μ) with
# g_t = α_t·s²/(α_t²·s² + σ_t²) (= E[x₀ | x_t]), and both steps of DPM-Solver++ are affine in (x_t, x̂₀,
# x̂₀_last), so the sampler from x_T is x = P·x_T + Q per coordinate. Written here with e^{−h} =
# (α_t·σ_prev)/(σ_t·α_prev), so that −α_prev·(e^{−h} − 1) = α_prev − α_t·σ_prev/σ_t, finite at σ_prev = 0.
# The probability-flow ODE moves the marginal N(α·μ, α²s² + σ²) onto itself monotonically, coordinate by
# coordinate, so its exact flow from t to t′ is x′ = α′μ + √((α′²s² + σ′²)/(α²s² + σ²))·(x − αμ).

__all__ += ["dpm_solver_sample_affine", "dpm_solver_sample_law", "pf_ode_flow", "dpm_solver_exact_endpoint",
            "lambda_uniform_alphas_cumprod", "convergence_order"]


def _alpha_sigma(alphas_cumprod: torch.Tensor, t: int, data: GaussianData) -> tuple[torch.Tensor, torch.Tensor]:
    a = _alpha_bar(alphas_cumprod, t, data)
    return a.sqrt(), (1 - a).sqrt()


def _dpm_lambda64(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return alpha.log() - sigma.log()


def dpm_solver_sample_affine(data: GaussianData, alphas_cumprod: torch.Tensor, num_steps: int, *,
                             first_order_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, Q) of ``dpm_solver_sample`` from a given x_T with the optimal ε of ``data``: the output is P·x_T + Q.

    Walks ``dpm_solver_timesteps`` (restated here as numpy's linspace), first-order at the first step and at
    the last one, 2M in between (``first_order_only``: DDIM, every step first order). Derived in ᾱ with the
    affine x̂₀ (the section's comment), independently of ``reference.dpm_solver``'s code; float64.
    """
    mu, s2 = _params(data)
    T = alphas_cumprod.shape[0]
    step = (T - 1) / num_steps
    ts = ([round(i * step) for i in range(1, num_steps)] + [T - 1])[::-1]
    p, q = torch.ones_like(mu), torch.zeros_like(mu)  # x = p·x_T + q
    last = None  # (p, q) of x̂₀ at the step before, and its λ
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        alpha, sigma = _alpha_sigma(alphas_cumprod, t, data)
        alpha_p, sigma_p = _alpha_sigma(alphas_cumprod, t_prev, data)
        g = alpha * s2 / (alpha**2 * s2 + sigma**2)
        x0 = (g * p, mu + g * (q - alpha * mu))  # x̂₀ = μ + g·(x − α·μ)
        c = alpha_p - alpha * sigma_p / sigma  # −α_prev·(e^{−h} − 1)
        lam = _dpm_lambda64(alpha, sigma)
        if i == 0 or t_prev < 0 or first_order_only:
            d = x0
        else:
            r = (lam - last[1]) / (_dpm_lambda64(alpha_p, sigma_p) - lam)
            d = tuple(u + 0.5 * (u - v) / r for u, v in zip(x0, last[0]))  # D₀ + ½·D₁
        p, q = sigma_p / sigma * p + c * d[0], sigma_p / sigma * q + c * d[1]
        last = (x0, lam)
    return p, q


def dpm_solver_sample_law(data: GaussianData, alphas_cumprod: torch.Tensor, num_steps: int,
                          x_T: torch.Tensor | None = None, x_T_law: Law | None = None) -> Law:
    """The exact law of ``dpm_solver_sample`` with the optimal ε-model of ``data`` (x_T given, its law, or N(0, I)).

    The sampler is deterministic and affine in x_T (:func:`dpm_solver_sample_affine`): from a fixed x_T the
    mean *is* the output and the variance is 0; from x_T ~ N(m, v) the output is N(P·m + Q, P²·v).
    """
    return affine_law(_start_law(data, x_T, x_T_law), *dpm_solver_sample_affine(data, alphas_cumprod, num_steps), 0.0)


def pf_ode_flow(data: GaussianData, alphas_cumprod: torch.Tensor, t: int, t_to: int, x: torch.Tensor) -> torch.Tensor:
    """The exact solution at t_to of the probability-flow ODE started at x_t = x, for Gaussian data (float64).

    x′ = α′·μ + √((α′²s² + σ′²)/(α²s² + σ²))·(x − α·μ): the monotone map of N(αμ, α²s² + σ²) onto
    N(α′μ, α′²s² + σ′²), which is what the ODE's flow is in one dimension (it carries each marginal onto the
    next and cannot cross trajectories), coordinate by coordinate. ``t_to < 0`` is the data.
    """
    mu, s2 = _params(data)
    alpha, sigma = _alpha_sigma(alphas_cumprod, t, data)
    alpha_to, sigma_to = _alpha_sigma(alphas_cumprod, t_to, data)
    scale = ((alpha_to**2 * s2 + sigma_to**2) / (alpha**2 * s2 + sigma**2)).sqrt()
    return alpha_to * mu + scale * (x.to(torch.float64) - alpha * mu)


def dpm_solver_exact_endpoint(data: GaussianData, alphas_cumprod: torch.Tensor, num_steps: int,
                              x_T: torch.Tensor) -> torch.Tensor:
    """What ``dpm_solver_sample`` would return if every step but the last were exact: the ODE's exact flow from
    T − 1 to the last timestep t_L, then the last, first-order step to the data, x̂₀(x_{t_L}, t_L) = E[x₀ | x_{t_L}].

    The last step is first order by design (its h is infinite) and its error, the shrinkage of E[x₀ | x_{t_L}]
    against the flow, is O(σ²_{t_L}): it would make any sampler look first order. Measured against this
    endpoint, a sampler's error is its error at t_L times the last step's slope g_{t_L} (≈ 1/α_{t_L}), which is
    what the solver's order governs.
    """
    mu, s2 = _params(data)
    T = alphas_cumprod.shape[0]
    t_last = round((T - 1) / num_steps) if num_steps > 1 else T - 1
    x = pf_ode_flow(data, alphas_cumprod, T - 1, t_last, x_T)
    alpha, sigma = _alpha_sigma(alphas_cumprod, t_last, data)
    return mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (x - alpha * mu)


def lambda_uniform_alphas_cumprod(T: int, lambda_max: float = 5.0, lambda_min: float = -5.0) -> torch.Tensor:
    """A float64 schedule ᾱ_t = sigmoid(2λ_t) with λ_t linear in t, from λ_max at t = 0 to λ_min at t = T − 1.

    ᾱ = α²/(α² + σ²) = 1/(1 + e^{−2λ}). Timesteps equally spaced in t are then equally spaced in λ (exactly
    when num_steps divides T − 1), so every step of DPM-Solver has the same h = (λ_max − λ_min)/num_steps and
    r = 1: the regime in which its order of convergence is defined. The defaults span ᾱ from 0.99995 to
    4.5e-5, as the course's linear schedule does (ᾱ_0 = 0.9999, ᾱ_999 = 4.0e-5).
    """
    lam = lambda_max + (lambda_min - lambda_max) * torch.arange(T, dtype=torch.float64) / (T - 1)
    return torch.sigmoid(2 * lam)


def convergence_order(nfes, errors) -> float:
    """The order p of error ∝ NFE^{−p}: minus the least-squares slope of log(error) against log(NFE)."""
    x = torch.log(torch.as_tensor(nfes, dtype=torch.float64))
    y = torch.log(torch.as_tensor(errors, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    return float(-(x * y).sum() / (x * x).sum())


__all__ += ["dpm_solver_chain_terms_size"]


def dpm_solver_chain_terms_size(data: GaussianData, alphas_cumprod: torch.Tensor, num_steps: int,
                                x_T: torch.Tensor) -> torch.Tensor:
    """The size that round-off along ``dpm_solver_sample`` from x_T is relative to (float64, per element).

    Each operation errs relative to the size of its operands, and an error is carried by the chain's slopes
    (the map is affine): with x̂₀ = (x − σ·ε)/α, an error δ in x gives g·δ in x̂₀ (g = ∂E[x₀|x]/∂x) plus x̂₀'s
    own round-off, relative to (|x| + σ·|ε|)/α (1/α reaches 160 at the end of the linear schedule, 2·10⁴ at
    that of the cosine one); a step x′ = ρ·x + c·D (D = x̂₀, or D₀ + ½D₁ with D₁ = (x̂₀ − x̂₀_last)/r) carries
    the error of x by |ρ| and that of D by |c|, and adds its own terms |ρ·x| + |c|·|D|. The result bounds a
    correct implementation's error in units of the relative round-off of one operation.
    """
    mu, s2 = _params(data)
    T = alphas_cumprod.shape[0]
    step = (T - 1) / num_steps
    ts = ([round(i * step) for i in range(1, num_steps)] + [T - 1])[::-1]
    x = x_T.to(torch.float64)
    size_x = torch.zeros_like(x)
    last = None  # (x̂₀, its error size, λ) of the step before
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        alpha, sigma = _alpha_sigma(alphas_cumprod, t, data)
        alpha_p, sigma_p = _alpha_sigma(alphas_cumprod, t_prev, data)
        v = alpha**2 * s2 + sigma**2
        eps = sigma * (x - alpha * mu) / v
        x0 = (x - sigma * eps) / alpha
        size_x0 = alpha * s2 / v * size_x + (x.abs() + sigma * eps.abs() + sigma**2 * (x.abs() + alpha * mu.abs()) / v) / alpha
        lam = _dpm_lambda64(alpha, sigma)
        c = alpha_p - alpha * sigma_p / sigma
        if i == 0 or t_prev < 0:
            d, size_d = x0, size_x0
        else:
            r = (lam - last[2]) / (_dpm_lambda64(alpha_p, sigma_p) - lam)
            d = x0 + 0.5 * (x0 - last[0]) / r
            size_d = size_x0 * (1 + 0.5 / r.abs()) + last[1] * 0.5 / r.abs() + 0.5 * (x0 - last[0]).abs() / r.abs()
        x_next = sigma_p / sigma * x + c * d
        size_x = sigma_p / sigma * (size_x + x.abs()) + c.abs() * (size_d + d.abs())
        last, x = (x0, size_x0, lam), x_next
    return size_x


def weighted_chi2_p_value(weights: torch.Tensor, value: float) -> float:
    """A two-sided p-value bound for S = ½ Σ_j c_j·χ²₁ observed at ``value``: min(1, 2·exp(−sup_θ [θs − K(θ)])), the
    supremum over θ of the sign of s − E S (Chernoff, as :func:`weighted_chi2_bounds`; conservative: ≥ the exact one)."""
    c = weights.detach().to("cpu", torch.float64).flatten()
    c = c[c > 0]
    mean, top = 0.5 * float(c.sum()), 1 / float(c.max())
    if not math.isfinite(value):
        return 0.0

    def rate(theta: float) -> float:
        return theta * value + float(0.5 * torch.log1p(-theta * c).sum())

    lo, hi = (1e-12 * top, top * (1 - 1e-9)) if value >= mean else (-1e3 * top, -1e-12 * top)
    return min(1.0, 2 * math.exp(-max(_golden_max(rate, lo, hi), 0.0)))


def _dsm_gap_terms(data: GaussianData, t: torch.Tensor, scale: float, beta_min: float, beta_max: float):
    c = dsm_loss_weights(data, t, beta_min, beta_max).flatten()
    return c, (1 - c).clamp(min=0), (scale - 1) ** 2


def _golden_max(f: Callable[[float], float], lo: float, hi: float) -> float:
    """max f on [lo, hi] for a unimodal f, by golden-section search (40 steps: the bracket shrinks by 4e-9)."""
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if f(m1) > f(m2):
            hi = m2
        else:
            lo = m1
    return f(0.5 * (lo + hi))


def dsm_scale_gap_p_value(data: GaussianData, t: torch.Tensor, scale: float, gap: float, beta_min: float = 0.1,
                          beta_max: float = 20.0) -> float:
    """A bound on P(Σ_b [L_λ(b) − L_1(b)] ≤ gap) (Chernoff, as :func:`dsm_scale_gap_threshold`): a one-sided p-value."""
    c, q, g = _dsm_gap_terms(data, t, scale, beta_min, beta_max)
    if not math.isfinite(gap):
        return 0.0

    gq, gqc = g * q, g * q * c

    def exponent(theta: float) -> float:  # −log of the bound at θ
        return -theta * gap + 0.5 * float(torch.log1p(theta * gq - theta**2 * gqc).sum())

    return min(1.0, math.exp(-max(_golden_max(exponent, 1e-9, (1 - 1e-9) / float(c.max())), 0.0)))


def dsm_scale_gap_threshold(data: GaussianData, t: torch.Tensor, scale: float, level: float, beta_min: float = 0.1,
                            beta_max: float = 20.0) -> float:
    """d* with P(Σ_b [L_λ(b) − L_1(b)] ≤ d*) ≤ level: how much more DSM loss λ·s* must have than s* on the same draws.

    With the same x₀ ~ data, t and z for both scores, per coordinate w₁ = σs* + z ~ N(0, c) and u = σs* ~ N(0, q)
    are independent (jointly Gaussian with E[w₁u] = q − q = 0; c, q as in :func:`dsm_loss_weights`), and the loss
    difference is Σ T with T = (λ − 1)·w₁·u + ½(λ − 1)²·u², mean ½(λ − 1)²q. Given u, T is Gaussian in w₁, so
    E e^{−θT} = (1 + θ·g·q·(1 − θc))^{−1/2} with g = (λ − 1)², exactly, and by Chernoff
    P(ΣT ≤ d) ≤ exp(θd − ½ Σ log(1 + θgq(1 − θc))) for 0 < θ < 1/max c. Hence
    d* = sup_θ [log(level) + ½ Σ log(1 + θgq(1 − θc))]/θ, maximised by golden-section search (any θ is a valid bound).
    """
    c, q, g = _dsm_gap_terms(data, t, scale, beta_min, beta_max)
    gq, gqc, log_level = g * q, g * q * c, math.log(level)

    def bound(theta: float) -> float:
        return (log_level + 0.5 * float(torch.log1p(theta * gq - theta**2 * gqc).sum())) / theta

    return _golden_max(bound, 1e-9, (1 - 1e-9) / float(c.max()))
