"""Agreement and Property: several references, separate grading and diagnosis tolerances, gated form points.

Each test grades a tiny function ``f(x) = 2·x`` (or its variants) in this process.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

from grader.checks import Agreement, Aspect, Context, Diagnosis, Inputs, Property, Tolerance, output_aspect
from grader.runner import InProcessRunner

CASES = st.fixed_dictionaries({"n": st.integers(1, 4), "dtype": st.sampled_from(["float32", "float64"]),
                               "seed": st.integers(0, 100)})


def build(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    dtype = torch.float32 if case["dtype"] == "float32" else torch.float64
    return Inputs({"x": torch.randn(case["n"], generator=g, dtype=torch.float64).to(dtype).to(ctx.device)})


def double(x):
    return 2 * x


def grade(check, fn) -> list:
    ctx = Context(InProcessRunner({"f": fn}), torch.device("cpu"), 0, "test")
    return check.run(ctx)


def agreement(**kw) -> Agreement:
    return Agreement(**{"function": "f", "cases": CASES, "build": build, "reference": double, "dtype_from": "x",
                        "device_from": "x", "points": 2, "dtype_points": 1, "max_examples": 8, **kw})


def test_a_correct_function_gets_both_points():
    assert [v.passed for v in grade(agreement(), double)] == [True, True]


def test_zeros_or_nan_in_the_right_dtype_earn_no_dtype_point():
    """torch.zeros_like(x) and a NaN tensor have x's dtype and device: they must not earn the form point (issue 9)."""
    for wrong in (torch.zeros_like, lambda x: torch.full_like(x, math.nan)):
        # device_from=None: no meta-device run, which on the CPU happened to fail these for another reason
        values, form = grade(agreement(device_from=None), wrong)
        assert not values.passed and not form.passed
        assert "not awarded while “f: matches the reference” fails" in form.output


def test_a_wrong_dtype_still_fails_its_own_test_with_its_own_message():
    values, form = grade(agreement(), lambda x: (2 * x).double())
    assert values.passed and not form.passed and "has dtype torch.float64; expected torch.float32" in form.output


def test_unreadable_results_fail_clearly():
    """A result on the meta device, sparse or complex is a failed test with a one-line reason, not a grader error."""
    for wrong, reason in ((lambda x: torch.empty_like(x, device="meta"), "meta device"),
                          (lambda x: (2 * x).to_sparse(), "sparse"),
                          (lambda x: (2 * x).to(torch.complex128), "complex")):
        verdicts = grade(agreement(), wrong)
        assert not any(v.passed for v in verdicts)
        assert reason in verdicts[0].output


def _rounded_double(x):
    return 2 * x + 1e-3  # another convention, as improved-diffusion's tanh CDF is to the exact one


def test_several_references_the_output_passes_if_it_matches_any():
    check = agreement(reference=(double, _rounded_double))
    assert all(v.passed for v in grade(check, double))
    assert all(v.passed for v in grade(check, _rounded_double))
    verdict = grade(check, lambda x: 2 * x + 1e-2)[0]
    assert not verdict.passed and "differs from the expected values" in verdict.output


LOOSE = Tolerance(rtol32=1e-1, atol32=1e-1, rtol64=1e-1, atol64=1e-1, why="test: loose matching of mistakes")


def _off_by_a_little(x):
    return 2 * x + 0.05


def test_diagnosis_tolerance_is_separate_from_the_grading_tolerance():
    """A mistake reproduced to 0.05 is named with a loose diagnosis tolerance, not with the (tight) grading one."""
    mistake = (Diagnosis(_off_by_a_little, "you added a little"),)
    strict = grade(agreement(diagnoses=mistake), lambda x: 2 * x + 0.06)[0]
    assert not strict.passed and "Hint" not in strict.output
    loose = grade(agreement(diagnoses=mistake, diagnosis_tolerance=LOOSE), lambda x: 2 * x + 0.06)[0]
    assert not loose.passed and "Hint: you added a little" in loose.output


def _timesteps(n):
    return torch.arange(n).flip(0)


def test_integer_results_are_diagnosed_exactly():
    check = Property(function="f", cases=st.fixed_dictionaries({"n": st.integers(2, 6)}),
                     build=lambda case, ctx: Inputs({"n": case["n"]}), max_examples=5,
                     aspects=(Aspect("descending", 1, _judge_descending),),
                     diagnoses=(Diagnosis(lambda n: torch.arange(n), "your timesteps ascend"),))
    verdict = grade(check, lambda n: torch.arange(n))[0]
    assert not verdict.passed and "Hint: your timesteps ascend" in verdict.output
    assert "Hint" not in grade(check, lambda n: torch.arange(n) + 1)[0].output


def _judge_descending(inputs, outcome):
    from grader.checks import Mismatch, as_tensor

    if as_tensor(outcome.value, "the result").tolist() != _timesteps(inputs.args["n"]).tolist():
        raise Mismatch("not descending")


def test_output_aspect_judges_shape_dtype_device_and_finiteness_gated_by_values():
    values = Aspect("values", 1, lambda inputs, outcome: None)
    check = Property(function="f", cases=CASES, build=build, max_examples=4, aspects=(
        values, output_aspect("form", 1, shape="x", dtype=torch.float64, device="x", finite=True,
                              gated_by=("values",))))
    ok = grade(check, lambda x: x.double())
    assert [v.passed for v in ok] == [True, True]
    assert "has dtype torch.float32; expected torch.float64" in grade(check, lambda x: x.float())[1].output
    assert "contains NaN" in grade(check, lambda x: torch.full_like(x, math.nan, dtype=torch.float64))[1].output
    assert "has shape" in grade(check, lambda x: torch.zeros(7, dtype=torch.float64))[1].output


@pytest.mark.slow
def test_in_an_exercise_zeros_earn_nothing_and_a_meta_result_is_a_clear_failure():
    """q_sample returning torch.zeros_like(x0), or a tensor on the meta device: every test of q_sample fails, none
    with "the grader failed" (issue 9; before the fix the first earned the dtype point, the second was a grader error)."""
    from tests.catalogue import q_sampler as catalogue
    from tests.helpers import grade_namespace

    for wrong in (lambda x0, t, alphas_cumprod, noise=None: torch.zeros_like(x0),
                  lambda x0, t, alphas_cumprod, noise=None: torch.empty_like(x0, device="meta")):
        graded = grade_namespace("q_sampler", {**catalogue.CORRECT, "q_sample": wrong}, 0, functions={"q_sample"})
        assert graded and not any(g.passed for g in graded), [(g.name, g.passed) for g in graded]
        assert not any("grader failed" in g.output for g in graded)


def test_value_dtype_from_holds_a_float64_result_of_float32_inputs_to_float32s_tolerance():
    """A result off by 1e-6 relative: float32 inputs → float32's tolerance even for a float64 result (its dtype
    test fails instead); float64 inputs → float64's."""
    check = agreement(value_dtype_from="x", tolerance=Tolerance(rtol32=1e-4, atol32=0.0, rtol64=1e-9, atol64=0.0,
                                                                why="test"))
    values, form = grade(check, lambda x: (2 * x).double() * (1 + 1e-6))
    assert not values.passed  # the float64 cases are held to 1e-9
    float32_only = Agreement(**{**{k: getattr(check, k) for k in ("function", "build", "reference", "tolerance",
                                                                   "value_dtype_from", "max_examples")},
                                "cases": st.fixed_dictionaries({"n": st.integers(1, 4), "dtype": st.just("float32"),
                                                                "seed": st.integers(0, 100)})})
    assert grade(float32_only, lambda x: (2 * x).double() * (1 + 1e-6))[0].passed


def test_swapped_names_a_tuple_returned_in_the_wrong_order():
    from grader.checks import swapped

    assert swapped(lambda a, b=0: (a, b))(1, b=2) == (2, 1)
