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

No ``scipy.stats`` (2.6 s to import on the loaded 2 cores, for four tail functions): the normal
tails come from :mod:`math` (``erfc``) and :class:`statistics.NormalDist` (Wichura's AS241, ~1e-16),
the Chernoff threshold from a bisection to the last bit, and only the χ² and binomial tails from
``scipy.special`` (the regularised incomplete gamma and beta functions that ``scipy.stats`` itself
calls), imported inside the functions that need them. tests/grader/test_stats.py checks every value
against ``scipy.stats`` to 1e-12.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import torch

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


def normal_quantile(q: float) -> float:
    """Φ⁻¹(q), the standard normal quantile (as ``scipy.special.ndtri``)."""
    return NormalDist().inv_cdf(q)


def normal_sf(z: float) -> float:
    """P(N(0, 1) > z), accurate in the far tail (as ``scipy.special.ndtr(-z)``)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def chi2_cdf(x: float, n: int) -> float:
    from scipy.special import gammainc  # lazily: scipy.special only where a χ² test runs

    return float(gammainc(n / 2, x / 2))


def chi2_sf(x: float, n: int) -> float:
    from scipy.special import gammaincc

    return float(gammaincc(n / 2, x / 2))


def chi2_ppf(q: float, n: int) -> float:
    """The x with P(χ²(n) ≤ x) = q."""
    from scipy.special import gammaincinv

    return float(2 * gammaincinv(n / 2, q))


def chi2_isf(q: float, n: int) -> float:
    """The x with P(χ²(n) > x) = q."""
    from scipy.special import gammainccinv

    return float(2 * gammainccinv(n / 2, q))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) ≤ k) (0 for k < 0, 1 for k ≥ n)."""
    from scipy.special import bdtr

    return 0.0 if k < 0 else 1.0 if k >= n else float(bdtr(k, n, p))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) > k)."""
    from scipy.special import bdtrc

    return 1.0 if k < 0 else 0.0 if k >= n else float(bdtrc(k, n, p))


def _smallest(n: int, holds) -> int:
    """The smallest k in [0, n] with ``holds(k)``, for a ``holds`` monotone in k that holds at n."""
    low, high = 0, n
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if holds(mid) else (mid + 1, high)
    return low


def binom_ppf(q: float, n: int, p: float) -> int:
    """The smallest k with P(Bin(n, p) ≤ k) ≥ q (as ``scipy.stats.binom.ppf``)."""
    return _smallest(n, lambda k: binom_cdf(k, n, p) >= q)


def binom_isf(q: float, n: int, p: float) -> int:
    """The smallest k with P(Bin(n, p) > k) ≤ q (as ``scipy.stats.binom.isf``)."""
    return _smallest(n, lambda k: binom_sf(k, n, p) <= q)


def mean_z(residuals: torch.Tensor, alpha: float, name: str = "z of the mean") -> Statistic:
    """Two-sided z-test that the residuals have mean 0 (exact for N(0, 1) residuals)."""
    r = _flat(residuals)
    n = r.numel()
    z = float(r.sum() / math.sqrt(n))
    bound = normal_quantile(1 - alpha / 2)
    p = 2 * normal_sf(abs(z)) if math.isfinite(z) else 0.0
    return Statistic(name, z, -bound, bound, p, alpha, n,
                     "Σr/√n is exactly N(0, 1) for i.i.d. N(0, 1) residuals; two-sided normal quantile")


def variance_chi2(residuals: torch.Tensor, alpha: float, name: str = "mean of squared residuals") -> Statistic:
    """Two-sided test that the residuals have variance 1: Σr² ~ χ²(n), reported as Σr²/n."""
    r = _flat(residuals)
    n = r.numel()
    ratio = float((r**2).sum() / n)
    low = chi2_ppf(alpha / 2, n) / n
    high = chi2_isf(alpha / 2, n) / n
    if math.isfinite(ratio):
        p = 2 * min(chi2_cdf(ratio * n, n), chi2_sf(ratio * n, n))
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

    # log_bound decreases in z: bisect [1e-6, 1e3] (the bracket scipy's brentq was given) to the last bit.
    target = math.log(alpha / 2)
    low, high = 1e-6, 1e3
    while True:
        mid = 0.5 * (low + high)
        if mid in (low, high):
            return high
        low, high = (mid, high) if log_bound(mid) > target else (low, mid)


def product_z(r: torch.Tensor, s: torch.Tensor, alpha: float, name: str = "correlation z") -> Statistic:
    """Two-sided test that two N(0, 1) samples are uncorrelated: z = Σ r·s / √n."""
    a, b = _flat(r), _flat(s)
    n = a.numel()
    z = float((a * b).sum() / math.sqrt(n))
    bound = chernoff_product_threshold(n, alpha)
    p = 2 * normal_sf(abs(z)) if math.isfinite(z) else 0.0
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
    lo = binom_ppf(alpha / 2, n, p_low)  # smallest k with P(N ≤ k) ≥ α/2, found exactly
    hi = binom_isf(alpha / 2, n, p_high)  # smallest k with P(N > k) ≤ α/2
    p = 2 * min(binom_cdf(count, n, p_low), binom_sf(count - 1, n, p_high))
    return Statistic(name, float(count), float(lo), float(hi), float(min(1.0, p)), alpha, n,
                     f"exact binomial quantiles at the band's ends ({p_low:.3g}, {p_high:.3g})")
