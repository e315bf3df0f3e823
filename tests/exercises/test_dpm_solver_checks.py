"""Do the dpm_solver checks hold what their comments promise, beyond what the bug catalogue shows?

* correct float32 steps and samplers stay far inside the term-size tolerance (the declaration
  claims a 2x margin; measured they use under a tenth);
* the measured order of convergence is 1.96–1.99 for DPM-Solver++(2M) and 0.97–0.99 for DDIM on the
  order check's problem, over many seeds' data, so the band [1.6, 2.4] separates them with the stated
  margins; and the order check names a first-order sampler;
* the statistics of the law check are their null distributions for correct samplers over many seeds;
* ``grade submit`` gives the solution full marks and the student notebook none.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from grader.checks import Context, Law, draw_cases
from grader.exercises import dpm_solver as ex
from grader.runner import InProcessRunner
from reference import dpm_solver as ref
from reference import laws
from tests.catalogue import dpm_solver as catalogue
from tests.helpers import assert_solution_full_stub_zero

#: The level of each Kolmogorov–Smirnov test of the calibration (fixed seeds: the chance that they make a
#: correct check fail): 4 groups of statistics at 1e-3 each.
KS_LEVEL = 1e-3
CALIBRATION_SEEDS = 100


def _worst_ratio(function: str, impl, strategy, build, size, n: int = 120) -> float:
    """max |got − expected| / (atol + rtol·size) over float32 cases drawn from ``strategy``."""
    ctx = Context(InProcessRunner({**catalogue.CORRECT, function: impl}), torch.device("cpu"), 0, "dpm_solver")
    cases = [c for c in draw_cases(strategy, n, 7) if c["dtype"] == "float32"]
    inputs = [build(c, ctx) for c in cases]
    rtol, atol = ex.TERMS_TOLERANCE.for_dtype(torch.float32)
    reference = getattr(ref, function)
    worst = 0.0
    for item, outcome in zip(inputs, ctx.call(function, inputs)):
        error = (outcome.value.double() - item.call_reference(reference).double()).abs()
        worst = max(worst, float((error / (atol + rtol * size(item.in_float64()))).max()))
    return worst


@pytest.mark.parametrize("function, impl, strategy", [
    ("dpm_solver_first_order_step", ref.dpm_solver_first_order_step, ex.step_cases()),
    pytest.param("dpm_solver_first_order_step", catalogue.first_order_in_eps, ex.step_cases(), marks=pytest.mark.slow),
    pytest.param("dpm_solver_2m_step", ref.dpm_solver_2m_step, ex.step_cases(second_order=True),
                 marks=pytest.mark.slow),
], ids=["first order", "first order in ε", "2M"])
def test_float32_steps_stay_far_inside_the_term_size_tolerance(function, impl, strategy):
    """Do correct float32 steps use at most a tenth of the allowed error (the comment claims ≥ 2x)?"""
    assert _worst_ratio(function, impl, strategy, ex.build_step, ex.step_terms) < 0.1


@pytest.mark.slow
def test_float32_samplers_stay_far_inside_the_chain_tolerance():
    """Does a correct float32 sampler, its error carried through the chain, use at most a tenth of it?"""
    for impl in (ref.dpm_solver_sample, catalogue.sample_with_history):
        assert _worst_ratio("dpm_solver_sample", impl, ex.chain_cases(), ex.build_sample, ex.chain_terms, 60) < 0.1


def _order(sample, seed: int) -> float:
    ctx = Context(InProcessRunner(catalogue.CORRECT), torch.device("cpu"), seed, "dpm_solver")
    inputs = ex.build_order({"seed": seed}, ctx)
    a = inputs.in_float64().arguments()
    data = ex.model_data(a)
    model, ac, x_T = data.eps_model(a["alphas_cumprod"]), a["alphas_cumprod"], a["x_T"]
    errors = [float(((sample(model, ac, n, x_T) - laws.dpm_solver_exact_endpoint(data, ac, n, x_T))
                     / data.var.sqrt()).abs().max()) for n in ex.ORDER_STEPS]
    return laws.convergence_order(ex.ORDER_STEPS, errors)


@pytest.mark.slow
def test_measured_orders_on_many_seeds_sit_well_inside_and_outside_the_band():
    """Over 20 seeds' data: 2M's order within [1.9, 2.05] (band ± ≥ 0.3 beyond it), DDIM's within [0.9, 1.05]."""
    dpm = [_order(lambda m, ac, n, x: ref.dpm_solver_sample(m, None, ac, n, x_T=x), s) for s in range(20)]
    ddim = [_order(lambda m, ac, n, x: catalogue._sampler(m, None, ac, n, x_T=x, all_first_order=True), s)
            for s in range(20)]
    assert 1.9 <= min(dpm) and max(dpm) <= 2.05, dpm
    assert 0.9 <= min(ddim) and max(ddim) <= 1.05, ddim
    low, high = ex.ORDER_BAND
    assert low - max(ddim) >= 0.5 and min(dpm) - low >= 0.3 and high - max(dpm) >= 0.3


ORDER_CHECK = next(c for c in ex.EXERCISE.checks if "order of convergence" in c.tests()[0].name)


@pytest.mark.parametrize("impl, passes", [(ref.dpm_solver_sample, True),
                                          (catalogue._sampler_bug(all_first_order=True), False)],
                         ids=["2M", "DDIM everywhere"])
def test_order_check_passes_2m_and_names_a_first_order_sampler(impl, passes):
    """Does the order check pass the reference and fail DDIM-everywhere with its measured order and a hint?"""
    namespace = {**catalogue.CORRECT, "dpm_solver_sample": impl}
    (verdict,) = ORDER_CHECK.run(Context(InProcessRunner(namespace), torch.device("cpu"), 0, "dpm_solver"))
    assert verdict.passed == passes, verdict.output
    if not passes:
        assert "first order" in verdict.output and "the measured order is 0.9" in verdict.output, verdict.output


@pytest.mark.calibration
def test_law_statistics_of_correct_samplers_follow_their_null_distributions():
    """Over 100 seeds, are the law check's mean z's N(0, 1), its χ² statistics χ²-distributed, its correlations ≈ N(0, 1)?

    Half the seeds grade the reference, half the history-list sampler. The mean z and both χ² are exact
    (the sampler is affine in x_T ~ N(0, I)); the correlation z's are normal to within Berry–Esseen's
    5e-3, below what a KS test on these counts resolves (see tests/exercises/test_ddim_checks.py).
    """
    check = next(c for c in ex.EXERCISE.checks if isinstance(c, Law))
    statistics = []
    for seed in range(CALIBRATION_SEEDS):
        namespace = catalogue.CORRECT if seed % 2 == 0 else {**catalogue.CORRECT,
                                                             "dpm_solver_sample": catalogue.sample_with_history}
        statistics += check.measure(Context(InProcessRunner(namespace), torch.device("cpu"), seed, "dpm_solver")).statistics

    def group(prefix):
        return [s for s in statistics if s.name.startswith(prefix)]

    results = {
        "mean z ~ N(0, 1)": stats.kstest([s.value for s in group("z of the mean")], "norm").pvalue,
        "χ² of residuals": stats.kstest([stats.chi2.cdf(s.value * s.n, s.n) for s in group("mean of squared residuals")],
                                        "uniform").pvalue,
        "χ² of coordinate means": stats.kstest([stats.chi2.cdf(s.value * s.n, s.n) for s in group("mean square of the 16")],
                                               "uniform").pvalue,
        "correlation z ≈ N(0, 1)": stats.kstest([s.value for s in group("correlation")], "norm").pvalue,
    }
    assert len(group("z of the mean")) == 2 * CALIBRATION_SEEDS
    assert all(p > KS_LEVEL for p in results.values()), results
    assert all(s.passed for s in statistics), [s.describe() for s in statistics if not s.passed]


@pytest.mark.slow
def test_grade_submit_gives_the_solution_full_marks_and_the_stub_none(tmp_path):
    """solutions/dpm_solver 29/29 through the sandboxed kernel, exercises/dpm_solver 0/29 (tests.helpers)."""
    assert_solution_full_stub_zero("dpm_solver", 29, tmp_path)
