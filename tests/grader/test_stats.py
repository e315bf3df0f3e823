"""grader.stats: do the tests have the levels they claim?"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as scipy_stats

from grader.stats import chernoff_product_threshold, mean_z, product_z, variance_chi2


def test_thresholds_at_the_policy_level():
    """Are the two-sided thresholds at α = 2e-7 the textbook values?"""
    assert mean_z(torch.zeros(10), 2e-7).high == pytest.approx(5.199, abs=1e-3)
    chi2 = variance_chi2(torch.ones(10_000), 2e-7)
    assert chi2.low == pytest.approx(scipy_stats.chi2.ppf(1e-7, 10_000) / 10_000)
    assert chi2.high == pytest.approx(scipy_stats.chi2.isf(1e-7, 10_000) / 10_000)


def test_chernoff_threshold_is_conservative_and_tends_to_the_normal_one():
    """Is the product test's threshold above the normal quantile (it is a bound) and close to it for large n?"""
    normal = scipy_stats.norm.isf(1e-7)
    for n in (100, 10_000, 1_000_000):
        assert chernoff_product_threshold(n, 2e-7) > normal
    # Chernoff's bound for a Gaussian tail is exp(−z²/2), i.e. z = √(2 ln(1/α)) ≈ 5.70 for α/2 = 1e-7.
    assert chernoff_product_threshold(10**7, 2e-7) == pytest.approx(math.sqrt(2 * math.log(1e7)), rel=2e-3)


@pytest.mark.parametrize("test", ["mean", "variance", "product"])
def test_rejection_rates_at_a_measurable_level(test):
    """At α = 0.05, do the tests reject about 5% of N(0, 1) samples (≤ for the Chernoff bound)?

    600 repetitions: the rejection count of an exact 5% test is Binomial(600, 0.05),
    mean 30, sd 5.3; we accept 12–50 (beyond 3.4 sd: probability < 1e-3 for an exact test).
    """
    g = torch.Generator().manual_seed(1)
    rejected = 0
    for _ in range(600):
        r = torch.randn(500, generator=g, dtype=torch.float64)
        s = torch.randn(500, generator=g, dtype=torch.float64)
        statistic = {"mean": lambda: mean_z(r, 0.05), "variance": lambda: variance_chi2(r, 0.05),
                     "product": lambda: product_z(r, s, 0.05)}[test]()
        rejected += not statistic.passed
    if test == "product":
        assert rejected <= 50  # a bound: at most 5%, typically much less
    else:
        assert 12 <= rejected <= 50


def test_power_against_a_five_percent_variance_error():
    """Does the χ² test at 2e-7 catch a 5% variance error with 65,536 draws (the q_sampler sample size)?"""
    g = torch.Generator().manual_seed(0)
    caught = sum(not variance_chi2(math.sqrt(1.05) * torch.randn(65_536, generator=g, dtype=torch.float64), 2e-7).passed
                 for _ in range(20))
    assert caught == 20


def test_non_finite_values_fail():
    """Do NaN residuals fail every test rather than slip through comparisons?"""
    r = torch.full((100,), float("nan"))
    assert not mean_z(r, 1e-6).passed and not variance_chi2(r, 1e-6).passed and not product_z(r, r, 1e-6).passed


def _scipy_statistics(r, s, alpha):
    """mean_z, variance_chi2 and product_z's thresholds and p-values as the scipy.stats version computed them."""
    from scipy import optimize, special

    a, b = r.to(torch.float64).flatten(), s.to(torch.float64).flatten()
    n = a.numel()
    z, ratio, c = float(a.sum() / math.sqrt(n)), float((a**2).sum() / n), float((a * b).sum() / math.sqrt(n))

    def log_bound(zz):
        aa = zz * math.sqrt(n)
        lam = (-n + math.sqrt(n * n + 4 * aa * aa)) / (2 * aa)
        return -lam * aa - 0.5 * n * math.log1p(-lam * lam)

    chernoff = optimize.brentq(lambda zz: log_bound(zz) - math.log(alpha / 2), 1e-6, 1e3, xtol=1e-15)
    return {
        "mean": (special.ndtri(1 - alpha / 2), 2 * special.ndtr(-abs(z))),
        "variance": (scipy_stats.chi2.ppf(alpha / 2, n) / n, scipy_stats.chi2.isf(alpha / 2, n) / n,
                     2 * min(scipy_stats.chi2.cdf(ratio * n, n), scipy_stats.chi2.sf(ratio * n, n))),
        "product": (chernoff, 2 * special.ndtr(-abs(c))),
    }


@pytest.mark.parametrize("n, alpha, shift", [(10, 2e-7, 0.0), (1000, 1e-6, 0.3), (40_000, 3e-9, 0.02),
                                             (250_000, 0.05, 0.0), (7, 1e-4, 2.0)])
def test_same_values_as_scipy_stats(n, alpha, shift):
    """Without scipy.stats at import, are thresholds and p-values those scipy.stats gave, to 1e-12?"""
    g = torch.Generator().manual_seed(n)
    r = torch.randn(n, generator=g, dtype=torch.float64) * (1 + shift) + shift
    s = torch.randn(n, generator=g, dtype=torch.float64) + shift * r
    want = _scipy_statistics(r, s, alpha)
    m, v, c = mean_z(r, alpha), variance_chi2(r, alpha), product_z(r, s, alpha)
    close = lambda x, y: x == pytest.approx(y, rel=1e-12, abs=1e-300)  # noqa: E731
    assert close(m.high, want["mean"][0]) and close(m.p_value, want["mean"][1])
    assert close(v.low, want["variance"][0]) and close(v.high, want["variance"][1])
    assert close(v.p_value, min(1.0, want["variance"][2]))
    assert close(c.high, want["product"][0]) and close(c.p_value, want["product"][1])


@pytest.mark.parametrize("count, n, weight, delta, alpha", [(30, 100, 0.3, 0.05, 1e-6), (0, 50, 0.1, 0.0, 1e-3),
                                                            (2500, 5000, 0.5, 0.02, 1e-7), (999, 1000, 0.97, 0.03, 1e-6),
                                                            (480, 2000, 0.25, 0.01, 0.05)])
def test_binomial_band_as_scipy_stats(count, n, weight, delta, alpha):
    """Are the binomial band's integer bounds and p-value those of scipy.stats' ppf/isf with their guards?"""
    from grader.stats import binomial_band_test

    p_low, p_high = max(weight - delta, 0.0), min(weight + delta, 1.0)
    lo = int(scipy_stats.binom.ppf(alpha / 2, n, p_low))
    if scipy_stats.binom.cdf(lo - 1, n, p_low) > alpha / 2:
        lo -= 1
    hi = int(scipy_stats.binom.isf(alpha / 2, n, p_high))
    while scipy_stats.binom.sf(hi, n, p_high) > alpha / 2:
        hi += 1
    p = min(1.0, 2 * min(scipy_stats.binom.cdf(count, n, p_low), scipy_stats.binom.sf(count - 1, n, p_high)))
    got = binomial_band_test(count, n, weight, delta, alpha, "share")
    assert (got.low, got.high) == (lo, hi)
    assert got.p_value == pytest.approx(p, rel=1e-12, abs=1e-300)


@pytest.mark.slow  # a fresh interpreter importing torch: 5-27 s on the loaded 2 cores
def test_no_scipy_stats_at_import():
    """Does importing the statistical checks leave scipy (stats, optimize, special) unimported?"""
    import subprocess
    import sys

    code = ("import sys, grader.stats, grader.checks.statistical, grader.checks.law; "
            "print(sorted(m for m in ('scipy', 'scipy.stats', 'scipy.optimize', 'scipy.special') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
