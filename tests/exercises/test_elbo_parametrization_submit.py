"""grade submit end to end for elbo and parametrization: the solution gets full marks, the stub zero.

Through the sandboxed kernel, as students and CI grade (``grader.submit.grade_submission``): the
solution notebook executes, passes every test (the statistical ones included) and the student
notebook generated from it scores 0 with "not implemented" on every graded function.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader.exercises import load_exercise
from grader.submit import SubmitOptions, grade_submission

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _grade(tmp_path: Path, source: str, exercise: str):
    folder = tmp_path / source / exercise
    folder.mkdir(parents=True)
    shutil.copy(ROOT / source / exercise / f"{exercise}.ipynb", folder)
    result, _ = grade_submission(folder, SubmitOptions(device="cpu", timeout=300.0))
    return result


@pytest.mark.parametrize("exercise", ["elbo", "parametrization"])
def test_solution_gets_full_marks(exercise, tmp_path):
    """Does the solution notebook run from top to bottom and pass every test?"""
    result = _grade(tmp_path, "solutions", exercise)
    failed = [(t.name, t.output) for t in result.tests if not t.passed]
    assert not failed
    assert result.score == result.max_score > 0


@pytest.mark.parametrize("exercise", ["elbo", "parametrization"])
def test_stub_gets_zero_and_says_not_implemented_for_every_function(exercise, tmp_path):
    """Does the generated student notebook score 0, with 'not implemented' in every graded function's feedback?"""
    result = _grade(tmp_path, "exercises", exercise)
    graded = [t for t in result.tests if t.max_score > 0]
    assert graded and all(not t.passed for t in graded)
    assert result.score == 0
    for function in load_exercise(exercise).function_names:
        outputs = [t.output for t in graded if t.function == function]
        assert outputs and all("not implemented" in o for o in outputs), function
