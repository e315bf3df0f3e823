"""``grade generate``: student notebooks from the instructors' solution notebooks.

nbgrader's markers, one job per step:

* code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes
  ``raise NotImplementedError()`` at the marker's indentation; the signature and
  docstring outside the markers stay;
* markdown between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` is dropped;
* cells tagged ``solution-only`` are removed;
* outputs and execution counts are cleared and ``metadata.grader`` is stamped.

Generation is deterministic (same input, same bytes), so ``grade generate
--check`` can tell whether ``exercises/`` is up to date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.errors import GraderError
from grader.exercises import exercise_names, load_exercise

__all__ = ["GenerateError", "generate_all", "student_notebook", "student_source"]

_CODE_BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_CODE_END = re.compile(r"^\s*### END SOLUTION\s*$")
_MD_BLOCK = re.compile(r"<!--\s*BEGIN SOLUTION\s*-->.*?<!--\s*END SOLUTION\s*-->\n?", re.DOTALL)
_MD_STRAY = re.compile(r"<!--\s*(BEGIN|END) SOLUTION\s*-->")
_FUNCTION = re.compile(r"^(?:def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)


class GenerateError(GraderError):
    """A solution notebook is malformed (unbalanced markers, a missing function)."""


def student_source(source: str, where: str = "a cell") -> str:
    """Replace every code solution region by ``raise NotImplementedError()``."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), start=1):
        begin, end = _CODE_BEGIN.match(line), _CODE_END.match(line)
        if begin:
            if inside:
                raise GenerateError(f"{where}, line {number}: BEGIN SOLUTION inside another solution region")
            inside, indent = True, begin.group(1)
            out.append(f"{indent}raise NotImplementedError()")
        elif end:
            if not inside:
                raise GenerateError(f"{where}, line {number}: END SOLUTION without BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise GenerateError(f"{where}: BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out)


def student_markdown(source: str, where: str = "a cell") -> str:
    stripped = _MD_BLOCK.sub("", source)
    if _MD_STRAY.search(stripped):
        raise GenerateError(f"{where}: unbalanced <!-- BEGIN/END SOLUTION --> markers")
    return stripped


def student_notebook(solution: nbformat.NotebookNode, exercise: str) -> nbformat.NotebookNode:
    """The student version of a solution notebook."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {k: v for k, v in solution.metadata.items() if k in ("kernelspec", "language_info")}
    nb.metadata["grader"] = {"exercise": exercise}
    for index, cell in enumerate(solution.cells):
        if "solution-only" in cell.metadata.get("tags", []):
            continue
        where = f"cell {index + 1} ({cell.get('id', '?')})"
        metadata = {k: v for k, v in cell.metadata.items() if k in ("tags",) and v}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(student_source(cell.source, where), metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(student_markdown(cell.source, where), metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata)
        new["id"] = cell.get("id") or f"cell-{index}"
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


def _check_functions(solution: nbformat.NotebookNode, exercise: str, path: Path) -> None:
    """Every graded function must be defined in a code cell of the solution."""
    defined = set()
    for cell in solution.cells:
        if cell.cell_type == "code":
            defined.update(_FUNCTION.findall(cell.source))
    missing = [name for name in load_exercise(exercise).function_names if name not in defined]
    if missing:
        raise GenerateError(f"{path}: the exercise grades {', '.join(missing)}, which the notebook does not define")


@dataclass
class Generated:
    exercise: str
    source: Path
    target: Path
    changed: bool


def generate_all(root: Path, *, check: bool = False, only: list[str] | None = None) -> list[Generated]:
    """Generate ``exercises/NAME/NAME.ipynb`` from ``solutions/NAME/NAME.ipynb`` for every exercise.

    With ``check=True`` nothing is written; the result says which would change.
    """
    solutions = root / "solutions"
    if not solutions.is_dir():
        raise GenerateError(f"{solutions} does not exist: run grade generate from the course repository's root")
    names = only or [p.name for p in sorted(solutions.iterdir()) if (p / f"{p.name}.ipynb").is_file()]
    known = set(exercise_names())
    results = []
    for name in names:
        source = solutions / name / f"{name}.ipynb"
        if name not in known:
            raise GenerateError(f"{source}: no exercise {name!r} is declared in grader/exercises/")
        if not source.is_file():
            raise GenerateError(f"{source} does not exist")
        solution = nbformat.read(source, as_version=4)
        _check_functions(solution, name, source)
        text = nbformat.writes(student_notebook(solution, name)) + "\n"
        target = root / "exercises" / name / f"{name}.ipynb"
        changed = not target.is_file() or target.read_text(encoding="utf-8") != text
        if changed and not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        results.append(Generated(name, source, target, changed))
    return results
