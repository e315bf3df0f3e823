"""Law: inputs → student calls → standardised residuals → the battery at its level → a StatReport, and hints.

A toy sampler, ``f(x, scale, generator) = x + scale·z``, whose exact law from a fixed x is
N(x, scale²): the reference passes, a wrong spread fails, and the mistake is named by the
law it follows.
"""

from __future__ import annotations

import math

import pytest
import torch

from grader.checks import Battery, Context, Diagnosis, Inputs, Law, LawDraw, Sample, standardise
from grader.checks.base import ProbeError
from grader.checks.compare import Mismatch
from grader.runner import InProcessRunner
from grader.stats import mean_z

B, D = 256, 8


def noisy(x, scale, generator=None):
    return x + scale * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def draw(ctx: Context) -> LawDraw:
    x = torch.randn((B, D), generator=ctx.generator("toy law"), dtype=torch.float64)
    samples = [Sample(Inputs({"x": x, "scale": s}, {"generator": ctx.generator_spec("toy law", s)}),
                      (x, torch.full_like(x, s**2)), label=f"scale {s}") for s in (0.5, 2.0)]
    return LawDraw(samples, note="x + scale·z from a fixed x", meta={"x": x})


MISTAKES = (Diagnosis(lambda d: [(d.meta["x"], torch.full_like(d.meta["x"], s**4)) for s in (0.5, 2.0)],
                      "the noise is scaled by scale² instead of scale"),)
BATTERY = Battery(per_call=("mean", "variance", "coordinate means"), between_calls=True, batch="joint",
                  coordinates="joint")
LAW = Law(function="f", name="the toy law", draw=draw, battery=BATTERY, alpha=1e-6, derivation="nine tests at 1.1e-7",
          mistakes=MISTAKES)


def grade(fn, seed=0):
    return LAW.run(Context(InProcessRunner({"f": fn}), torch.device("cpu"), seed, "test"))[0]


def test_battery_size_and_levels():
    """Nine tests at α/9 for two calls: 3 per call, the two calls' correlation, batch and coordinates."""
    assert BATTERY.size(2) == 9 and BATTERY.level(1e-6, 2) == pytest.approx(1e-6 / 9)
    statistics = BATTERY.run([torch.zeros(B, D), torch.zeros(B, D)], 1e-6, ["a", "b"])
    assert [s.name for s in statistics][:3] == ["z of the mean (a)", "mean of squared residuals (a)",
                                                "mean square of the 8 per-coordinate mean z's (a)"]
    assert all(s.alpha == pytest.approx(1e-6 / 9) for s in statistics)
    assert Battery(on_calls=(0,), between_calls=True, batch=0, coordinates=0).size(2) == 5


def test_a_correct_sampler_passes_and_the_report_carries_every_statistic():
    verdict = grade(noisy)
    assert verdict.passed, verdict.output
    assert len(verdict.details["statistics"]) == 9 and "x + scale·z from a fixed x" in verdict.output


def test_a_wrong_spread_fails_and_is_named_by_the_law_it_follows():
    verdict = grade(lambda x, scale, generator=None: noisy(x, scale**2, generator))
    assert not verdict.passed
    assert "Hint: your samples follow exactly the law of a sampler in which the noise is scaled by scale²" \
        in verdict.output
    assert "plot" in verdict.details


def test_an_unknown_mistake_gets_no_hint():
    verdict = grade(lambda x, scale, generator=None: noisy(x, 3 * scale, generator))
    assert not verdict.passed and "Hint" not in verdict.output


def test_no_value_or_a_wrong_shape_is_a_clear_failure():
    def missing(x, scale, generator=None):
        raise NotImplementedError()

    assert "not implemented yet" in grade(missing).output
    assert "has shape (256,); expected (256, 8)" in grade(lambda x, scale, generator=None: x[:, 0]).output
    assert "meta device" in grade(lambda x, scale, generator=None: torch.empty_like(x, device="meta")).output


def test_standardise():
    r = standardise(torch.tensor([3.0, 1.0]), (torch.tensor([1.0]), torch.tensor([4.0])), "x", shape=(2,))
    assert r.tolist() == [1.0, 0.0] and r.dtype == torch.float64
    with pytest.raises(Mismatch, match="floating-point"):
        standardise(torch.tensor([3, 1]), (torch.zeros(2), torch.ones(2)), "x")


def _uses_math(ns, x):
    return ns.f(x) * math.pi


def test_a_probe_with_a_name_out_of_scope_fails_when_declared():
    """The student's process gives a probe only torch and the builtins: math must fail loudly, at declaration."""
    with pytest.raises(ProbeError, match="uses math"):
        Law(function="f", name="x", draw=draw, battery=BATTERY, alpha=1e-6, derivation="d", probe=_uses_math)


def test_mean_z_is_what_the_battery_reports():
    r = torch.ones(B, D)
    assert BATTERY.run([r, r], 9e-6, ["", ""])[0].value == mean_z(r, 1e-6).value == pytest.approx(math.sqrt(B * D))


def test_a_law_is_a_statistical_check_that_states_its_level():
    """Law is a Statistical check (the calibration finds it), and neither may omit its level or derivation."""
    from grader.checks import Statistical

    assert isinstance(LAW, Statistical) and LAW.tests()[0].kind == "statistical"
    with pytest.raises(TypeError, match="alpha and its derivation"):
        Law(function="f", name="x", draw=draw, battery=BATTERY, alpha=1e-6)
    with pytest.raises(TypeError, match="its draw and its battery"):
        Law(function="f", name="x", battery=BATTERY, alpha=1e-6, derivation="d")
