"""Are the statistical checks calibrated: uniform p-values and no false failures for correct code?

The same code as the full calibration (``benchmarks/calibrate.py``), on fewer
seeds: 3 × CALIBRATION_SEEDS (30 by default) seeds per exercise, starting at
seed 1000 so that these seeds differ from the catalogue's.

For a correct implementation every statistic's p-value is Uniform(0, 1) (an
exact test) or stochastically larger (a conservative one: Chernoff bounds, the
binomial band test's composite null). The one-sided Kolmogorov–Smirnov test of
the seeds' p-values against Uniform(0, 1) — do they pile up near 0? — rejects at
1e-3 per statistic; with ~10 statistics per exercise the suite's false alarm
probability stays near 1e-2 per exercise, and the seeds are fixed, so a pass is
stable. (The normal-approximation p-values of the correlation tests are close to
uniform at these sample sizes, n ≥ 30,000.) That test is a ``calibration`` (slow: CI runs it); the quick
loop checks the KS helper and one seed of the collection.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import SEEDS

ROOT = Path(__file__).resolve().parents[2]


def _calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "benchmarks" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibrate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


calibrate = _calibrate()
EXERCISES = [name for name in calibrate.catalogues() if calibrate.statistical_functions(name)]


@pytest.mark.calibration
@pytest.mark.parametrize("exercise", EXERCISES)
def test_correct_statistics_are_uniform_and_never_fail(exercise):
    """Do the correct implementation's statistical tests pass on every seed, with uniform p-values?"""
    row = calibrate.correct_statistics(exercise, seeds=3 * SEEDS, first_seed=1000)
    assert not row.failing_seeds, f"false failures on seeds {row.failing_seeds}"
    assert row.p_values, "no statistics collected"
    for key, values in row.p_values.items():
        assert calibrate.ks_p_value(values) > 1e-3, (key, sorted(values))


def test_ks_p_value_flags_p_values_piling_up_near_zero_only():
    """Is the one-sided KS p-value large for uniform and for conservative p-values, and tiny when they pile up near 0?"""
    uniform = [(i + 0.5) / 200 for i in range(200)]
    assert calibrate.ks_p_value(uniform) > 0.5
    assert calibrate.ks_p_value([p**0.5 for p in uniform]) > 0.5  # stochastically larger: a valid, conservative test
    assert calibrate.ks_p_value([p / 10 for p in uniform]) < 1e-20  # a level 10 times what it claims
    assert math.isnan(calibrate.ks_p_value(uniform[:4]))


def test_one_seed_of_the_correct_statistics_is_collected():
    """On one seed, do the reference's statistical checks pass and report a p-value and n per statistic?"""
    exercise = "q_sampler" if "q_sampler" in EXERCISES else EXERCISES[0]
    row = calibrate.correct_statistics(exercise, seeds=1, first_seed=1000)
    assert not row.failing_seeds and row.p_values
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in row.p_values.values())
    assert all(n > 0 for n in row.sample_sizes.values())
