"""Do the langevin checks hold what their comments promise, beyond what the bug catalogue shows?

* the statistics of the four Gaussian law checks follow their null distributions for correct
  samplers, over many seeds, whatever the order in which a sampler draws its noise;
* the corrector's noise is recovered exactly from two consecutive states (the transition check
  of pc_sample with correctors rests on it);
* the mixture check's binomial band test has the stated level at the ends of its band, and the
  discretised reference sampler's mode weights lie well inside the band;
* the step tolerance holds correct float32 single steps far inside it.
"""

from __future__ import annotations

import functools
import math

import pytest

from grader.stats import binomial_band_test
import torch
from scipy import stats

from grader.checks import Context, Law, draw_cases
from grader.exercises import langevin as ex
from grader.runner import InProcessRunner
from grader.sandbox import models, wire
from grader.stats import variance_chi2
from reference import langevin as ref
from reference import laws
from reference.toy import GaussianData, GaussianMixture
from tests.catalogue import langevin as catalogue

#: Seeds of the calibration: 200 with the reference, 200 with samplers that draw their noise in
#: another order (≥ 100 as the policy asks); ~30 s on one core.
CALIBRATION_SEEDS = 200

#: The level of each Kolmogorov–Smirnov test below. The test is deterministic (fixed seeds), so
#: this is the chance that the fixed seeds made it fail for a correct check: 3 groups at 1e-3 each.
KS_LEVEL = 1e-3

#: The three Law checks, then the transitions of pc_sample with correctors (a procedure).
LAWS = [check for check in ex.EXERCISE.checks if isinstance(check, Law)]


def _law_statistics(namespace: dict, seeds: range) -> list:
    """Every Statistic of the four Gaussian law checks, for ``namespace``'s samplers, on each seed."""
    collected = []
    for seed in seeds:
        ctx = Context(InProcessRunner(namespace), torch.device("cpu"), seed, "langevin")
        for check in LAWS:
            collected += check.measure(ctx).statistics
        collected += ex.pc_transitions(ctx, ex.LAW_ALPHA).statistics
    return collected


@pytest.mark.calibration
def test_law_statistics_of_correct_samplers_follow_their_null_distributions():
    """Over 400 seeds, are the mean z's N(0, 1), the χ² statistics χ²-distributed and the correlation z's ≈ N(0, 1)?

    Half the seeds grade the reference, half samplers that draw their noise in another order
    (all of langevin_dynamics' noise up front, a block per level in annealed Langevin, the
    predictor's noise before the correctors' in pc_sample). The mean z and the χ² statistics
    are exact for i.i.d. N(0, 1) residuals (or recovered noises); the correlation statistic
    Σ r·s/√n is a sum of ≥ 16,384 i.i.d. products of variance 1, normal to within the
    Berry–Esseen bound 0.48·E|rs|³/√n = 0.48·(8/π)/128 ≈ 1e-2 in the CDF (and, being
    symmetric, much closer in fact), below what a KS test on 1,600 values can see (its
    critical distance at 1e-3 is ≈ 0.049).
    """
    statistics = _law_statistics(catalogue.CORRECT, range(CALIBRATION_SEEDS))
    other_order = {**catalogue.CORRECT, "langevin_dynamics": catalogue.langevin_noise_up_front,
                   "annealed_langevin_dynamics": catalogue.annealed_noise_per_level,
                   "pc_sample": catalogue.pc_predictor_noise_first}
    statistics += _law_statistics(other_order, range(CALIBRATION_SEEDS, 2 * CALIBRATION_SEEDS))

    z_means = [s.value for s in statistics if s.name.startswith("z of the mean")]
    chi2_cdfs = [stats.chi2.cdf(s.value * s.n, s.n) for s in statistics if s.name.startswith("mean of")]
    correlations = [s.value for s in statistics if s.name.startswith("correlation")]
    # Per seed: 2 + 1 + 1 + 2 mean tests, as many χ² tests, 1 + 1 + 1 + 1 correlation tests.
    assert len(z_means) == len(chi2_cdfs) == 6 * 2 * CALIBRATION_SEEDS
    assert len(correlations) == 4 * 2 * CALIBRATION_SEEDS
    results = {
        "mean z ~ N(0, 1)": stats.kstest(z_means, "norm").pvalue,
        "χ² CDF ~ U(0, 1)": stats.kstest(chi2_cdfs, "uniform").pvalue,
        "correlation z ≈ N(0, 1)": stats.kstest(correlations, "norm").pvalue,
    }
    assert all(p > KS_LEVEL for p in results.values()), results
    # No single test of a correct sampler may have failed (each is at ≤ 3.3e-7).
    assert all(s.passed for s in statistics), [s.describe() for s in statistics if not s.passed]


@pytest.mark.parametrize("batch, shape", [(1, (7,)), (5, (3, 2)), (64, (32,))])
def test_corrector_noise_is_recovered_exactly_from_two_states(batch, shape):
    """Does laws.recover_corrector_noise return the very z of a corrector step x → x′, from x, x′ and the score alone?"""
    g = torch.Generator().manual_seed(batch)
    data = GaussianData(torch.randn(shape, generator=g, dtype=torch.float64),
                        torch.rand(shape, generator=g, dtype=torch.float64) + 0.05)
    x = data.mean + 2 * torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_next, _ = ref.langevin_corrector(data.score_fn(), x, 0.7, 0.2, noise=z)
    score = data.score_fn()(x, torch.full((batch,), 0.7, dtype=torch.float64))
    recovered = laws.recover_corrector_noise(x, x_next, score, 0.2)
    torch.testing.assert_close(recovered, z, rtol=0, atol=1e-9)  # float64 bisection to 1e-15 relative


def test_a_corrector_step_of_the_wrong_size_is_not_read_as_a_correct_one():
    """With ε twice too large, are the recovered noises too large (the χ² sees it), not silently N(0, 1)?"""
    g = torch.Generator().manual_seed(0)
    data = GaussianData(torch.zeros(32, dtype=torch.float64), torch.ones(32, dtype=torch.float64))
    x = 2 * torch.randn((256, 32), generator=g, dtype=torch.float64)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    score = data.score_fn()(x, torch.full((256,), 1.0, dtype=torch.float64))
    eps = 2 * 2 * (0.2 * laws.per_sample_norm(z).mean() / laws.per_sample_norm(score).mean()) ** 2
    x_next = x + eps * score + (2 * eps).sqrt() * z
    recovered = laws.recover_corrector_noise(x, x_next, score, 0.2)
    assert not variance_chi2(recovered, 1e-6).passed


@pytest.mark.parametrize("weight", ex.MIXTURE_WEIGHTS)
def test_binomial_band_test_has_its_level_at_both_ends_of_the_band(weight):
    """At p = weight ± δ, is the exact probability of rejecting at most α/2 on each side (and ≤ α inside)?"""
    n, delta, alpha = ex.MIXTURE_N, ex.MIXTURE_DELTA, ex.LAW_ALPHA / 3
    statistic = binomial_band_test(int(weight * n), n, weight, delta, alpha, "count")
    lo, hi = int(statistic.low), int(statistic.high)
    assert stats.binom.cdf(lo - 1, n, weight - delta) <= alpha / 2
    assert stats.binom.sf(hi, n, weight + delta) <= alpha / 2
    for p in torch.linspace(weight - delta, weight + delta, 7).tolist():
        assert stats.binom.cdf(lo - 1, n, p) + stats.binom.sf(hi, n, p) <= alpha
    # Power: a sampler that ignores the weights (≈ 1/3 per mode) is rejected with certainty.
    if abs(weight - 1 / 3) > 0.2:
        assert not binomial_band_test(round(n / 3), n, weight, delta, alpha, "count").passed


@pytest.mark.slow
@pytest.mark.calibration
def test_reference_mode_weights_lie_well_inside_the_band():
    """Does the float32 reference sampler, on 200,000 samples, put within δ/2 of each weight in each mode?

    The grading check's level holds for any sampler whose mode weights are within δ = 0.03
    of the mixture's; the discretised sampler's are ≈ 0.012 off (towards uniform). With
    200,000 samples the standard error of a fraction is ≤ 0.0011, so δ/2 = 0.015 leaves
    ≥ 2.5 standard errors for the measurement itself (~15 s).
    """
    mixture = ex._mixture()
    sigmas = ex._sigmas(*ex.MIXTURE_SIGMAS)
    score = GaussianMixture(mixture.weights.float(), mixture.means.float(), mixture.vars.float()).score_fn()
    counts = torch.zeros(len(ex.MIXTURE_WEIGHTS), dtype=torch.long)
    for chunk in range(4):
        g = torch.Generator().manual_seed(chunk)
        x = (sigmas[0] * torch.randn(50_000, 2, generator=g, dtype=torch.float64)).float()
        out = ref.annealed_langevin_dynamics(score, x, sigmas, ex.MIXTURE_LR, ex.MIXTURE_STEPS, generator=g)
        counts += ex.mode_counts(out.double(), mixture)
    fractions = counts.double() / counts.sum()
    assert float((fractions - mixture.weights).abs().max()) <= ex.MIXTURE_DELTA / 2, fractions


@functools.lru_cache(maxsize=None)
def _float32_step_cases() -> tuple:
    """About 500 float32 cases of the single-step strategy (drawing them takes a few seconds)."""
    return tuple(c for c in draw_cases(ex.step_cases(), 1000, 1) if c["dtype"] == "float32")


def _worst_ratio(function: str, impl, build) -> float:
    """max |got − expected| / (atol + rtol·|expected|) of ``impl`` over the float32 step cases."""
    ctx = Context(InProcessRunner({}), torch.device("cpu"), 0, "langevin")
    reference = getattr(ref, function)
    rtol, atol = ex.STEP_TOLERANCE.for_dtype(torch.float32)
    worst = 0.0
    for case in _float32_step_cases():
        inputs = build(case, ctx)
        expected = inputs.call_reference(reference)
        logs: list = []
        args = wire.decode(list(inputs.args.values()), lambda spec: models.build(spec, logs))
        kwargs = wire.decode(inputs.kwargs, lambda spec: models.build(spec, logs))
        for got, exp in zip(impl(*args, **kwargs), expected):
            worst = max(worst, float(((got.double() - exp).abs() / (atol + rtol * exp.abs())).max()))
    return worst


@pytest.mark.parametrize("function, impl, build", [
    ("reverse_diffusion_predictor", ref.reverse_diffusion_predictor, ex.build_predictor),
    ("reverse_diffusion_predictor", catalogue.predictor_float64, ex.build_predictor),
    ("langevin_corrector", ref.langevin_corrector, ex.build_corrector),
    ("langevin_corrector", catalogue.corrector_sum_of_squares, ex.build_corrector),
], ids=["predictor", "predictor float64 inside", "corrector", "corrector with sums of squares"])
def test_float32_steps_stay_far_inside_the_step_tolerance(function, impl, build):
    """Do correct float32 single steps use at most a tenth of the allowed error (measured: ≤ 2.2%)?"""
    assert _worst_ratio(function, impl, build) < 0.1


def test_gaussian_law_data_are_float32_exact():
    """Are the law checks' data parameters representable in float32, so that the model the student gets is the law's?"""
    for data in (ex._langevin_target(), ex._annealed_data(), ex._pc_data()):
        for tensor in (data.mean, data.var):
            assert torch.equal(tensor.float().double(), tensor)
    assert math.isclose(ex.ANNEALED_LR, 0.5 * ex.ANNEALED_SIGMAS[0] ** 2)
