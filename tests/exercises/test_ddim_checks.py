"""Do the ddim checks hold what their comments promise, beyond what the bug catalogue shows?

* the statistics of the two law checks are exactly (or, for the correlation tests,
  approximately) their null distributions for correct samplers, over many seeds, whatever
  the order in which a sampler draws its noise;
* the round-trip tolerance of ddim_invert covers the exact first-order error of a correct
  inversion over the whole case space, with the stated margin;
* the term-size tolerance of the deterministic checks holds correct float32 implementations
  far inside it.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from grader.checks import Context, Law, draw_cases
from grader.exercises import ddim as ex
from grader.runner import InProcessRunner
from reference import ddim as ref
from reference import laws
from reference.laws import ddim_invert_law, ddim_sample_law
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule
from reference.toy import GaussianData
from tests.catalogue import ddim as catalogue

#: Seeds of the calibration: 200 per sampler, two samplers (≥ 100 as the policy asks); ~20 s.
CALIBRATION_SEEDS = 200

#: The level of each Kolmogorov–Smirnov test below. The test is deterministic (fixed seeds),
#: so this is the chance that the fixed seeds made it fail for a correct check: 4 groups of
#: statistics at 1e-3 each.
KS_LEVEL = 1e-3


LAW_CHECKS = [check for check in ex.EXERCISE.checks if isinstance(check, Law)]


def _law_statistics(namespace: dict, seeds: range) -> list:
    """Every Statistic of both law checks, for ``namespace``'s ddim_sample on each seed."""
    collected = []
    for seed in seeds:
        ctx = Context(InProcessRunner(namespace), torch.device("cpu"), seed, "ddim")
        for check in LAW_CHECKS:
            collected += check.measure(ctx).statistics
    return collected


@pytest.mark.calibration
def test_law_statistics_of_correct_samplers_follow_their_null_distributions():
    """Over 400 seeds, are the mean z's N(0, 1), the χ² statistics χ²-distributed and the correlation z's ≈ N(0, 1)?

    Half the seeds grade the reference, half a sampler that draws every step's noise
    before x_T: the checks may not depend on the order of draws. The mean z and both χ²
    statistics are exact (Σr/√n, Σr², Σz_d² of i.i.d. N(0, 1) residuals); the correlation
    statistic Σ r·s/√n is a sum of 65,536 i.i.d. products of variance 1, normal to within
    the Berry–Esseen bound 0.48·E|rs|³/√n = 0.48·(8/π)/256 ≈ 5e-3 in the CDF (and, being
    symmetric, much closer in fact), below what a KS test on 4,800 values can see (its
    critical distance at 1e-3 is ≈ 0.028).
    """
    statistics = _law_statistics(catalogue.CORRECT, range(CALIBRATION_SEEDS))
    noise_first = {**catalogue.CORRECT, "ddim_sample": catalogue.sample_noise_first}
    statistics += _law_statistics(noise_first, range(CALIBRATION_SEEDS, 2 * CALIBRATION_SEEDS))

    def group(prefix):
        return [s for s in statistics if s.name.startswith(prefix)]

    z_means = [s.value for s in group("z of the mean")]
    chi2_residuals = [stats.chi2.cdf(s.value * s.n, s.n) for s in group("mean of squared residuals")]
    chi2_coordinates = [stats.chi2.cdf(s.value * s.n, s.n) for s in group("mean square of the 16")]
    correlations = [s.value for s in group("correlation")]
    assert len(z_means) == len(chi2_residuals) == len(chi2_coordinates) == 8 * CALIBRATION_SEEDS
    assert len(correlations) == 12 * CALIBRATION_SEEDS
    results = {
        "mean z ~ N(0, 1)": stats.kstest(z_means, "norm").pvalue,
        "χ² of residuals, CDF ~ U(0, 1)": stats.kstest(chi2_residuals, "uniform").pvalue,
        "χ² of coordinate means, CDF ~ U(0, 1)": stats.kstest(chi2_coordinates, "uniform").pvalue,
        "correlation z ≈ N(0, 1)": stats.kstest(correlations, "norm").pvalue,
    }
    assert all(p > KS_LEVEL for p in results.values()), results
    # No single test of a correct sampler may have failed (each is at 1.1e-7).
    assert all(s.passed for s in statistics), [s.describe() for s in statistics if not s.passed]


def test_round_trip_tolerance_covers_a_correct_inversion_with_a_two_fold_margin():
    """Is the exact round-trip error ≤ 0.152 std over the round-trip case space, and 0.3 ≥ 1.9 times it?

    invert∘sample is affine in (μ, x₀) for each data variance (reference.laws), so over the
    box μ ∈ [−2, 2], x₀ − μ ∈ [−3s, 3s] its error is largest at the corners; the variance
    is swept over a fine log-grid of [0.1, 10^0.5], the range of the case strategy.
    """
    variances = 10 ** torch.linspace(-1.0, 0.5, 61, dtype=torch.float64)
    worst = 0.0
    for kind in ("linear", "cosine"):
        betas = linear_beta_schedule(1000) if kind == "linear" else cosine_beta_schedule(1000)
        alphas_cumprod = compute_alphas_cumprod(betas)
        for mu in (-2.0, 2.0):
            data = GaussianData(torch.full_like(variances, mu), variances)
            x0 = torch.stack([data.mean - 3 * variances.sqrt(), data.mean + 3 * variances.sqrt()])
            for num_steps in (200, 250, 500):
                for spacing in ex.SPACINGS:
                    x_T, _ = ddim_invert_law(data, alphas_cumprod, num_steps, spacing, x0=x0)
                    back, _ = ddim_sample_law(data, alphas_cumprod, num_steps, 0.0, spacing, x_T=x_T)
                    worst = max(worst, float(((back - x0).abs() / variances.sqrt()).max()))
    assert worst <= 0.152, worst
    assert ex.ROUND_TRIP_STDS >= 1.9 * worst


def _worst_ratio(function: str, impl, strategy, build, expected, size) -> float:
    """max |got − expected| / (atol + rtol·size) over float32 cases drawn from ``strategy``."""
    ctx = Context(InProcessRunner({**catalogue.CORRECT, function: impl}), torch.device("cpu"), 0, "ddim")
    cases = [c for c in draw_cases(strategy, 200, 7) if c["dtype"] == "float32"]
    inputs = [build(c, ctx) for c in cases]
    rtol, atol = ex.TERMS_TOLERANCE.for_dtype(torch.float32)
    worst = 0.0
    for item, outcome in zip(inputs, ctx.call(function, inputs)):
        error = (outcome.value.double() - expected(item).double()).abs()
        worst = max(worst, float((error / (atol + rtol * size(item))).max()))
    return worst


def _sample_expected(item):
    return item.call_reference(ref.ddim_sample)


def _sample_size(item):
    return ex.chain_terms(item.in_float64(), "x_T", laws.ddim_sample_moves)


@pytest.mark.parametrize("impl", [ref.ddim_step, catalogue.step_cast_first, catalogue.step_regrouped],
                         ids=["reference", "cast first", "regrouped"])
def test_float32_steps_stay_far_inside_the_term_size_tolerance(impl):
    """Do correct float32 steps use at most a tenth of the allowed error (the comment claims ≥ 2x)?"""
    ratio = _worst_ratio("ddim_step", impl, ex.step_cases(), ex.build_step,
                         lambda item: item.call_reference(ref.ddim_step),
                         lambda item: ex.step_terms(item.in_float64()))
    assert ratio < 0.1, ratio


def test_float32_samplers_stay_far_inside_the_term_size_tolerance():
    """Does a correct float32 sampler, with its error carried through the chain, use at most a tenth of it?"""
    ratio = _worst_ratio("ddim_sample", ref.ddim_sample, ex.chain_cases(), ex.build_sample, _sample_expected,
                         _sample_size)
    assert ratio < 0.1, ratio
