"""``grade submit``: the path of one submission, load → stage → execute → check → score.

:func:`grade_submission` is the API the CLI, ``grade batch`` and the tests call;
it returns the results and the executed notebook and writes nothing (see
:mod:`grader.render` for that).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch

from grader._version import __version__
from grader.checks import Check, Context, Verdict
from grader.errors import UsageError
from grader.exercises import Exercise, load_exercise
from grader.load import Submission, load_submission
from grader.results import GradingResult, TestResult
from grader.runner import KernelRunner
from grader.sandbox import wire
from grader.sandbox.kernel import CellRun, Limits, SandboxKernel

__all__ = ["DEFAULT_SEED", "SubmitOptions", "grade_submission", "resolve_device", "run_checks"]

#: The seed used when none is given: the same submission always gets the same grade.
DEFAULT_SEED = 2024


@dataclass(frozen=True)
class SubmitOptions:
    """How to grade.

    Attributes:
        seed: the grading seed; every random draw of the grader derives from it.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        timeout: seconds for the whole submission: kernel start, notebook, every check.
        limits: the kernel's resource limits (per cell, per call, memory).
        out: the feedback folder, which the submission may not touch.
        exercise: grade as this exercise, whatever the notebook says.
        require_isolation: refuse to grade (:class:`~grader.sandbox.isolation.IsolationError`, exit
            status 2) unless every operating-system wall is in force around the kernel.
    """

    seed: int = DEFAULT_SEED
    device: str = "auto"
    timeout: float = 900.0
    limits: Limits = field(default_factory=Limits)
    out: Path | None = None
    exercise: str | None = None
    require_isolation: bool = False


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto``; :class:`UsageError` for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or auto")
    return torch.device(name)


def _forbidden_dirs(submission: Submission, out: Path | None, workdir: Path) -> list[Path]:
    """What the kernel may neither read nor write: answers, hidden checks, feedback, the original."""
    import reference

    grader_dir = Path(__file__).resolve().parent
    candidates = [
        Path(reference.__file__).resolve().parent,
        grader_dir / "exercises",
        grader_dir / "checks",
        grader_dir.parent / "solutions",
        submission.path.resolve(),
    ]
    if out is not None:
        candidates.append(out.resolve())
    workdir = workdir.resolve()
    # Never forbid a folder that holds the working directory (e.g. --out /tmp).
    return [p for p in candidates if not (workdir == p or p in workdir.parents)]


def run_checks(checks: tuple[Check, ...], ctx: Context, deadline: float | None = None) -> list[tuple]:
    """Run every check; ``[(check, TestSpec, Verdict)]`` in order, whatever the checks raise."""
    rows = []
    for check in checks:
        specs = check.tests()
        if deadline is not None and time.monotonic() >= deadline:
            verdicts = [Verdict(False, "not run: the submission's time budget was spent")] * len(specs)
        else:
            try:
                verdicts = check.run(ctx)
            except Exception as exc:  # noqa: BLE001 -- a grader bug must not sink the other checks
                print(f"grader: internal error in a check of {check.function}: {type(exc).__name__}: "
                      f"{wire.clean_text(str(exc), 300)}", file=sys.stderr)
                verdicts = [Verdict(False, f"the grader failed while checking {check.function} "
                                           f"({type(exc).__name__}); please report this to the course staff")] * len(specs)
        rows.extend((check, spec, verdict) for spec, verdict in zip(specs, verdicts))
    return rows


def _execution_test(runs: list[CellRun], notebook: nbformat.NotebookNode) -> tuple[bool, str, dict]:
    failed = [r for r in runs if r.status != "ok"]
    if not failed:
        return True, f"all {len(runs)} code cells ran without error", {}
    lines = [f"{len(failed)} of {len(runs)} code cells failed; the grader ran the later cells anyway:"]
    for run in failed:
        first_line = notebook.cells[run.index].source.strip().splitlines()[0][:70]
        lines.append(f"  cell {run.index + 1} ({first_line!r}): {run.error}")
    return False, "\n".join(lines), {"traceback": failed[0].traceback} if failed[0].traceback else {}


def to_results(
    exercise: Exercise, rows: list[tuple], runs: list[CellRun], notebook: nbformat.NotebookNode,
    submission_path: Path, options: SubmitOptions, device: torch.device, seconds: float,
) -> GradingResult:
    ok, output, details = _execution_test(runs, notebook)
    tests = [TestResult("1", "the notebook runs from top to bottom", None, "execution", ok, 0.0, 0.0, output, details)]
    for number, (check, spec, verdict) in enumerate(rows, start=2):
        tests.append(TestResult(
            str(number), spec.name, check.function, spec.kind, verdict.passed,
            spec.points if verdict.passed else 0.0, spec.points, verdict.output, verdict.details,
        ))
    tests = [_sanitised(test) for test in tests]
    cells = [{"cell": r.index + 1, "status": r.status, "error": wire.clean_text(r.error, 500)} for r in runs]
    return GradingResult(exercise.name, str(submission_path), tests, options.seed, str(device), __version__,
                         seconds, cells)


#: Characters of feedback one test may carry into results.json, the report and the terminal: its
#: output, each text of its details, and all of its details' texts together. A failed check's
#: message is a few lines (input, expected, got: under 2,000 characters); these bounds hold
#: whatever the kernel sent back, even from a worker patched to send more.
OUTPUT_CHARS, DETAIL_CHARS, DETAILS_CHARS = 10_000, 5_000, 20_000


def _sanitised(test: TestResult) -> TestResult:
    """``test`` with every text decoded, stripped of escape and control characters, and capped.

    The last gate before anything reaches results.json, the report or the terminal: texts that
    came from the kernel were cleaned as they arrived, but a check may quote a submission's
    strings (a returned string, a cell's source) in its own words.
    """
    budget = [DETAILS_CHARS]

    def clean(value, depth=0):
        if isinstance(value, str):
            text = wire.clean_text(value, min(DETAIL_CHARS, max(budget[0], 0)))
            budget[0] -= len(text)
            return text
        if depth > 6:
            return None
        if isinstance(value, list):
            return [clean(v, depth + 1) for v in value[:1000]]
        if isinstance(value, tuple):
            return tuple(clean(v, depth + 1) for v in value[:1000])
        if isinstance(value, dict):
            return {str(k): clean(v, depth + 1) for k, v in list(value.items())[:1000]}
        return value

    details = {k: (v if k == "plot" else clean(v)) for k, v in test.details.items()}  # plot: the grader's own PNG
    test.output = wire.clean_text(test.output, OUTPUT_CHARS)
    test.details = details
    return test


def grade_submission(path: Path | str, options: SubmitOptions = SubmitOptions()) -> tuple[GradingResult, nbformat.NotebookNode]:
    """Grade the notebook at ``path``; the results and the executed notebook.

    Raises:
        SubmissionError: the input cannot be graded (exit status 2).
        UsageError: impossible options (exit status 2).
        KernelError: the sandbox could not start (exit status 2).
    """
    started = time.monotonic()
    deadline = started + options.timeout
    submission = load_submission(path, exercise=options.exercise)
    exercise = load_exercise(submission.exercise)
    device = resolve_device(options.device)
    notebook = copy.deepcopy(submission.notebook)
    with tempfile.TemporaryDirectory(prefix="grader-stage-") as folder:
        workdir = Path(folder)
        nbformat.write(notebook, workdir / "submission.ipynb")
        forbidden = _forbidden_dirs(submission, options.out, workdir)
        with SandboxKernel(workdir, options.limits, forbidden) as kernel:
            isolation = _check_isolation(kernel.walls.isolation, options.require_isolation)
            runs = kernel.run_notebook(notebook, deadline)
            ctx = Context(KernelRunner(kernel, deadline), device, options.seed, exercise.name)
            rows = run_checks(exercise.all_checks(), ctx, deadline)
    result = to_results(exercise, rows, runs, notebook, submission.path, options, device, time.monotonic() - started)
    result.isolation = isolation
    return result, notebook


def _check_isolation(isolation: dict, required: bool) -> dict:
    """Warn (one line on stderr) when a wall is missing; refuse to grade when they are required."""
    from grader.sandbox.isolation import complete, describe, require

    if not complete(isolation):
        if required:
            require(isolation)
        print(describe(isolation), file=sys.stderr)
    return isolation
