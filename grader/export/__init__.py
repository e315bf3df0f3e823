"""``grade export``: hand the grader to a platform.

* :mod:`grader.export.gradescope` — Gradescope's autograder zip (``setup.sh``, ``run_autograder``);
* :mod:`grader.export.github` — a GitHub Actions workflow for GitHub Classroom.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["grader_sources", "torch_requirement"]

#: What a copy of the grader needs to be installed with pip: the packages and the project file.
SOURCES = ("grader", "reference", "pyproject.toml", "README.md")


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def grader_sources() -> list[tuple[Path, str]]:
    """``(file, path in the archive)`` for every file of the installable grader, without caches."""
    root = project_root()
    files = []
    for name in SOURCES:
        path = root / name
        if path.is_file():
            files.append((path, name))
            continue
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(root)
            if file.is_file() and "__pycache__" not in relative.parts and file.suffix not in (".pyc", ".pyo"):
                files.append((file, relative.as_posix()))
    return files


def torch_requirement() -> str:
    """The torch the grader was tested with, as a pip requirement (``torch==2.13.0``)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"
