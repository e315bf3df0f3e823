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
