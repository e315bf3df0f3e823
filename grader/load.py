"""Load a submission: find the notebook, read and validate it, name its exercise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.errors import SubmissionError
from grader.exercises import load_exercise

__all__ = ["Submission", "load_submission"]


@dataclass
class Submission:
    """A notebook to grade.

    Attributes:
        path: the notebook file.
        notebook: its contents (nbformat v4).
        exercise: the exercise it answers.
    """

    path: Path
    notebook: nbformat.NotebookNode
    exercise: str


def find_notebook(path: Path) -> Path:
    """The notebook at ``path``: the file itself, or the one notebook in the folder."""
    if not path.exists():
        raise SubmissionError(f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".ipynb":
            raise SubmissionError(f"{path} is not a notebook (expected a .ipynb file)")
        return path
    notebooks = sorted(p for p in path.glob("*.ipynb") if not p.name.endswith(".executed.ipynb"))
    if not notebooks:
        raise SubmissionError(f"{path} holds no notebook (.ipynb)")
    if len(notebooks) > 1:
        names = ", ".join(p.name for p in notebooks)
        raise SubmissionError(f"{path} holds {len(notebooks)} notebooks ({names}); pass the one to grade")
    return notebooks[0]


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read and validate a notebook, with one-line errors for every way it can be broken."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SubmissionError(f"{path} is not a notebook: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SubmissionError(f"{path} is not a notebook: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    except OSError as exc:
        raise SubmissionError(f"{path} could not be read: {exc.strerror}") from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise SubmissionError(f"{path} is JSON but not a Jupyter notebook (no 'cells' or 'nbformat')")
    if raw.get("nbformat") != 4:
        raise SubmissionError(f"{path} uses notebook format {raw.get('nbformat')!r}; only version 4 is supported "
                              "(open and save it with a current Jupyter)")
    try:
        notebook = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(notebook)
    except Exception as exc:  # noqa: BLE001 -- nbformat raises several kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SubmissionError(f"{path} is not a valid notebook: {first}") from None
    return notebook


def load_submission(path: Path | str, exercise: str | None = None) -> Submission:
    """Find, read and validate the notebook at ``path`` and name its exercise (``exercise`` overrides)."""
    notebook_path = find_notebook(Path(path))
    notebook = read_notebook(notebook_path)
    stamped = notebook.metadata.get("grader", {})
    name = exercise or (stamped.get("exercise") if isinstance(stamped, dict) else None)
    if not isinstance(name, str) or not name:
        name = notebook_path.parent.resolve().name  # not stamped: the folder's name
    load_exercise(name)  # raises UnknownExercise with the list of known ones
    return Submission(notebook_path, notebook, name)
