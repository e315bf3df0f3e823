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
    "GaussianData",
    "GaussianMixture",
    "vp_coefficients",
]


def vp_coefficients(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, n) = (√ᾱ_t, 1 − ᾱ_t) for a LongTensor ``t`` of shape ``(B,)``; each ``(B,)``."""
    alpha_bar = alphas_cumprod[torch.as_tensor(t, device=alphas_cumprod.device).long()]
    return alpha_bar.sqrt(), 1 - alpha_bar


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

