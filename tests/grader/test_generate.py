"""grade generate: solution markers, determinism, --check."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from grader.cli import main
from grader.generate import GenerateError, generate_all, student_markdown, student_notebook, student_source

ROOT = Path(__file__).resolve().parents[2]


def test_code_region_becomes_not_implemented_at_its_indentation():
    """Is the body between the markers replaced, with the signature and docstring kept?"""
    source = 'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n'
    assert student_source(source) == 'def f(x):\n    """Doc."""\n    raise NotImplementedError()'


def test_code_outside_regions_is_kept_verbatim():
    """Is a cell without markers left alone?"""
    source = "import torch\nx = torch.ones(2)\n"
    assert student_source(source) == source.rstrip("\n")


@pytest.mark.parametrize("source", [
    "def f():\n    ### BEGIN SOLUTION\n    return 1\n",
    "def f():\n    return 1\n    ### END SOLUTION\n",
    "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n",
])
def test_unbalanced_code_markers_are_an_error(source):
    """Is an error thrown when there is no end (or no begin) solution statement?"""
    with pytest.raises(GenerateError):
        student_source(source)


def test_markdown_solution_blocks_are_dropped():
    """Is the answer between the HTML markers removed, and the question kept?"""
    text = "Question?\n\n<!-- BEGIN SOLUTION -->\nThe answer.\n<!-- END SOLUTION -->\nAfter."
    assert student_markdown(text) == "Question?\n\nAfter."
    with pytest.raises(GenerateError):
        student_markdown("<!-- BEGIN SOLUTION -->\nno end")


def _solution() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}, "authors": ["x"]})
    code = nbformat.v4.new_code_cell("def q_sample(x0, t, alphas_cumprod, noise=None):\n    ### BEGIN SOLUTION\n"
                                     "    return x0\n    ### END SOLUTION\n", execution_count=3)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    secret = nbformat.v4.new_code_cell("print('instructor only')", metadata={"tags": ["solution-only"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), code, secret]
    return nb


def test_student_notebook_is_stamped_cleared_and_filtered():
    """Are outputs and counts cleared, solution-only cells removed and the exercise stamped?"""
    nb = student_notebook(_solution(), "q_sampler")
    assert nb.metadata["grader"] == {"exercise": "q_sampler"}
    assert "authors" not in nb.metadata
    assert len(nb.cells) == 2
    code = nb.cells[1]
    assert code.outputs == [] and code.execution_count is None
    assert "raise NotImplementedError()" in code.source and "return x0" not in code.source


def _copy_course(tmp_path: Path) -> Path:
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_generation_is_deterministic_and_the_repository_is_up_to_date(tmp_path):
    """Does running generate twice change no byte, and is exercises/ current with solutions/?"""
    root = _copy_course(tmp_path)
    assert not any(r.changed for r in generate_all(root, check=True)), "exercises/ is out of date: run grade generate"
    before = {p: p.read_bytes() for p in (root / "exercises").rglob("*.ipynb")}
    generate_all(root)
    generate_all(root)
    assert {p: p.read_bytes() for p in (root / "exercises").rglob("*.ipynb")} == before


def test_check_fails_when_a_solution_changes(tmp_path, capsys):
    """Does grade generate --check exit 1 when exercises/ is stale, and 0 once regenerated?"""
    root = _copy_course(tmp_path)
    path = root / "solutions" / "q_sampler" / "q_sampler.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("A new introduction."))
    nbformat.write(nb, path)
    assert main(["generate", "--check", "--root", str(root)]) == 1
    assert main(["generate", "--root", str(root)]) == 0
    assert main(["generate", "--check", "--root", str(root)]) == 0


def test_a_solution_missing_a_graded_function_is_refused(tmp_path, capsys):
    """Is a solution notebook that lacks a graded function an error (exit 2, one line)?"""
    root = _copy_course(tmp_path)
    path = root / "solutions" / "q_sampler" / "q_sampler.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "def q_step(" not in c.source]
    nbformat.write(nb, path)
    assert main(["generate", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "q_step" in err and "Traceback" not in err
