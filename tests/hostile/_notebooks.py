"""What the attack suites share: the honest q_sampler definitions, a notebook of cells, one grading.

Each attack notebook is the q_sampler solution's definitions (no plots: fast) plus the attack,
graded through the real sandbox with the suite's small limits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import nbformat

from grader.exercises import load_exercise
from grader.render import write_outputs
from grader.sandbox.kernel import Limits
from grader.submit import SubmitOptions, grade_submission

ROOT = Path(__file__).resolve().parents[2]


def definitions() -> list[str]:
    """The q_sampler solution's setup and definition cells, without plots, sanity cells or check() calls."""
    nb = nbformat.read(ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb", as_version=4)
    graded = ("_extract",) + load_exercise("q_sampler").function_names
    keep = []
    for cell in nb.cells:
        defines = cell.source.lstrip().startswith(tuple(f"def {name}(" for name in graded))
        if cell.cell_type == "code" and (cell.get("id") == "setup" or defines):
            keep.append("\n".join(line for line in cell.source.splitlines() if "SOLUTION" not in line))
    return keep


def replace(cells: list[str], function: str, body: str) -> list[str]:
    """``cells`` with the cell defining ``function`` replaced by ``body``."""
    return [body if c.lstrip().startswith(f"def {function}(") else c for c in cells]


def notebook(tmp_path: Path, cells: list[str], name: str = "q_sampler") -> Path:
    """A folder ``tmp_path/name`` holding one q_sampler notebook of ``cells``."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["grader"] = {"exercise": "q_sampler"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, folder / "q_sampler.ipynb")
    return folder


class Graded(NamedTuple):
    result: object
    notebook: nbformat.NotebookNode
    seconds: float


def grade(folder: Path, limits: Limits, timeout: float) -> Graded:
    """Grade ``folder`` as ``grade submit`` does, feedback in ``folder/feedback``; how long it took."""
    started = time.monotonic()
    out = folder / "feedback"
    result, executed = grade_submission(folder, SubmitOptions(timeout=timeout, limits=limits, out=out))
    write_outputs(result, executed, out)
    return Graded(result, executed, time.monotonic() - started)
