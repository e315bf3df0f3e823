"""Do the cfg checks hold what their comments promise, beyond what the bug catalogue shows?

* the batched-call judge fails for two calls, a [cond; uncond] batch and interleaved
  timesteps, and passes one call on [uncond; cond] (the defence, seen failing);
* the term-sized tolerances hold correct float32 implementations far inside them, with the
  margins the declaration states;
* the law check's statistics are their null distributions for correct samplers, over many seeds;
* a sampler that guides around the conditional branch fails the law check and is named;
* the solution notebook gets full marks through the sandbox, the student notebook none.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from grader.checks import Context, Law, Mismatch, Outcome, draw_cases
from grader.exercises import cfg as ex
from grader.runner import InProcessRunner
from reference import cfg as ref
from tests.catalogue import cfg as catalogue
from tests.helpers import assert_solution_full_stub_zero

#: The level of each Kolmogorov–Smirnov test below (fixed seeds: the chance that they make a
#: correct check fail), 3 groups of statistics at 1e-3 each.
KS_LEVEL = 1e-3


def _inputs(case: dict, composed: bool = False):
    ctx = Context(InProcessRunner(catalogue.CORRECT), torch.device("cpu"), 0, "cfg")
    return ex.build_guided(case, ctx, composed=composed)


def _logged(inputs, impl) -> Outcome:
    """Run ``impl`` with a model that logs as the sandbox's recorded models do."""
    from grader.sandbox import models

    logs: list = []
    built = inputs.in_float64()
    args = [models.build(v, logs) if isinstance(v, dict) and "__spec__" in v else v for v in built.args.values()]
    value = impl(*args)
    return Outcome("ok", value, model_calls=[log.calls for log in logs])


CASE = {"T": 1000, "schedule": "linear", "shape": (3, 2), "dtype": "float64", "schedule_dtype": "float64",
        "t": (0, 500, 999), "classes": 3, "negative": 0.5, "w": 3.0, "seed": 1}


@pytest.mark.parametrize("impl, message", [
    (catalogue.guided_two_calls, "called 2 times"),
    (catalogue.guided_cond_first, "conditions"),
    (catalogue.guided_t_interleaved, "timesteps"),
])
def test_batched_call_judge_fails_unbatched_reordered_and_interleaved_calls(impl, message):
    """Is each mistake refused with its own message, while the reference passes?"""
    inputs = _inputs(CASE)
    ex.BATCHED_CALL.judge(inputs, _logged(inputs, ref.guided_eps))
    with pytest.raises(Mismatch, match=message):
        ex.BATCHED_CALL.judge(inputs, _logged(inputs, impl))


def test_batched_call_judge_counts_k_plus_one_blocks():
    case = {**CASE, "w": (2.0, -1.0)}
    inputs = _inputs(case, composed=True)
    ex.BATCHED_CALL.judge(inputs, _logged(inputs, ref.composed_eps))
    with pytest.raises(Mismatch, match="called 3 times"):
        ex.BATCHED_CALL.judge(inputs, _logged(inputs, catalogue.composed_one_call_per_condition))
    with pytest.raises(Mismatch, match="conditions"):
        ex.BATCHED_CALL.judge(inputs, _logged(inputs, catalogue.composed_uncond_last))


def _worst_ratio(function, impl, strategy, build, tolerance, scale, n=200) -> float:
    """max |got − expected| / (atol + rtol·scale) over the float32 cases drawn from ``strategy``."""
    ctx = Context(InProcessRunner({**catalogue.CORRECT, function: impl}), torch.device("cpu"), 0, "cfg")
    cases = [c for c in draw_cases(strategy, n, 7) if c["dtype"] == "float32"]
    inputs = [build(c, ctx) for c in cases]
    rtol, atol = tolerance.for_dtype(torch.float32)
    worst = 0.0
    for item, outcome in zip(inputs, ctx.call(function, inputs)):
        expected = item.call_reference(getattr(ref, function))
        allowed = atol + rtol * scale(item.in_float64())
        worst = max(worst, float(((outcome.value.double() - expected).abs() / allowed).max()))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("function, impl, margin", [
    ("cfg_combine", catalogue.combine_lerp, 60), ("cfg_combine", catalogue.combine_affine, 60),
    ("guided_eps", catalogue.guided_split, 60), ("guided_eps", ref.guided_eps, 60),
    ("composed_eps", catalogue.composed_stacked, 60), ("cfg_pp_step", catalogue.cfgpp_cast_first, 3),
    ("cfg_pp_step", ref.cfg_pp_step, 3), ("cfg_sample", ref.cfg_sample, 50),
    ("cfg_sample", catalogue.sample_float64_inside, 50),
])
def test_correct_float32_implementations_stay_inside_the_tolerance_with_its_margin(function, impl, margin):
    """Do correct float32 versions use at most 1/margin of the allowed error (the margin each comment states)?"""
    spec = {
        "cfg_combine": (ex.combine_cases(), ex.build_combine, ex.GUIDANCE_TOLERANCE, ex.combine_size),
        "guided_eps": (ex.guided_cases(), ex.build_guided, ex.GUIDANCE_TOLERANCE, ex.guided_size),
        "composed_eps": (ex.guided_cases(composed=True), ex.build_composed, ex.GUIDANCE_TOLERANCE, ex.guided_size),
        "cfg_pp_step": (ex.pp_cases(), ex.build_pp, ex.SCHEDULE_TOLERANCE, ex.pp_size),
        "cfg_sample": (ex.sample_cases(), ex.build_sample, ex.CHAIN_TOLERANCE, ex.sample_scale),
    }[function]
    assert _worst_ratio(function, impl, *spec) <= 1 / margin


@pytest.mark.calibration
def test_law_statistics_of_correct_samplers_follow_their_null_distributions():
    """Over 200 seeds (reference and the float64 chain), are the mean z's N(0, 1) and the χ² statistics χ²?"""
    collected = []
    for seed in range(200):
        impl = ref.cfg_sample if seed % 2 == 0 else catalogue.sample_float64_inside
        ctx = Context(InProcessRunner({**catalogue.CORRECT, "cfg_sample": impl}), torch.device("cpu"), seed, "cfg")
        law = next(c for c in ex.EXERCISE.checks if isinstance(c, Law))
        collected += law.measure(ctx).statistics
    assert all(s.passed for s in collected), [s.describe() for s in collected if not s.passed]
    z = [s.value for s in collected if s.name.startswith("z of the mean")]
    chi2 = [stats.chi2.cdf(s.value * s.n, s.n) for s in collected if s.name.startswith("mean of squared")]
    corr = [s.value for s in collected if s.name.startswith("correlation")]
    results = {"mean z ~ N(0, 1)": stats.kstest(z, "norm").pvalue,
               "χ² CDF ~ U(0, 1)": stats.kstest(chi2, "uniform").pvalue,
               "correlation z ≈ N(0, 1)": stats.kstest(corr, "norm").pvalue}
    assert all(p > KS_LEVEL for p in results.values()), results


@pytest.mark.slow
def test_law_check_names_guidance_around_the_conditional_branch():
    """A sampler with ε_c + w(ε_c − ε_u) fails the law check, and the hint names the (1 + w) convention."""

    def around_cond(eps_model, shape, cond, uncond, guidance_scale, alphas_cumprod, num_steps, generator=None, x_T=None):
        return ref.cfg_sample(eps_model, shape, cond, uncond, guidance_scale + 1, alphas_cumprod, num_steps, generator,
                              x_T)

    ctx = Context(InProcessRunner({**catalogue.CORRECT, "cfg_sample": around_cond}), torch.device("cpu"), 0, "cfg")
    law = next(c for c in ex.EXERCISE.checks if isinstance(c, Law))
    verdict = law.run(ctx)[0]
    assert not verdict.passed
    assert "(1 + w) convention" in verdict.output


@pytest.mark.slow
def test_grade_submit_gives_the_solution_full_marks_and_the_stub_none(tmp_path):
    """solutions/cfg 31/31 through the sandboxed kernel, exercises/cfg 0/31 (tests.helpers)."""
    assert_solution_full_stub_zero("cfg", 31, tmp_path)
