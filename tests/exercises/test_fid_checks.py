"""Do the fid checks hold what their comments promise, beyond what the bug catalogue shows?

* every singular case of the eps-retry check really makes scipy's sqrtm fail (so the retry is what
  is tested), and a correct eigenvalue route that never retries stays inside the allowance;
* the term-size tolerances of FID and KID hold the correct alternative routes (eigenvalues, the
  symmetric form, loops) with the margin their comments claim, on the cases the checks draw;
* both kinds of input are sent: a function that accepts only tensors, or only numpy arrays, fails;
* every scalar kind a student may return is accepted (float, numpy float, 0-d or one-element
  tensor), and anything else is one clear sentence;
* end to end: the solution gets full marks through the sandbox, the generated notebook 0 (tests.helpers).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from grader.checks import Context
from grader.checks.property import draw_cases
from grader.exercises import fid as ex
from grader.runner import InProcessRunner
from reference import fid as ref
from tests.catalogue import fid as catalogue
from tests.helpers import assert_solution_full_stub_zero, grade_namespace


def _ctx() -> Context:
    return Context(InProcessRunner(dict(catalogue.CORRECT)), torch.device("cpu"), 0, "fid")


@pytest.mark.parametrize("row", range(len(ex.RETRY_TABLE)))
def test_every_singular_case_needs_the_retry_and_admits_the_eigenvalue_route(row):
    s1, s2 = (m.numpy() for m in ex.retry_covariances(row))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.isfinite(scipy.linalg.sqrtm(s1 @ s2)).all(), "sqrtm no longer fails here: the case tests nothing"
    inputs = ex.build_retry({"row": row, "numpy": False, "seed": row}, _ctx())
    expected = ref.frechet_distance(*inputs.args.values())
    eigen = catalogue.frechet_eigenvalues_torch(*inputs.args.values())
    allowance = float(ex.retry_allowance(inputs))
    assert np.isfinite(expected)
    # The comment of RETRY_TOLERANCE: seen ≤ 0.36 of the allowance.
    assert abs(eigen - expected) <= 0.5 * allowance


@pytest.mark.parametrize("function, alternative", [
    ("frechet_distance", catalogue.frechet_eigenvalues_torch),
    ("frechet_distance", catalogue.frechet_symmetric_torch),
    ("fid_from_features", catalogue.fid_torch),
    ("kid", catalogue.kid_torch),
])
def test_correct_routes_stay_far_inside_the_term_size_tolerance(function, alternative):
    build = {"frechet_distance": ex.build_frechet, "fid_from_features": ex.build_fid, "kid": ex.build_kid}[function]
    terms = ex.kid_terms if function == "kid" else ex.fid_terms
    tolerance = ex.KID_TOLERANCE if function == "kid" else ex.FID_TOLERANCE
    ctx = _ctx()
    worst = 0.0
    # 120 cases of the checks' own strategy (the examples first): ~5 graded submissions' worth.
    for case in draw_cases(ex.feature_cases, 120, 7, ex.FEATURE_EXAMPLES):
        inputs = build(case, ctx)
        expected = float(inputs.call_reference(getattr(ref, function)))
        got = float(alternative(*inputs.args.values()))
        rtol, atol = tolerance.for_dtype(torch.float64)
        worst = max(worst, abs(got - expected) / (atol + rtol * float(terms(inputs.in_float64()))))
    # The comments claim a 10× margin (FID) and far more (KID): a correct route uses < 1/10 of it.
    assert worst < 0.1, worst


def test_no_drawn_pair_is_one_the_reference_regularises():
    """Are the pairs where sqrtm(Σ₁Σ₂) fails (the reference then uses Σ + εI, 2e-3 away from an exact route on
    a distance of 5.8) replaced, for both covariance routes? Which pairs fail turns on the machine's round-off,
    so 4 000 small rank-deficient pairs are tried: with OpenBLAS's Haswell kernels about 1 in 400 fails."""
    for seed in range(4000):
        case = {"n1": 4 + seed % 11, "n2": 3 + seed % 7, "d": 2 + seed % 3, "rank1": ("half", "one")[seed % 2],
                "rank2": ("full", "half")[seed // 2 % 2], "shift": 1.0, "numpy": False, "seed": seed}
        x, y = ex._fid_features(case)
        for a, b in ((x, y), (x.numpy(), y.numpy())):
            assert not ref.needs_regularising(ref.feature_statistics(a)[1], ref.feature_statistics(b)[1]), case


def _only(kind):
    def feature_statistics(features):
        if not isinstance(features, kind):
            raise TypeError(f"this implementation takes only {kind.__name__}")
        return ref.feature_statistics(features)
    return feature_statistics


@pytest.mark.parametrize("kind", [torch.Tensor, np.ndarray])
def test_tensors_and_numpy_arrays_are_both_sent(kind):
    graded = grade_namespace("fid", {**catalogue.CORRECT, "feature_statistics": _only(kind)}, 0,
                             functions={"feature_statistics"})
    failed = [g for g in graded if not g.passed]
    assert failed and "this implementation takes only" in failed[0].output


@pytest.mark.parametrize("convert", [float, np.float64, lambda v: torch.tensor(v, dtype=torch.float64),
                                     lambda v: torch.tensor([v], dtype=torch.float64)],
                         ids=["float", "numpy float64", "0-d tensor", "one-element tensor"])
def test_every_scalar_kind_is_accepted(convert):
    def kid(features1, features2):
        return convert(ref.kid(features1, features2))

    graded = grade_namespace("fid", {**catalogue.CORRECT, "kid": kid}, 0, functions={"kid"})
    assert all(g.passed for g in graded), [g.output for g in graded]


def test_a_result_that_is_not_a_number_is_one_clear_sentence():
    graded = grade_namespace("fid", {**catalogue.CORRECT, "kid": lambda a, b: [ref.kid(a, b)]}, 0, functions={"kid"})
    assert not graded[0].passed
    assert "kid returned a result of type list; a Python float was expected" in graded[0].output.splitlines()[0]
    pr = lambda real, fake, k=3: ref.precision_recall(real, fake, k)[0]  # noqa: E731 -- only the precision
    graded = grade_namespace("fid", {**catalogue.CORRECT, "precision_recall": pr}, 0, functions={"precision_recall"})
    assert "a pair (precision, recall) of floats was expected" in graded[0].output.splitlines()[0]


def test_a_known_mistake_is_named():
    graded = grade_namespace("fid", {**catalogue.CORRECT, "precision_recall": catalogue.pr_swapped_roles}, 0,
                             functions={"precision_recall"})
    assert "Hint: your (precision, recall) are (recall, precision)" in graded[0].output
    graded = grade_namespace("fid", {**catalogue.CORRECT, "kid": catalogue.kid_biased}, 0, functions={"kid"})
    assert "Hint: your KID keeps the terms k(xᵢ, xᵢ)" in graded[0].output


@pytest.mark.slow
def test_grade_submit_gives_the_solution_full_marks_and_the_stub_zero(tmp_path):
    assert_solution_full_stub_zero("fid", 15, tmp_path, timeout=300.0)
