"""``grade export github``: the workflow a GitHub Classroom assignment's students commit.

It grades each exercise's notebook with ``grade submit --ci`` (one step per
exercise, so a failing one does not hide the others), uploads the feedback as an
artifact, and hands each step's ``result`` output to GitHub Classroom's reporter,
which reads ``<RUNNER>_RESULTS`` for every runner it is given (see :mod:`grader.ci`).
The job is named ``Autograding Tests``: the check run the reporter looks for.
"""

from __future__ import annotations

import json
from pathlib import Path

from grader.exercises import load_exercise
from grader.export import torch_requirement

__all__ = ["WORKFLOW", "workflow", "write_workflow"]

WORKFLOW = Path(".github/workflows/classroom.yml")


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    return json.dumps(text)


def workflow(exercises: list[str], grader: str, *, python: str = "3.11", min_score: float | None = None,
             timeout_minutes: int = 20) -> str:
    """The workflow's text: install torch (CPU) and the grader, grade each exercise, report to Classroom."""
    for name in exercises:
        load_exercise(name)  # an unknown exercise: UnknownExercise, exit 2, with the known ones
    torch = torch_requirement()
    steps = [
        "      - uses: actions/checkout@v4",
        "      - uses: actions/setup-python@v5",
        f"        with: {{ python-version: {_q(python)} }}",
        "      - name: Install the grader",
        "        run: |",
        f"          python -m pip install {torch} --index-url https://download.pytorch.org/whl/cpu",
        f"          python -m pip install {_q(grader)}",
    ]
    for name in exercises:
        command = f"grade submit exercises/{name} --ci --exercise {name}"
        if min_score is not None:
            command += f" --min-score {min_score:g}"
        steps += [
            f"      - name: {_q('Grade ' + name)}",
            f"        id: {name}",
            "        continue-on-error: true",
            f"        run: {command}",
        ]
    steps += [
        "      - name: Feedback reports",
        "        if: always()",
        "        uses: actions/upload-artifact@v4",
        "        with:",
        "          name: feedback",
        "          path: exercises/*/feedback",
        "          if-no-files-found: ignore",
        "      - name: Autograding Reporter",
        "        if: always()",
        "        uses: classroom-resources/autograding-grading-reporter@v1",
        "        env:",
        *(f"          {name.upper()}_RESULTS: \"${{{{ steps.{name}.outputs.result }}}}\"" for name in exercises),
        "        with:",
        f"          runners: {','.join(exercises)}",
    ]
    head = [
        "# Written by `grade export github`: grades the notebooks under exercises/ on every push.",
        "name: Autograding Tests",
        "\"on\": [push, workflow_dispatch, repository_dispatch]",
        "permissions:",
        "  checks: write",
        "  actions: read",
        "  contents: read",
        "jobs:",
        "  run-autograding-tests:",
        "    name: Autograding Tests",
        "    runs-on: ubuntu-latest",
        "    if: github.actor != 'github-classroom[bot]'",
        f"    timeout-minutes: {timeout_minutes}",
        "    steps:",
    ]
    return "\n".join(head + steps) + "\n"


def write_workflow(out: Path, exercises: list[str], grader: str, **options) -> Path:
    """Write ``out/.github/workflows/classroom.yml``; its path."""
    path = out / WORKFLOW
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(workflow(exercises, grader, **options), encoding="utf-8")
    return path
