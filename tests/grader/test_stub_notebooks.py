"""A student notebook as handed out (every graded function its stub): does each failing cell fail before it
draws anything?

A demo cell that made its figure first and called the student's function after left, in the stub's executed
notebook, an empty grid of axes under the error, and cost the stub the figure's rendering (0.3-0.9 s a cell).
The notebooks now compute first and draw after; this holds them to it.
"""

from __future__ import annotations

import contextlib
import io

import matplotlib
import nbformat
import pytest

from grader.exercises import exercise_names
from tests.helpers import ROOT


def _cells_that_raise_after_drawing(path, workdir) -> list[int]:
    import matplotlib.pyplot as plt

    notebook = nbformat.read(path, as_version=4)
    namespace: dict = {"__name__": "__main__"}
    found = []
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            before = set(plt.get_fignums())
            try:
                exec(compile(cell.source, f"<cell {index}>", "exec"), namespace)  # noqa: S102 -- our notebooks
            except Exception:  # noqa: BLE001 -- a stub's cells raise; which ones drew first is the question
                if set(plt.get_fignums()) - before:
                    found.append(index)
            plt.close("all")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", exercise_names())
def test_no_stub_cell_raises_after_it_made_a_figure(name, tmp_path, monkeypatch):  # ~1 s each
    """Seen failing on the notebooks before they were reordered (q_sampler's cells 16, 27, 31, 32; cfg's 17, 22,
    30, 36; ...)."""
    monkeypatch.setenv("GRADER_SANDBOX", "1")  # check() cells do nothing, as in the grading kernel
    backend = matplotlib.get_backend()
    matplotlib.use("Agg")
    try:
        bad = _cells_that_raise_after_drawing(ROOT / "exercises" / name / f"{name}.ipynb", tmp_path)
    finally:
        matplotlib.use(backend)
    assert bad == [], f"{name}: cells {bad} raise after creating a figure (compute first, draw after)"


def test_the_finder_tells_drawing_then_failing_from_failing_first(tmp_path):  # no notebook of the course: fast
    """Does the helper name exactly the cell that draws and then raises?"""
    cells = ["import matplotlib.pyplot as plt",
             "fig, ax = plt.subplots()\nraise NotImplementedError",  # draws, then fails: found
             "raise NotImplementedError\nfig, ax = plt.subplots()",  # fails first: fine
             "fig, ax = plt.subplots()"]  # draws, no failure: fine
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    backend = matplotlib.get_backend()
    matplotlib.use("Agg")
    try:
        assert _cells_that_raise_after_drawing(path, tmp_path) == [1]
    finally:
        matplotlib.use(backend)
