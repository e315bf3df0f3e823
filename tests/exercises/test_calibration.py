"""Are the statistical checks calibrated: uniform p-values and no false failures for correct code?

The reference's statistical checks on fewer seeds than the full calibration
(``benchmarks/calibrate.py``): 3 × CALIBRATION_SEEDS (15 by default) seeds per exercise,
starting at seed 1000 so that these seeds differ from the catalogue's.

For a correct implementation every statistic's p-value is Uniform(0, 1) (an
exact test) or stochastically larger (a conservative one: Chernoff bounds, the
binomial band test's composite null). The one-sided Kolmogorov–Smirnov test of
the seeds' p-values against Uniform(0, 1) — do they pile up near 0? — rejects at
1e-3 per statistic; with ~10 statistics per exercise the suite's false alarm
probability stays near 1e-2 per exercise, and the seeds are fixed, so a pass is
stable. (The normal-approximation p-values of the correlation tests are close to
uniform at these sample sizes, n ≥ 30,000.) That test is a ``calibration`` (slow: CI runs it); the quick
loop checks the KS helper, one seed of the collection, how the script reads the catalogue tests'
records, and that no module under ``benchmarks/`` imports the tests (the script runs them in a
pytest subprocess instead: ``--calibration-out``, tests/conftest.py).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import pkgutil
import sys
from pathlib import Path

import pytest

import tests.catalogue as catalogue_package
from grader.checks import Statistical
from grader.exercises import load_exercise
from tests.helpers import SEEDS, grade_namespace

ROOT = Path(__file__).resolve().parents[2]


def _calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "benchmarks" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibrate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


calibrate = _calibrate()


def _statistical_functions(exercise: str) -> set[str]:
    return {c.function for c in load_exercise(exercise).checks if isinstance(c, Statistical)}


EXERCISES = [m.name for m in pkgutil.iter_modules(catalogue_package.__path__) if _statistical_functions(m.name)]


def _correct_statistics(exercise: str, seeds: int, first_seed: int):
    """The statistical checks of the correct namespace on seeds first_seed …: a calibration row."""
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    row = calibrate.Row(exercise, "correct", "reference", "statistical", seeds)
    for seed in range(first_seed, first_seed + seeds):
        graded = grade_namespace(exercise, module.CORRECT, seed, functions=_statistical_functions(exercise))
        if any(not g.passed for g in graded):
            row.failing_seeds.append(seed)
        for g in graded:
            for statistic in g.details.get("statistics", []):
                key = f"{g.name} — {statistic['name']}"
                row.p_values.setdefault(key, []).append(statistic["p_value"])
                row.sample_sizes[key] = statistic["n"]
    return row


@pytest.mark.calibration
@pytest.mark.parametrize("exercise", EXERCISES)
def test_correct_statistics_are_uniform_and_never_fail(exercise):
    """Do the correct implementation's statistical tests pass on every seed, with uniform p-values?"""
    row = _correct_statistics(exercise, seeds=3 * SEEDS, first_seed=1000)
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
    row = _correct_statistics(exercise, seeds=1, first_seed=1000)
    assert not row.failing_seeds and row.p_values
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in row.p_values.values())
    assert all(n > 0 for n in row.sample_sizes.values())


def _imports_of_tests(source: str) -> list[str]:
    """Every import of the ``tests`` package in ``source``: import statements, and import_module /
    __import__ calls whose (f-)string argument starts with "tests"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tests":
            found.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args:
            first = node.args[0]
            text = first.value if isinstance(first, ast.Constant) else (
                first.values[0].value if isinstance(first, ast.JoinedStr) and first.values
                and isinstance(first.values[0], ast.Constant) else "")
            if isinstance(text, str) and text.split(".")[0] == "tests":
                found.append(text)
    return found


def test_no_module_under_benchmarks_imports_the_tests():
    """benchmarks/ runs the tests (a pytest subprocess), never imports them (seen failing on the old calibrate.py,
    which imported tests.catalogue.<exercise> with importlib)."""
    assert _imports_of_tests("import importlib\nimportlib.import_module(f'tests.catalogue.{name}')") == [
        "tests.catalogue."]
    assert _imports_of_tests("from tests.helpers import SEEDS\nimport tests.catalogue") == ["tests.helpers",
                                                                                           "tests.catalogue"]
    modules = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert modules
    offending = {str(p.relative_to(ROOT)): found for p in modules if (found := _imports_of_tests(p.read_text()))}
    assert offending == {}


NODEIDS = [f"{calibrate.CATALOGUE_TESTS}::{test}" for test in (
    "test_bug_is_caught_and_named[quick ddim: off by one]", "test_bug_is_caught_and_named[ddim: off by one]",
    "test_alternative_gets_full_marks[cfg: lerp]", "test_reference_gets_full_marks[ddim]",
    "test_reference_gets_full_marks_on_every_seed[ddim]", "test_the_quick_loop_covers_every_catalogue_and_the_full_run_every_entry")]


def test_the_script_selects_the_recording_tests_and_tabulates_their_records():
    """Does calibrate.py run the full entries and the reference on every seed (not the quick loop's), and read
    back, entry by entry in catalogue order, the seeds that failed and the p-values in order?"""
    assert calibrate.selected(NODEIDS) == [NODEIDS[1], NODEIDS[2], NODEIDS[4]]
    assert calibrate.selected(NODEIDS, ["ddim"]) == [NODEIDS[1], NODEIDS[4]]
    records = [
        {"exercise": "ddim", "kind": "bug", "name": "b1", "function": "f", "index": 1, "seed": 0, "failed": True,
         "statistics": []},
        {"exercise": "ddim", "kind": "correct", "name": "reference", "function": "all", "index": -1, "seed": 1,
         "failed": False, "statistics": [["law — z", 0.5, 100], ["law — chi2", 0.25, 100]]},
        {"exercise": "ddim", "kind": "bug", "name": "b0", "function": "f", "index": 0, "seed": 0, "failed": False,
         "statistics": []},
        {"exercise": "ddim", "kind": "correct", "name": "reference", "function": "all", "index": -1, "seed": 0,
         "failed": True, "statistics": [["law — z", 0.1, 100], ["law — chi2", 0.75, 100]]},
        {"exercise": "cfg", "kind": "alternative", "name": "a", "function": "g", "index": 0, "seed": 0,
         "failed": False, "statistics": []},
    ]
    rows = calibrate.rows_from_records(records, seeds=2)
    assert [(r.exercise, r.kind, r.name) for r in rows] == [("cfg", "alternative", "a"), ("ddim", "correct", "reference"),
                                                           ("ddim", "bug", "b0"), ("ddim", "bug", "b1")]
    reference = rows[1]
    assert reference.failing_seeds == [0] and reference.recorded == 2 and reference.rate == 0.5
    assert list(reference.p_values) == ["law — z", "law — chi2"] and reference.p_values["law — z"] == [0.1, 0.5]
    assert reference.sample_sizes == {"law — z": 100, "law — chi2": 100}
    assert rows[3].failing_seeds == [0] and rows[2].failing_seeds == [] and rows[2].recorded == 1
    text = calibrate.report(rows, 2, 60.0)
    assert "| ddim | reference | all | 1 / 2 | 0.500 |" in text and "| ddim | b1 | f | 1 / 2 | 0.500 |" in text


def _nodeid(test: str, param: str) -> str:
    """A catalogue test's node id as pytest spells it (non-ASCII characters escaped)."""
    return f"{calibrate.CATALOGUE_TESTS}::{test}[{param.encode('unicode_escape').decode('ascii')}]"


@pytest.mark.slow
def test_the_script_runs_the_catalogue_tests_and_reads_what_they_recorded():
    """End to end on one seed: the fid reference, its first bug and first alternative, as pytest runs and records them."""
    module = importlib.import_module("tests.catalogue.fid")
    bug, alternative = module.BUGS[0], module.ALTERNATIVES[0]
    rows = calibrate.measure([_nodeid("test_reference_gets_full_marks_on_every_seed", "fid"),
                              _nodeid("test_bug_is_caught_and_named", f"fid: {bug.name}"),
                              _nodeid("test_alternative_gets_full_marks", f"fid: {alternative.name}")], seeds=1)
    assert [(r.kind, r.name, r.function) for r in rows] == [
        ("correct", "reference", "all"), ("alternative", alternative.name, alternative.function),
        ("bug", bug.name, bug.function)]
    assert all(r.recorded == 1 for r in rows)
    assert rows[2].failing_seeds == [0] and rows[0].failing_seeds == rows[1].failing_seeds == []
