"""The few hypothesis tests the statistical checks use, each with an exact or bounded level.

Every test takes standardised residuals — under a correct implementation,
i.i.d. N(0, 1) draws — and a level ``alpha``: the probability that a correct
implementation fails it. Each returns a :class:`Statistic` that says what was
measured, the threshold, the p-value and how the level was derived.

* :func:`mean_z` — pooled z-test of the mean: z = Σr/√n is exactly N(0, 1).
* :func:`variance_chi2` — Σr² is exactly χ²(n); two-sided.
* :func:`binomial_band_test` — a count's probability lies within a band [w − δ, w + δ]
  (e.g. the share of a sampler's output in each mode of a mixture), exact binomial quantiles.
* :func:`product_z` — Σ r·s/√n for two independent N(0, 1) samples (correlation,
  e.g. between two calls or two batch elements). Not Gaussian in the tails, so the
  threshold comes from the Chernoff bound with the exact moment generating
  function E[e^{λ r s}] = (1 − λ²)^{−1/2}, |λ| < 1: a bound, not an approximation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from scipy import optimize, special, stats

__all__ = ["Statistic", "binomial_band_test", "mean_z", "product_z", "variance_chi2"]


@dataclass(frozen=True)
class Statistic:
    """One test's result. ``passed`` is ``low ≤ value ≤ high``."""

    name: str
    value: float
    low: float
    high: float
    p_value: float
    alpha: float
    n: int
    derivation: str

    @property
    def passed(self) -> bool:
        return self.low <= self.value <= self.high and math.isfinite(self.value)

    def describe(self) -> str:
        verdict = "within" if self.passed else "outside"
        return (f"{self.name} = {self.value:.4g}, {verdict} [{self.low:.4g}, {self.high:.4g}] "
                f"(n = {self.n:,}, p = {self.p_value:.2g}, level α = {self.alpha:.1g})")

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _flat(r: torch.Tensor) -> torch.Tensor:
    return r.detach().to("cpu", torch.float64).flatten()


def mean_z(residuals: torch.Tensor, alpha: float, name: str = "z of the mean") -> Statistic:
    """Two-sided z-test that the residuals have mean 0 (exact for N(0, 1) residuals)."""
    r = _flat(residuals)
    n = r.numel()
    z = float(r.sum() / math.sqrt(n))
    bound = float(special.ndtri(1 - alpha / 2))
    p = float(2 * special.ndtr(-abs(z))) if math.isfinite(z) else 0.0
    return Statistic(name, z, -bound, bound, p, alpha, n,
                     "Σr/√n is exactly N(0, 1) for i.i.d. N(0, 1) residuals; two-sided normal quantile")


def variance_chi2(residuals: torch.Tensor, alpha: float, name: str = "mean of squared residuals") -> Statistic:
    """Two-sided test that the residuals have variance 1: Σr² ~ χ²(n), reported as Σr²/n."""
    r = _flat(residuals)
    n = r.numel()
    ratio = float((r**2).sum() / n)
    low = float(stats.chi2.ppf(alpha / 2, n) / n)
    high = float(stats.chi2.isf(alpha / 2, n) / n)
    if math.isfinite(ratio):
        p = float(2 * min(stats.chi2.cdf(ratio * n, n), stats.chi2.sf(ratio * n, n)))
    else:
        p = 0.0
    return Statistic(name, ratio, low, high, min(p, 1.0), alpha, n,
                     "Σr² is exactly χ²(n) for i.i.d. N(0, 1) residuals; two-sided χ² quantiles")


def chernoff_product_threshold(n: int, alpha: float) -> float:
    """The z such that P(|Σ r_i s_i| ≥ z√n) ≤ alpha for independent N(0, 1) r, s (Chernoff bound)."""

    def log_bound(z: float) -> float:
        a = z * math.sqrt(n)
        lam = (-n + math.sqrt(n * n + 4 * a * a)) / (2 * a)  # argmin_λ of −λa − (n/2)·log(1 − λ²)
        return -lam * a - 0.5 * n * math.log1p(-lam * lam)

    target = math.log(alpha / 2)
    return float(optimize.brentq(lambda z: log_bound(z) - target, 1e-6, 1e3))


def product_z(r: torch.Tensor, s: torch.Tensor, alpha: float, name: str = "correlation z") -> Statistic:
    """Two-sided test that two N(0, 1) samples are uncorrelated: z = Σ r·s / √n."""
    a, b = _flat(r), _flat(s)
    n = a.numel()
    z = float((a * b).sum() / math.sqrt(n))
    bound = chernoff_product_threshold(n, alpha)
    p = float(2 * special.ndtr(-abs(z))) if math.isfinite(z) else 0.0
    return Statistic(name, z, -bound, bound, p, alpha, n,
                     "Chernoff bound with the exact MGF (1 − λ²)^(−1/2) of a product of independent "
                     "N(0, 1) variables; p-value shown is the normal approximation")


def binomial_band_test(count: int, n: int, weight: float, delta: float, alpha: float, name: str) -> Statistic:
    """Two-sided exact binomial test that a count's probability lies within [weight − δ, weight + δ].

    Reject when count < lo, the α/2 quantile of Bin(n, weight − δ), or count > hi, the
    1 − α/2 quantile of Bin(n, weight + δ). For any p in the band, P(count < lo) ≤ α/2 and
    P(count > hi) ≤ α/2, since binomial tails are monotone in p: the level holds exactly
    (conservatively, counts being discrete).
    """
    p_low, p_high = max(weight - delta, 0.0), min(weight + delta, 1.0)
    lo = int(stats.binom.ppf(alpha / 2, n, p_low))  # smallest k with P(N ≤ k) ≥ α/2
    if stats.binom.cdf(lo - 1, n, p_low) > alpha / 2:  # guard scipy's discrete ppf
        lo -= 1
    hi = int(stats.binom.isf(alpha / 2, n, p_high))  # smallest k with P(N > k) ≤ α/2
    while stats.binom.sf(hi, n, p_high) > alpha / 2:
        hi += 1
    p = 2 * min(stats.binom.cdf(count, n, p_low), stats.binom.sf(count - 1, n, p_high))
    return Statistic(name, float(count), float(lo), float(hi), float(min(1.0, p)), alpha, n,
                     f"exact binomial quantiles at the band's ends ({p_low:.3g}, {p_high:.3g})")
