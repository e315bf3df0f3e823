"""What the sde declaration's comments claim that the catalogue does not show.

* its form: the allowed imports, ≤ 650 lines, the point budget its docstring states;
* the tolerances: correct float32 implementations (the reference, float64 inside, score_sde's −dt form, another
  grouping) use a small stated fraction of STEP_TOLERANCE, DSM_TOLERANCE and CHAIN_TOLERANCE on the check's cases;
* the DSM checks' thresholds: the ranking threshold is positive and far below the expected gap (power), and the
  Chernoff p-value at the threshold is the level (consistency of the two bounds);
* end to end (slow): the solution notebook gets full marks through the sandbox, the student notebook 0.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import tests.catalogue.sde as cat
from grader.checks import Context
from grader.exercises import load_exercise
from grader.exercises import sde as decl
from grader.runner import InProcessRunner
from reference import laws
from reference import sde as ref
from reference.toy import GaussianData
from tests.helpers import assert_solution_full_stub_zero

ROOT = Path(__file__).resolve().parents[2]
CTX = Context(InProcessRunner({}), torch.device("cpu"), 0, "sde")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _model(spec: dict, dtype: torch.dtype):
    """The grader's model spec as the student's process builds it, in ``dtype``."""
    p = spec["params"]
    return GaussianData(p["mean"].to(dtype), p["var"].to(dtype)).vp_score_fn(p["beta_min"], p["beta_max"],
                                                                             p.get("scale", 1.0))


def test_declaration_imports_lines_and_budget():
    """Does the declaration import only grader.checks, grader.exercises, grader.stats and reference, fit in 650
    lines, and give the 34 points its docstring states?"""
    source = (ROOT / "grader/exercises/sde.py").read_text()
    assert len(source.splitlines()) <= 650
    modules = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert all(m.split(".")[0] in {"__future__", "typing", "torch", "hypothesis", "reference"}
               or m in {"grader.checks", "grader.exercises", "grader.exercises._common", "grader.stats"}
               for m in modules), modules
    exercise = load_exercise("sde")
    points = sum(t.points for c in exercise.checks for t in c.tests())
    assert points == 34 and "Point budget (34)" in source


@FAST
@given(decl.step_cases())
def test_correct_float32_steps_use_a_small_fraction_of_the_tolerances(case):
    """Do the float32 reference and the correct alternatives stay within 5% of each step's and dsm_loss's allowance?

    (Measured over 300 cases: ≤ 0.16% for the steps, ≤ 3.2% for dsm_loss, whose float32 std is the worst part.)
    """
    case = {**case, "dtype": "float32"}
    for kind, fn, alternatives, allowance in (
            ("sde", ref.reverse_sde_step, (cat.step_float64_inside, cat.step_score_sde_form), decl.STEP_TOLERANCE),
            ("flow", ref.probability_flow_step, (cat.flow_regrouped,), decl.STEP_TOLERANCE),
            ("dsm", ref.dsm_loss, (cat.dsm_float64_inside, cat.dsm_target_form), decl.DSM_TOLERANCE)):
        inputs = decl.build_step(case, CTX, kind)
        args = dict(inputs.arguments())
        wide = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        wide["score_fn"] = _model(args["score_fn"], torch.float64)
        expected = fn(**wide)
        size = (decl.dsm_terms if kind == "dsm" else decl.step_terms)(inputs.in_float64())
        for impl in (fn, *alternatives):
            got = impl(**{**args, "score_fn": _model(args["score_fn"], torch.float32)})
            for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else
                            (expected,)):
                assert g.dtype == torch.float32
                used = float(((g.double() - e).abs() / (allowance.rtol32 * size + allowance.atol32)).max())
                assert used <= 0.05, (kind, impl.__name__, used)


@FAST
@given(decl.chain_cases())
def test_correct_float32_ode_chains_use_a_small_fraction_of_the_tolerance(case):
    """Do the float32 reference and the float64-inside sampler stay within 1% of CHAIN_TOLERANCE (measured ≤ 0.1%)?"""
    inputs = decl.build_chain({**case, "dtype": "float32"}, CTX)
    a = inputs.arguments()
    kw = {k: a[k] for k in ("beta_min", "beta_max", "eps")}
    expected = ref.sde_sample(_model(a["score_fn"], torch.float64), a["shape"], a["n_steps"], probability_flow=True,
                              x_T=a["x_T"].double(), **kw)
    tol = decl.CHAIN_TOLERANCE
    for impl in (ref.sde_sample, cat.sample_float64_inside):
        got = impl(_model(a["score_fn"], torch.float32), a["shape"], a["n_steps"], probability_flow=True, x_T=a["x_T"],
                   **kw)
        used = float(((got.double() - expected).abs() / (tol.atol32 + tol.rtol32 * expected.abs())).max())
        assert used <= 0.01, (impl.__name__, used)


def test_dsm_thresholds_have_power_and_agree_with_their_p_values():
    """On the checks' draws, is the ranking threshold positive and ≤ 95% of the expected gap, is the p-value bound
    at the threshold the level, and do the minimum's bounds bracket the closed-form mean within ±10%?"""
    g = torch.Generator().manual_seed(0)
    t = 1e-3 + (1 - 1e-3) * torch.rand(decl.DSM_BATCH, generator=g, dtype=torch.float64)
    level = decl.DSM_ALPHA / len(decl.DSM_SCALES)
    for scale in decl.DSM_SCALES:
        threshold = laws.dsm_scale_gap_threshold(decl.LAW_DATA, t, scale, level)
        expected = 0.5 * (scale - 1) ** 2 * float((1 - laws.dsm_loss_weights(decl.LAW_DATA, t)).sum())
        assert 0 < threshold <= 0.95 * expected
        assert laws.dsm_scale_gap_p_value(decl.LAW_DATA, t, scale, threshold) == pytest.approx(level, rel=1e-3)
    weights = laws.dsm_loss_weights(decl.LAW_DATA, t)
    low, high = laws.weighted_chi2_bounds(weights, decl.DSM_ALPHA)
    mean = 0.5 * float(weights.sum())
    assert low < mean < high and (high - low) / mean < 0.2  # 32,768 terms: ±9% (about 6 standard deviations)
    # "DSM without the ½" doubles the loss, "mean over dimensions" divides it by 16: both far outside
    assert 2 * mean > high and mean / 16 < low


@pytest.mark.slow
def test_solution_gets_full_marks_and_the_stub_zero(tmp_path):
    """Does the solution notebook, graded through the sandbox, get 34/34, and the student notebook 0?"""
    assert_solution_full_stub_zero("sde", 34, tmp_path, timeout=400.0)
