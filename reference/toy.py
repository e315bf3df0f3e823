"""Analytic toy problems: data whose noised marginals, scores and denoisers are exact.

With Gaussian data every optimal predictor is linear in x_t, so every DDPM,
DDIM, Langevin or predictor–corrector step is x′ = a·x + b + σ·z and the law of
a whole sampler follows by recursion (Pierret & Galerne, ICML 2025). A Gaussian
mixture keeps closed forms for the score and E[x₀ | x_t] while being
multi-modal.

Both kinds of data are diagonal (independent coordinates), given per coordinate
over the trailing data shape ``D`` (any shape, e.g. ``(2,)`` or ``(1, 4, 4)``).

A noised sample is x = a · x₀ + √n · z with z ~ N(0, I). The variance-preserving
(VP) process of DDPM has a = √ᾱ_t, n = 1 − ᾱ_t; the variance-exploding (VE)
process of score SDEs has a = 1, n = σ².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "ClassConditionalGaussians",
    "ClassConditionalMixture",
    "GaussianData",
    "GaussianMixture",
    "vp_coefficients",
    "vp_sde_coefficients",
]


def vp_coefficients(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, n) = (√ᾱ_t, 1 − ᾱ_t) for a LongTensor ``t`` of shape ``(B,)``; each ``(B,)``."""
    alpha_bar = alphas_cumprod[torch.as_tensor(t, device=alphas_cumprod.device).long()]
    return alpha_bar.sqrt(), 1 - alpha_bar


def vp_sde_coefficients(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, n) = (mean_coef, std²) of the continuous VP SDE at float times ``t`` (Song et al. 2021, ``VPSDE.marginal_prob``).

    log a = −¼t²(β_max − β_min) − ½tβ_min and n = 1 − a² = −expm1(2·log a), computed in ``t``'s dtype. Written
    here (not imported from :mod:`reference.sde`) because the student's process loads this file alone;
    tests/reference/test_sde.py checks that the two agree.
    """
    log_a = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return torch.exp(log_a), -torch.expm1(2 * log_a)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(B,)`` (or scalar) coefficient over the data dims of ``like``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


class _Predictors:
    """The optimal predictors every toy problem derives from its exact ``score(x, a, n)``."""

    def score(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eps(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """E[z | x] = −√n · score, the optimal ε-prediction."""
        return -_per_sample(n, x).sqrt() * self.score(x, a, n)

    def eps_model(self, alphas_cumprod: torch.Tensor):
        """The optimal VP ε-model ``eps_model(x, t)`` for this data and schedule."""

        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a, n = vp_coefficients(t, alphas_cumprod)
            return self.eps(x, a, n)

        return eps_model

    def score_fn(self):
        """The exact VE score ``score_fn(x, sigma)`` with σ a float tensor ``(B,)``."""

        def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
            return self.score(x, torch.ones_like(sigma), sigma**2)

        return score_fn

    def vp_score_fn(self, beta_min: float = 0.1, beta_max: float = 20.0, scale: float = 1.0):
        """The exact score of the continuous VP SDE's marginal, ``score_fn(x, t)`` with t a float tensor ``(B,)``.

        ``scale`` λ ≠ 1 gives the member λ·s* of a family of scores (for Gaussian data: linear scores), which
        denoising score matching must rank below the exact one.
        """

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t, device=x.device).to(torch.float64)
            a, n = vp_sde_coefficients(t, beta_min, beta_max)
            return scale * self.score(x, a.to(x.dtype), n.to(x.dtype))

        return score_fn


@dataclass(frozen=True)
class GaussianData(_Predictors):
    """x₀ ~ N(mean, diag(var)) over a data shape ``D``; ``mean`` and ``var`` have shape ``D``."""

    mean: torch.Tensor
    var: torch.Tensor

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, *D)`` draws of x₀."""
        z = torch.randn((batch, *self.mean.shape), generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.var.sqrt() * z

    def noised(self, a: torch.Tensor, n: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of x = a·x₀ + √n·z, broadcast like ``like`` ``(B, *D)``."""
        a, n = _per_sample(a, like), _per_sample(n, like)
        return a * self.mean, a**2 * self.var + n

    def score(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """∇ log p(x) of the noised marginal: −(x − a·μ) / (a²·s² + n)."""
        m, v = self.noised(a, n, x)
        return -(x - m) / v

    def denoise(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """E[x₀ | x] = μ + a·s²·(x − a·μ) / (a²·s² + n)."""
        m, v = self.noised(a, n, x)
        return self.mean + _per_sample(a, x) * self.var * (x - m) / v


@dataclass(frozen=True)
class GaussianMixture(_Predictors):
    """x₀ ~ Σ_k π_k N(means[k], diag(vars[k])); ``weights`` ``(K,)``, ``means``/``vars`` ``(K, *D)``."""

    weights: torch.Tensor
    means: torch.Tensor
    vars: torch.Tensor

    def sample(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x₀, k)``: ``(batch, *D)`` draws and the ``(batch,)`` component each came from."""
        k = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        z = torch.randn((batch, *self.means.shape[1:]), generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[k] + self.vars[k].sqrt() * z, k

    def _components(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor):
        """Per-component noised means ``m``, variances ``v`` ``(K, B, *D)`` and responsibilities ``(K, B)``."""
        a, n = _per_sample(a, x), _per_sample(n, x)
        m = a.unsqueeze(0) * self.means.unsqueeze(1)  # (K, B, *D)
        v = a.unsqueeze(0) ** 2 * self.vars.unsqueeze(1) + n.unsqueeze(0)
        log_pdf = -0.5 * ((x.unsqueeze(0) - m) ** 2 / v + torch.log(2 * torch.pi * v))
        log_joint = log_pdf.flatten(2).sum(-1) + torch.log(self.weights).to(x.dtype).unsqueeze(1)  # (K, B)
        return m, v, torch.softmax(log_joint, dim=0)

    def responsibilities(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """p(k | x) for the noised sample x, ``(K, B)``."""
        return self._components(x, a, n)[2]

    def score(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """∇ log p(x) = Σ_k p(k | x) · (−(x − a·μ_k) / (a²·s_k² + n))."""
        m, v, r = self._components(x, a, n)
        r = r.reshape(*r.shape, *([1] * (x.ndim - 1)))
        return (r * (-(x.unsqueeze(0) - m) / v)).sum(0)

    def denoise(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """E[x₀ | x] = Σ_k p(k | x) · (μ_k + a·s_k²·(x − a·μ_k) / (a²·s_k² + n))."""
        m, v, r = self._components(x, a, n)
        r = r.reshape(*r.shape, *([1] * (x.ndim - 1)))
        a = _per_sample(a, x).unsqueeze(0)
        return (r * (self.means.unsqueeze(1) + a * self.vars.unsqueeze(1) * (x.unsqueeze(0) - m) / v)).sum(0)



# ---------------------------------------------------------------------------------------------
# Conditional toy problems (classifier-free guidance): the model is eps_model(x, t, cond)
# ---------------------------------------------------------------------------------------------


def _labels(cond: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Integer class labels ``(B,)`` from a condition tensor with batch first (a trailing size-1 dim allowed)."""
    cond = torch.as_tensor(cond, device=device)
    return cond.reshape(cond.shape[0]).long()


@dataclass(frozen=True)
class ClassConditionalGaussians:
    """x₀ | c ~ N(means[c], diag(vars[c])) for integer labels c; ``means``/``vars`` ``(C, *D)``.

    Every label, the "null" one included, has Gaussian data, so both the
    conditional and the unconditional optimal ε are affine in x and every guided
    DDIM step is x′ = A·x + b (:func:`reference.laws.cfg_sample_law`). The null
    label of :meth:`with_null` is the Gaussian closest (same mean and variance)
    to the mixture of the classes, a Gaussian stand-in for the unconditional data.
    """

    means: torch.Tensor
    vars: torch.Tensor

    @classmethod
    def with_null(cls, weights: torch.Tensor, means: torch.Tensor, vars: torch.Tensor) -> "ClassConditionalGaussians":
        """Classes 0…K−1 from ``means``/``vars`` ``(K, *D)``; label K (the null label) their moment-matched mixture.

        mean_∅ = Σ_k π_k μ_k,  var_∅ = Σ_k π_k (s_k² + μ_k²) − mean_∅²  (per coordinate).
        """
        w = weights.to(means.dtype).reshape(-1, *([1] * (means.ndim - 1)))
        mean = (w * means).sum(0)
        var = (w * (vars + means**2)).sum(0) - mean**2
        return cls(torch.cat([means, mean[None]]), torch.cat([vars, var[None]]))

    @property
    def null_label(self) -> int:
        """The last label (the unconditional one when built by :meth:`with_null`)."""
        return self.means.shape[0] - 1

    def given(self, cond: torch.Tensor) -> GaussianData:
        """The data of each batch element's class: a GaussianData with ``(B, *D)`` parameters."""
        labels = _labels(cond, self.means.device)
        return GaussianData(self.means[labels], self.vars[labels])

    def eps(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The optimal ε of each element's class, ``(B, *D)``."""
        return self.given(cond).eps(x, a, n)

    def eps_model(self, alphas_cumprod: torch.Tensor):
        """The optimal conditional VP ε-model ``eps_model(x, t, cond)``."""

        def eps_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            a, n = vp_coefficients(t, alphas_cumprod)
            return self.eps(x, a.to(x.dtype), n.to(x.dtype), cond)

        return eps_model


@dataclass(frozen=True)
class ClassConditionalMixture:
    """x₀ ~ Σ_k π_k N(means[k], diag(vars[k])), class k = component k; label K is the null label.

    The conditional model of label k < K is component k's Gaussian; the null label
    gives the whole mixture, the true unconditional data, with its nonlinear ε.
    For plots of guidance on multi-modal data (no sampler law is closed-form here).
    """

    weights: torch.Tensor
    means: torch.Tensor
    vars: torch.Tensor

    @property
    def null_label(self) -> int:
        return self.means.shape[0]

    def unconditional(self) -> GaussianMixture:
        return GaussianMixture(self.weights, self.means, self.vars)

    def eps(self, x: torch.Tensor, a: torch.Tensor, n: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        labels = _labels(cond, x.device)
        a = torch.as_tensor(a, dtype=x.dtype, device=x.device).expand(x.shape[0])
        n = torch.as_tensor(n, dtype=x.dtype, device=x.device).expand(x.shape[0])
        out = torch.zeros_like(x)
        for k in range(self.null_label + 1):
            mask = labels == k
            if not bool(mask.any()):
                continue
            data = self.unconditional() if k == self.null_label else GaussianData(self.means[k], self.vars[k])
            out[mask] = data.eps(x[mask], a[mask], n[mask])
        return out

    def eps_model(self, alphas_cumprod: torch.Tensor):
        """The optimal conditional VP ε-model ``eps_model(x, t, cond)`` (the null label: the mixture's)."""

        def eps_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            a, n = vp_coefficients(t, alphas_cumprod)
            return self.eps(x, a, n, cond)

        return eps_model

    def sample(self, label: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, *D)`` draws of x₀ given ``label`` (the null label: the mixture)."""
        if label == self.null_label:
            return self.unconditional().sample(batch, generator)[0]
        return GaussianData(self.means[label], self.vars[label]).sample(batch, generator)
