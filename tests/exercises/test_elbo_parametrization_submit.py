"""End to end for elbo and parametrization: the solution gets full marks, the stub zero.

The solution notebook executes through the sandboxed kernel, as students and CI grade, and passes every
test (the statistical ones included); the student notebook generated from it scores 0 with "not
implemented" on every graded function (:func:`tests.helpers.assert_solution_full_stub_zero`).
"""

from __future__ import annotations

import pytest

from tests.helpers import assert_solution_full_stub_zero


@pytest.mark.slow
@pytest.mark.parametrize("exercise, points", [("elbo", 24), ("parametrization", 34)])
def test_solution_gets_full_marks_and_the_stub_zero(exercise, points, tmp_path):
    assert_solution_full_stub_zero(exercise, points, tmp_path, timeout=300.0)
