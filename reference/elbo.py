"""The variational bound of DDPM, term by term, in bits per dimension.

Notation (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, "Improved DDPM", eqs. 4–7),
with zero-based timesteps t ∈ {0, …, T−1} (step 0 is the first noising step):

    L_T      KL(q(x_{T−1} | x₀) ‖ N(0, I))                            the prior term
    L_t      KL(q(x_{t−1} | x_t, x₀) ‖ p_θ(x_{t−1} | x_t)),  t > 0    the denoising terms
    L_0      −log p_θ(x₀ | x_t=0)                                     the decoder term
    −log p_θ(x₀) ≤ L_T + Σ_{t=0}^{T−1} L_t      (in expectation over q(x_{0…T−1} | x₀))

Units: :func:`normal_kl` and :func:`discretized_gaussian_log_likelihood` are
elementwise and in nats. The ``*_bpd`` functions are ``(B,)`` bits per dimension:
the per-dim mean (over every non-batch dimension) of nats, divided by ln 2.
Results have the data's dtype and device; schedule constants are float64 (see
:mod:`reference.q_sampler`).

The two ``exact_gaussian_*`` functions at the end are analytic oracles, not
curriculum functions: for Gaussian data and its optimal ε-model the reverse
chain is linear, so both the model's exact likelihood of discretised data and the
expectation of :func:`elbo_bpd` have closed forms. :class:`ElboLaw` goes further:
the whole law of one estimate (its cumulant generating function), from which
:func:`chernoff_deviation` gives thresholds at a guaranteed level for the mean of
many estimates. improved-diffusion's tanh approximation of the normal CDF
(:func:`tanh_normal_cdf`) is the other accepted decoder; every function that sees
the decoder takes its CDF by name, "erf" (exact) or "tanh" (:data:`NORMAL_CDFS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy import optimize, special

from reference._broadcast import extract
from reference.parametrization import predict_x0_from_eps
from reference.q_sampler import compute_alphas_cumprod, posterior_coefficients, q_posterior, q_sample
from reference.toy import GaussianData

__all__ = [
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "prior_bpd",
    "vlb_term_bpd",
    "elbo_bpd",
    # Analytic oracles for Gaussian data (not curriculum functions).
    "exact_gaussian_nll_bpd",
    "exact_gaussian_elbo_bpd",
    # improved-diffusion's approximate normal CDF, and the exact law of one elbo_bpd estimate.
    "NORMAL_CDFS",
    "tanh_normal_cdf",
    "discretized_gaussian_log_likelihood_with",
    "vlb_term_bpd_with",
    "vlb_term_parts",
    "LEVELS",
    "to_levels",
    "ElboLaw",
    "chernoff_deviation",
    "normal_p_value",
]

LN2 = math.log(2.0)
BIN_HALF_WIDTH = 1.0 / 255.0
"""Half the width of one of the 256 quantisation bins of data scaled to [−1, 1] (x = −1 + 2k/255)."""
EDGE = 0.999
"""x < −EDGE is the lowest bin, x > EDGE the highest (improved-diffusion's thresholds)."""
PROB_FLOOR = 1e-12
"""Bin probabilities are clamped here before the log, as in improved-diffusion."""
LEVELS = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255
"""The 256 levels of 8-bit data scaled to [−1, 1], −1 + 2k/255 (float64, CPU)."""


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Each value of ``x`` rounded to the nearest of the 256 :data:`LEVELS` (clamped to [−1, 1]), float64 on x's device."""
    return LEVELS.to(x.device)[((x.clamp(-1, 1) + 1) * 127.5).round().long()]


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: ``(B, ...)`` → ``(B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats.

    KL = ½ · (log σ₂²/σ₁² + σ₁²/σ₂² − 1 + (μ₁ − μ₂)²/σ₂²)
       = ½ · (expm1(r) − r + (μ₁ − μ₂)² · e^{−logvar2}),   r = logvar1 − logvar2.

    The same quantity as improved-diffusion's ``losses.normal_kl`` (Nichol &
    Dhariwal 2021), which writes −1 + (−r) + e^r; expm1(r) − r is ≥ 0 in floating
    point (expm1 is faithfully rounded and expm1(r) > r for r ≠ 0) and exactly 0
    when the two distributions are equal.

    Args:
        mean1, logvar1, mean2, logvar2: tensors (or Python floats, at least one
            tensor) that broadcast together.

    Returns:
        The broadcast shape, in nats, with torch's promoted dtype of the tensor arguments.
    """
    args = (mean1, logvar1, mean2, logvar2)
    like = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if like is None:
        like = torch.as_tensor(0.0, dtype=torch.float64)
    mean1, logvar1, mean2, logvar2 = (
        a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in args
    )
    log_ratio = logvar1 - logvar2
    return 0.5 * (torch.expm1(log_ratio) - log_ratio + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data x ∈ [−1, 1] under a discretised N(mean, e^{2·log_scale}).

    log P(x) = log(Φ((x + 1/255 − μ)/s) − Φ((x − 1/255 − μ)/s)),   s = e^log_scale,

    with the lowest bin (x < −0.999) extended to −∞, log Φ((x + 1/255 − μ)/s), and
    the highest (x > 0.999) to +∞, log(1 − Φ((x − 1/255 − μ)/s)); probabilities
    are clamped at 1e-12 before the log. Ho et al. (2020), eq. 13; improved-
    diffusion's ``losses.discretized_gaussian_log_likelihood``.

    Φ here is the exact normal CDF (``torch.special.ndtr``). improved-diffusion
    uses the tanh approximation 0.5·(1 + tanh(√(2/π)·(z + 0.044715·z³))), whose
    CDF error is below 2e-4; both are accepted as correct answers. A bin above
    the mean is computed from the upper tail, Φ(−lower) − Φ(−upper), so that a
    bin far from the mean keeps its relative accuracy instead of cancelling two
    CDF values near 1.

    Args:
        x: ``(B, ...)`` data on the grid −1 + 2k/255, k = 0…255.
        mean: the Gaussian means, broadcasting against ``x``.
        log_scale: log standard deviations (½ · log-variance), broadcasting against ``x``.

    Returns:
        The broadcast shape of the three, in nats (≤ 0), with torch's promoted dtype.
    """
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (centered + BIN_HALF_WIDTH)  # standardised upper bin edge
    lower = inv_scale * (centered - BIN_HALF_WIDTH)  # standardised lower bin edge
    cdf = torch.special.ndtr
    bin_prob = torch.where(centered > 0, cdf(-lower) - cdf(-upper), cdf(upper) - cdf(lower))
    return torch.where(
        x < -EDGE,
        torch.log(cdf(upper).clamp(min=PROB_FLOOR)),
        torch.where(
            x > EDGE,
            torch.log(cdf(-lower).clamp(min=PROB_FLOOR)),
            torch.log(bin_prob.clamp(min=PROB_FLOOR)),
        ),
    )


def prior_bpd(x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_{T−1} | x₀) ‖ N(0, I)) in bits per dimension.

    q(x_{T−1} | x₀) = N(√ᾱ_{T−1} · x₀, (1 − ᾱ_{T−1}) I)  (Ho et al. 2020, eqs. 4–5);
    it has no parameters, and is ≈ 0 for a schedule that ends in pure noise.

    Args:
        x0: ``(B, ...)`` clean data.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B,)`` bits/dim, in ``x0``'s dtype and device.
    """
    T = alphas_cumprod.shape[0]
    t = torch.full((x0.shape[0],), T - 1, dtype=torch.long, device=alphas_cumprod.device)
    mean = extract(alphas_cumprod.sqrt(), t, x0) * x0
    log_variance = extract(torch.log1p(-alphas_cumprod), t, x0)  # log(1 − ᾱ_{T−1}), in float64 first
    kl = normal_kl(mean, log_variance, 0.0, 0.0)
    return _mean_flat(kl.expand_as(x0)) / LN2


def vlb_term_bpd(
    model_mean: torch.Tensor,
    model_log_variance: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    betas: torch.Tensor,
) -> torch.Tensor:
    """One term L_t of the variational bound, in bits per dimension, for the model N(model_mean, e^model_log_variance).

    t > 0:  L_t = KL(q(x_{t−1} | x_t, x₀) ‖ N(model_mean, e^model_log_variance))   (Ho et al. eq. 5)
    t = 0:  L_0 = −log p(x₀ | x_t) with :func:`discretized_gaussian_log_likelihood`
            and log_scale = ½ · model_log_variance                                 (Ho et al. eq. 13)

    improved-diffusion's ``_vb_terms_bpd``; the posterior of the KL uses the
    clipped log-variance of :func:`reference.q_sampler.q_posterior`, which equals
    log β̃_t for every t > 0.

    Args:
        model_mean: ``(B, ...)`` the mean of p_θ(x_{t−1} | x_t), in data units.
        model_log_variance: its log-variance (nats), broadcasting against ``model_mean``.
        x0: ``(B, ...)`` clean data (on the 256-level grid where t = 0).
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps; rows may mix t = 0 and t > 0.
        betas: ``(T,)`` β, T ≥ 2.

    Returns:
        ``(B,)`` bits/dim, in ``model_mean``'s dtype and device.
    """
    return _vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas, "erf")


def vlb_term_parts(model_mean, model_log_variance, x0, xt, t, betas, cdf: str = "erf") -> tuple[torch.Tensor, torch.Tensor]:
    """Both candidates of :func:`vlb_term_bpd` on every row: (the KL to the posterior, the decoder NLL), bits/dim.

    :func:`vlb_term_bpd` takes the decoder NLL where t = 0 and the KL elsewhere; ``cdf`` names the decoder's
    normal CDF (:data:`NORMAL_CDFS`). Each ``(B,)``, in ``model_mean``'s dtype and device.
    """
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    decoder_nll = -discretized_gaussian_log_likelihood_with(cdf)(x0, model_mean, 0.5 * model_log_variance)
    return _mean_flat(kl.expand_as(model_mean)) / LN2, _mean_flat(decoder_nll.expand_as(model_mean)) / LN2


def _vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas, cdf: str) -> torch.Tensor:
    """:func:`vlb_term_bpd` with the decoder's normal CDF named ``cdf``."""
    kl_bpd, decoder_bpd = vlb_term_parts(model_mean, model_log_variance, x0, xt, t, betas, cdf)
    is_decoder = torch.as_tensor(t, device=kl_bpd.device) == 0
    return torch.where(is_decoder, decoder_bpd, kl_bpd)


def elbo_bpd(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    betas: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A one-sample estimate of the negative ELBO, L_T + Σ_{t=0}^{T−1} L_t, in bits per dimension.

    For every t = 0, …, T−1 in increasing order, ε ~ N(0, I) is drawn with
    ``torch.randn(x0.shape, generator=generator)`` on ``x0``'s device and in its
    dtype, x_t = q_sample(x₀, t, ε), and the model's reverse step is

        x̂₀ = (x_t − √(1 − ᾱ_t) · ε_θ(x_t, t)) / √ᾱ_t,
        p_θ(x_{t−1} | x_t) = N(μ̃_t(x̂₀, x_t), β̃_t I)      (Ho et al. 2020, eqs. 7, 11)

    with the clipped log β̃ of :func:`reference.q_sampler.q_posterior` (log β̃₁ at
    t = 0, improved-diffusion). x̂₀ is not clipped to [−1, 1] (improved-diffusion's
    ``calc_bpd_loop`` clips by default, which is another model). The expectation
    over the draws upper-bounds −log p_θ(x₀)/(D ln 2) for 8-bit x₀ (Ho et al. eq. 5).
    Call it under ``torch.no_grad()`` to evaluate a network: every one of the T
    model calls stays in the autograd graph otherwise.

    Args:
        eps_model: ``eps_model(x, t) -> eps``, t a LongTensor ``(B,)``.
        x0: ``(B, ...)`` clean data on the 256-level grid −1 + 2k/255.
        betas: ``(T,)`` β, T ≥ 2.
        generator: draws the T noise tensors; on ``x0``'s device. None: torch's global generator.

    Returns:
        ``(B,)`` bits/dim, in ``x0``'s dtype and device.

    Raises:
        ValueError: fewer than two timesteps (the clipped log-variance needs β̃₁).
    """
    T = betas.shape[0]
    if T < 2:
        raise ValueError(f"elbo_bpd needs a schedule of at least 2 steps (log β̃₀ is clipped to log β̃₁); got T = {T}")
    alphas_cumprod = compute_alphas_cumprod(betas)
    log_variance_clipped = posterior_coefficients(betas)["posterior_log_variance_clipped"]
    total = prior_bpd(x0, alphas_cumprod)
    for step in range(T):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = q_sample(x0, t, alphas_cumprod, noise=noise)
        x0_hat = predict_x0_from_eps(xt, t, eps_model(xt, t), alphas_cumprod)
        model_mean, _, _ = q_posterior(x0_hat, xt, t, betas)
        model_log_variance = extract(log_variance_clipped, t, x0)
        total = total + vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas)
    return total


# --------------------------------------------------------------------------------------------
# Analytic oracles for Gaussian data x₀ ~ N(μ, diag(s²)) and its optimal ε-model
# (reference.toy.GaussianData.eps_model). The optimal denoiser is affine,
#     x̂₀(x_t) = A_t · x_t + B_t,   A_t = √ᾱ_t s² / V_t,   B_t = (1 − ᾱ_t) μ / V_t,   V_t = ᾱ_t s² + 1 − ᾱ_t,
# so the model mean μ̃_t(x̂₀, x_t) = M_t · x_t + c_t is affine too and the whole reverse chain is
# linear-Gaussian (Pierret & Galerne, ICML 2025).
# --------------------------------------------------------------------------------------------


def _gaussian_chain(data, betas: torch.Tensor, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 ``(T, *D)`` coefficients of the affine denoiser and reverse mean, on ``like``'s device."""
    f64 = dict(dtype=torch.float64, device=like.device)
    betas = betas.to(**f64)
    mu, s2 = data.mean.to(**f64), data.var.to(**f64)
    c = {k: v.reshape(-1, *([1] * mu.ndim)) for k, v in posterior_coefficients(betas).items()}
    alpha_bar = compute_alphas_cumprod(betas).reshape(-1, *([1] * mu.ndim))
    a, n = alpha_bar.sqrt(), 1 - alpha_bar
    V = alpha_bar * s2 + n
    A, B = a * s2 / V, n * mu / V
    return {
        "a": a,
        "n": n,
        "A": A,
        "B": B,
        "M": c["posterior_mean_coef1"] * A + c["posterior_mean_coef2"],
        "c": c["posterior_mean_coef1"] * B,
        "coef1": c["posterior_mean_coef1"],
        "variance": c["posterior_variance"].expand_as(A),
        "log_variance": c["posterior_log_variance_clipped"].expand_as(A),
    }


def exact_gaussian_nll_bpd(data, x0: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """Exact −log p_θ(x₀) in bits/dim of the model :func:`elbo_bpd` builds from Gaussian data's optimal ε.

    From x_{T−1} ~ N(0, I), each step x_{t−1} = M_t x_t + c_t + √β̃_t z keeps the
    marginal Gaussian, N(m, v) with m ← M_t m + c_t, v ← M_t² v + β̃_t, down to
    x_{t=0}. The decoder N(M_0 x + c_0, e^{log β̃₁}) integrated over that marginal
    is N(M_0 m + c_0, M_0² v + β̃₁), discretised like
    :func:`discretized_gaussian_log_likelihood` (integrating a bin's probability
    over a Gaussian mean is the bin's probability under the convolved Gaussian).

    Args:
        data: a :class:`reference.toy.GaussianData` with ``mean``, ``var`` of shape ``D``.
        x0: ``(B, *D)`` data on the 256-level grid.
        betas: ``(T,)`` β, T ≥ 2.

    Returns:
        ``(B,)`` bits/dim, in ``x0``'s dtype and device. ``elbo_bpd``'s expectation is ≥ this.
    """
    chain = _gaussian_chain(data, betas, x0)
    m = torch.zeros_like(chain["A"][0])
    v = torch.ones_like(chain["A"][0])
    for t in range(betas.shape[0] - 1, 0, -1):
        m = chain["M"][t] * m + chain["c"][t]
        v = chain["M"][t] ** 2 * v + chain["log_variance"][t].exp()
    mean = chain["M"][0] * m + chain["c"][0]
    log_scale = 0.5 * torch.log(chain["M"][0] ** 2 * v + chain["log_variance"][0].exp())
    log_p = discretized_gaussian_log_likelihood(x0.to(torch.float64), mean, log_scale)
    return (-_mean_flat(log_p) / LN2).to(x0.dtype)


def _hermite_nodes(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Hermite nodes and weights for E_{z~N(0,1)}[f(z)] (Golub–Welsch), float64 ``(n,)`` each."""
    k = torch.arange(1, n, dtype=torch.float64, device=like.device).sqrt()
    nodes, vectors = torch.linalg.eigh(torch.diag(k, 1) + torch.diag(k, -1))
    return nodes, vectors[0] ** 2


def exact_gaussian_elbo_bpd(data, x0: torch.Tensor, betas: torch.Tensor, n_nodes: int = 64) -> torch.Tensor:
    """E[elbo_bpd(data.eps_model(ᾱ), x0, betas)] over the noise draws, in bits/dim, for Gaussian data.

    With the affine optimal denoiser, x₀ − x̂₀(x_t) = (1 − A_t √ᾱ_t) x₀ − B_t − A_t √(1 − ᾱ_t) ε, so
        E[L_t] = coef1_t² · (((1 − A_t √ᾱ_t) x₀ − B_t)² + A_t² (1 − ᾱ_t)) / (2 β̃_t),   t > 0,
    L_T is deterministic, and E[L_0] = E_ε[−log P(x₀ | M_0 x_0noised + c_0, ½ log β̃₁)] is a smooth
    1-D integral done by Gauss–Hermite quadrature with ``n_nodes`` nodes.

    Args:
        data: a :class:`reference.toy.GaussianData` with ``mean``, ``var`` of shape ``D``.
        x0: ``(B, *D)`` data on the 256-level grid.
        betas: ``(T,)`` β, T ≥ 2.
        n_nodes: quadrature nodes for the decoder term.

    Returns:
        ``(B,)`` bits/dim, in ``x0``'s dtype and device.
    """
    chain = _gaussian_chain(data, betas, x0)
    x = x0.to(torch.float64)
    T = betas.shape[0]
    # L_T.
    prior = normal_kl(chain["a"][T - 1] * x, torch.log(chain["n"][T - 1]).expand_as(x), 0.0, 0.0)
    # Σ_{t>0} E[L_t] = Σ_t w_t ((p_t x₀ − q_t)² + r_t): expand the square to sum over t once.
    w = chain["coef1"][1:] ** 2 / (2 * chain["variance"][1:])
    p = 1 - chain["A"][1:] * chain["a"][1:]
    q = chain["B"][1:]
    r = chain["A"][1:] ** 2 * chain["n"][1:]
    kl = x**2 * (w * p**2).sum(0) - 2 * x * (w * p * q).sum(0) + (w * (q**2 + r)).sum(0)
    # E[L_0]: x_0noised = √ᾱ_0 x₀ + √(1 − ᾱ_0) ε, decoder mean M_0 x_0noised + c_0.
    nodes, weights = _hermite_nodes(n_nodes, x)
    nodes = nodes.reshape(-1, *([1] * x.ndim))  # (n_nodes, 1, ..., 1)
    decoder_mean = chain["M"][0] * (chain["a"][0] * x + chain["n"][0].sqrt() * nodes) + chain["c"][0]
    log_p = discretized_gaussian_log_likelihood(x, decoder_mean, 0.5 * chain["log_variance"][0])
    decoder = -(weights.reshape(nodes.shape) * log_p).sum(0)
    return (_mean_flat(prior + kl + decoder) / LN2).to(x0.dtype)


# --------------------------------------------------------------------------------------------
# improved-diffusion's tanh approximation of the normal CDF, the second accepted decoder.
# --------------------------------------------------------------------------------------------


def tanh_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's ``approx_standard_normal_cdf``: 0.5·(1 + tanh(√(2/π)·(z + 0.044715·z³))).

    Within 1.79e-4 of Φ everywhere (the largest error is at z ≈ ±2.59; tests/reference/test_elbo.py).
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _tanh_discretized_gaussian_log_likelihood(x, mean, log_scale):
    """improved-diffusion's ``losses.discretized_gaussian_log_likelihood`` (its tanh CDF), restated."""
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    cdf_plus = tanh_normal_cdf(inv_scale * (centered + BIN_HALF_WIDTH))
    cdf_min = tanh_normal_cdf(inv_scale * (centered - BIN_HALF_WIDTH))
    return torch.where(
        x < -EDGE,
        torch.log(cdf_plus.clamp(min=PROB_FLOOR)),
        torch.where(x > EDGE, torch.log((1 - cdf_min).clamp(min=PROB_FLOOR)),
                    torch.log((cdf_plus - cdf_min).clamp(min=PROB_FLOOR))),
    )


NORMAL_CDFS = ("erf", "tanh")
"""The decoder's accepted normal CDFs, by name: the exact one and improved-diffusion's tanh approximation."""


def discretized_gaussian_log_likelihood_with(cdf: str) -> Callable:
    """:func:`discretized_gaussian_log_likelihood` with the normal CDF named ``cdf`` (one of :data:`NORMAL_CDFS`)."""
    if cdf not in NORMAL_CDFS:
        raise ValueError(f"unknown normal CDF {cdf!r}; expected one of {NORMAL_CDFS}")
    return discretized_gaussian_log_likelihood if cdf == "erf" else _tanh_discretized_gaussian_log_likelihood


def vlb_term_bpd_with(cdf: str) -> Callable:
    """:func:`vlb_term_bpd` whose decoder uses the normal CDF named ``cdf`` (one of :data:`NORMAL_CDFS`)."""
    discretized_gaussian_log_likelihood_with(cdf)  # an unknown name fails here

    def vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas):
        return _vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas, cdf)

    return vlb_term_bpd


# --------------------------------------------------------------------------------------------
# The exact law of one elbo_bpd estimate, for Gaussian data and its optimal ε-model, and
# thresholds at a guaranteed level for the mean of many estimates.
# --------------------------------------------------------------------------------------------


@dataclass
class ElboLaw:
    """The law of one :func:`elbo_bpd` estimate per row of x₀, for Gaussian data N(μ, diag(s²)) and its optimal ε-model.

    With the optimal (affine) denoiser x̂₀(x_t) = A_t x_t + B_t (:func:`_gaussian_chain`), each term of one estimate is

        L_T = KL(N(√ᾱ_{T−1} x₀, 1 − ᾱ_{T−1}) ‖ N(0, 1))                     deterministic,
        L_t = w_t (m_t + s_t ε_t)²,  t ≥ 1,                                 a scaled noncentral χ²₁,
              w_t = coef1_t² / (2 β̃_t),  m_t = (1 − A_t √ᾱ_t) x₀ − B_t,  s_t = A_t √(1 − ᾱ_t),
        L_0 = −log P(x₀ | A_0 (√ᾱ_0 x₀ + √(1 − ᾱ_0) ε_0) + B_0, ½ log β̃₁)      a smooth function of ε_0,

    per coordinate, with independent ε's, drawn in any order (the model's variance is the posterior's, so
    each KL is the squared mean difference over 2β̃_t). One estimate is their per-dim mean over D
    coordinates, / ln 2. Its cumulant generating function K(λ) = log E[exp(λ X)] is therefore exact for
    the KL terms,

        log E[exp(κ w (m + s ε)²)] = −½ log(1 − 2κ w s²) + κ w m² / (1 − 2κ w s²),   2κ w s² < 1,

    and a 1-D Gauss–Hermite integral with ``n_nodes`` nodes for the decoder (bounded by −log 1e-12 per
    coordinate). ``cdf`` names the decoder's normal CDF (:data:`NORMAL_CDFS`). Everything is float64, on
    ``rows``' device.

    Args:
        mean, var: the data's μ and s², of shape ``D`` (any shape with D elements).
        rows: ``(R, *D)`` 8-bit x₀, one law per row.
        betas: ``(T,)`` β, T ≥ 2.
    """

    mean: torch.Tensor
    var: torch.Tensor
    rows: torch.Tensor
    betas: torch.Tensor
    cdf: str = "erf"
    n_nodes: int = 96

    def __post_init__(self) -> None:
        f64 = dict(dtype=torch.float64, device=self.rows.device)
        data = GaussianData(self.mean.to(**f64).flatten(), self.var.to(**f64).flatten())
        x = self.rows.to(**f64)
        x = x.reshape(x.shape[0], -1)  # (R, D)
        chain = _gaussian_chain(data, self.betas, x)  # (T, D) or (T, 1) coefficients
        a, n, A, B = chain["a"], chain["n"], chain["A"], chain["B"]
        self.D = x.shape[1]
        self.w = (chain["coef1"][1:] ** 2 / (2 * chain["variance"][1:]))  # (T−1, D)
        self.m = (1 - A[1:] * a[1:])[None] * x[:, None] - B[1:][None]  # (R, T−1, D)
        self.s = A[1:] * n[1:].sqrt()  # (T−1, D)
        T = self.betas.shape[0]
        self.prior = normal_kl(a[T - 1] * x, torch.log(n[T - 1]).expand_as(x), 0.0, 0.0).sum(1)  # (R,) nats
        nodes, self.weights = _hermite_nodes(self.n_nodes, x)
        decoder_mean = A[0] * (a[0] * x[None] + n[0].sqrt() * nodes[:, None, None]) + B[0]  # (nodes, R, D)
        log_likelihood = discretized_gaussian_log_likelihood_with(self.cdf)
        self.decoder = -log_likelihood(x[None].expand_as(decoder_mean), decoder_mean, 0.5 * chain["log_variance"][0])
        self.scale = 1 / (self.D * LN2)  # nats summed over coordinates → bits/dim
        self.lam_max = 0.999 / (2 * self.scale * float((self.w * self.s**2).max()))
        self._data, self._chain, self._x = data, chain, x

    def expectation(self) -> torch.Tensor:
        """``(R,)`` E[X] in bits/dim."""
        kl = (self.w * (self.m**2 + self.s**2)).sum((1, 2))
        decoder = (self.weights[:, None, None] * self.decoder).sum(0).sum(1)
        return (self.prior + kl + decoder) * self.scale

    def variance(self) -> torch.Tensor:
        """``(R,)`` Var[X] in (bits/dim)²."""
        kl = (self.w**2 * (2 * self.s**4 + 4 * self.m**2 * self.s**2)).sum((1, 2))
        first = (self.weights[:, None, None] * self.decoder).sum(0)
        second = (self.weights[:, None, None] * self.decoder**2).sum(0)
        return (kl + (second - first**2).sum(1)) * self.scale**2

    def cgf(self, lam: float) -> torch.Tensor:
        """``(R,)`` log E[exp(λ X)], for λ < lam_max."""
        k = lam * self.scale
        one = 1 - 2 * k * self.w * self.s**2
        kl = (-0.5 * torch.log(one) + k * self.w * self.m**2 / one).sum((1, 2))
        decoder = torch.logsumexp(torch.log(self.weights)[:, None, None] + k * self.decoder, dim=0).sum(1)
        return k * self.prior + kl + decoder

    def nll_bpd(self) -> torch.Tensor:
        """``(R,)`` −log p_θ(x₀)/(D ln 2) of the model whose ELBO this law describes, with its decoder's CDF.

        The reverse chain from N(0, I) keeps each coordinate Gaussian, N(m, v) with m ← M_t m + c_t,
        v ← M_t² v + β̃_t for t = T−1, …, 1 (:func:`exact_gaussian_nll_bpd`). The decoder's mean at t = 0
        is M_0 x + c_0, so p_θ(x₀) = E_{m'~N(M_0 m + c_0, M_0² v)} P(x₀ | m', ½ log β̃₁): for the erf CDF a
        bin of the convolved Gaussian, for the tanh CDF a Gauss–Hermite integral over m'.
        """
        data, chain, x = self._data, self._chain, self._x
        if self.cdf == "erf":
            return exact_gaussian_nll_bpd(data, x, self.betas)
        M, c = chain["M"], chain["c"]
        m, v = torch.zeros_like(M[0]), torch.ones_like(M[0])
        for t in range(self.betas.shape[0] - 1, 0, -1):
            m = M[t] * m + c[t]
            v = M[t] ** 2 * v + chain["variance"][t]
        nodes, weights = _hermite_nodes(self.n_nodes, x)
        decoder_mean = (M[0] * m + c[0]) + M[0] * v.sqrt() * nodes[:, None, None]  # (nodes, 1, D)
        log_likelihood = discretized_gaussian_log_likelihood_with(self.cdf)
        log_p = log_likelihood(x[None].expand(len(nodes), -1, -1), decoder_mean, 0.5 * chain["log_variance"][0])
        p = (weights[:, None, None] * log_p.exp()).sum(0)
        return -_mean_flat(torch.log(p.clamp(min=1e-300))) / LN2


def chernoff_deviation(law: ElboLaw, counts: torch.Tensor, level: float, upper: bool) -> float:
    """The a with P(±(X̄ − E X̄) ≥ a) ≤ level for the mean X̄ of ``counts[r]`` independent estimates of row r.

    Chernoff: P(S − ES ≥ Na) ≤ exp(−sup_λ [λNa − K_S(λ)]) for the sum S of the N estimates, with
    K_S(λ) = Σ_r counts_r (K_r(λ) − λ E X_r) the centred cumulant generating function; the supremum is
    taken over λ ∈ (0, λ_max) (upper tail; the noncentral χ² terms need 2κws² < 1) or over the negated
    λ (lower tail). Restricting λ only weakens the bound, so the threshold stays valid.
    """
    counts = counts.to(torch.float64)
    N = float(counts.sum())
    mu = float((counts * law.expectation()).sum())
    sign = 1.0 if upper else -1.0
    sd = float((counts * law.variance()).sum().sqrt())  # of S
    # λ beyond ~60/sd would be for deviations ≫ 60 standard deviations: never needed at level ≥ 1e-300.
    lam_high = min(law.lam_max, 60.0 / sd) if upper else 60.0 / sd

    def centred(lam: float) -> float:
        return float((counts * law.cgf(sign * lam)).sum()) - sign * lam * mu

    def rate(a: float) -> float:
        result = optimize.minimize_scalar(lambda u: -(u * lam_high * a * N - centred(u * lam_high)),
                                          bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-9})
        return -result.fun

    target = math.log(1 / level)
    high = 1.0
    while rate(high) < target:
        high *= 4
    return optimize.brentq(lambda a: rate(a) - target, 1e-300, high, xtol=1e-14, rtol=1e-10)


def normal_p_value(law: ElboLaw, counts: torch.Tensor, deviation: float, two_sided: bool = True) -> float:
    """The normal approximation's p-value of X̄ − E X̄ = ``deviation``, with the law's exact variance.

    Not a verdict (the thresholds are :func:`chernoff_deviation`'s bounds): the p-value whose uniformity
    over seeds a calibration measures. X̄ is a mean of N independent estimates, so its skewness is that
    of one estimate divided by √N (≲ 0.05 for N ≥ 1000 here). One-sided: P(Z ≤ z).
    """
    if not math.isfinite(deviation):
        return 0.0
    counts = counts.to(torch.float64)
    se = float((counts * law.variance()).sum().sqrt() / counts.sum())
    z = deviation / se
    return float(2 * special.ndtr(-abs(z))) if two_sided else float(special.ndtr(z))
