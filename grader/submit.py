"""``grade submit``: the path of one submission, load → stage → execute → check → score.

:func:`grade_submission` is the API the CLI, ``grade batch`` and the tests call;
it returns the results and the executed notebook and writes nothing (see
:mod:`grader.render` for that).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grader._version import __version__
from grader.errors import UsageError
from grader.results import GradingResult, TestResult
from grader.sandbox.kernel import CellRun, Limits, SandboxKernel

if TYPE_CHECKING:  # imported when grading, not when this module loads: the kernel boots meanwhile
    import nbformat
    import torch

    from grader.checks import Check, Context
    from grader.exercises import Exercise

__all__ = ["DEFAULT_SEED", "Grading", "SubmitOptions", "grade_submission", "resolve_device", "run_checks"]

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
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or auto")
    return torch.device(name)


def _forbidden_dirs(notebook: Path, out: Path | None, workdir: Path) -> list[Path]:
    """What the kernel may neither read nor write: answers, hidden checks, feedback, the original."""
    spec = importlib.util.find_spec("reference")  # where it is, without importing it (and torch)
    grader_dir = Path(__file__).resolve().parent
    candidates = [
        Path(next(iter(spec.submodule_search_locations))).resolve(),
        grader_dir / "exercises",
        grader_dir / "checks",
        grader_dir.parent / "solutions",
        notebook.resolve(),
    ]
    if out is not None:
        candidates.append(out.resolve())
    workdir = workdir.resolve()
    # Never forbid a folder that holds the working directory (e.g. --out /tmp).
    return [p for p in candidates if not (workdir == p or p in workdir.parents)]


def run_checks(checks: tuple[Check, ...], ctx: Context, deadline: float | None = None) -> list[tuple]:
    """Run every check; ``[(check, TestSpec, Verdict)]`` in order, whatever the checks raise."""
    from grader.checks import Verdict
    from grader.sandbox import wire

    rows = []
    try:  # one query: which graded functions are left as their stub (their tests then fail at once)
        ctx.find_stubs([c.function for c in checks if c.function])
    except Exception as exc:  # noqa: BLE001 -- without the answer everything is graded as before
        print(f"grader: the stub query failed ({type(exc).__name__}); grading every call", file=sys.stderr)
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
    from grader.sandbox import wire

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
    from grader.sandbox import wire

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


def looks_unimplemented(notebook: nbformat.NotebookNode, functions) -> bool:
    """Whether the notebook's source defines every graded function (a class: its ``__init__``) as a stub:
    a docstring at most, then ``raise NotImplementedError(...)``. A scheduling hint only (is the kernel's
    meta warm-up worth its CPU?): the kernel's own stub query, on bytecode, decides what is graded how.
    False when a cell does not parse or a function is defined anywhere in another form."""
    import ast

    def is_stub(body: list) -> bool:
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            body = body[1:]
        call = body[0].value if body and isinstance(body[0], ast.Expr) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__" \
                and isinstance(call.func.value, ast.Call) and getattr(call.func.value.func, "id", "") == "super":
            body = body[1:]  # a class's `super().__init__()` first
        if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
            return False
        raised = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
        return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"

    functions = {f[0] if isinstance(f, tuple) else f for f in functions}  # (name, parameters) or names
    seen: dict[str, bool] = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            return False
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions:
                seen[node.name] = seen.get(node.name, True) and is_stub(node.body)
            elif isinstance(node, ast.ClassDef) and node.name in functions:
                init = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
                seen[node.name] = seen.get(node.name, True) and bool(init) and is_stub(init[0].body)
    return set(seen) == set(functions) and all(seen.values())


class Warmer:
    """Work that no result depends on, done in a daemon thread while the kernel boots and runs the notebook.

    This process mostly waits on the kernel's sockets then (the GIL is free), and what it did after the
    notebook instead sat on the critical path: the report's imports (jinja2 and its template,
    latex2mathml, matplotlib's Agg canvas and font: 0.5-0.7 s), the first meta-device operations (0.5 s,
    :func:`grader.sandbox.meta.warm`) and the hypothesis draws of every check (0.3-0.5 s,
    :meth:`grader.checks.base.Check.prepare`, kept by :func:`grader.checks.property.draw_cases`).
    :meth:`stop` (the checks are starting) lets the task in hand finish and skips the rest: the checks
    then do it themselves, as they would without a warmer, with the same verdicts. A task that fails is
    dropped: the step that needs it does the same work again and reports any failure there.
    """

    def __init__(self, tasks: list) -> None:
        self._stopped = threading.Event()
        self.done: list[str] = []  # the tasks that ran, by name (tests)
        self.thread = threading.Thread(target=self._run, args=(tasks,), name="grader-warmer", daemon=True)
        self.thread.start()

    def _run(self, tasks: list) -> None:
        for task in tasks:
            if self._stopped.is_set():
                return
            try:
                task()
                self.done.append(getattr(task, "__qualname__", repr(task)))
            except Exception:  # noqa: BLE001 -- see the class's docstring
                pass

    def stop(self) -> None:
        self._stopped.set()


def _warm_tasks(checks: tuple[Check, ...], ctx) -> list:
    """What :class:`Warmer` does for a submission, the most needed first (a stub needs only the report)."""
    import functools

    def warm_report() -> None:  # imported here, in the warmer's thread: grader.render loads jinja2
        from grader.render import warm

        warm()

    from grader.sandbox.meta import warm as warm_meta  # torch only (already loaded here)

    return [warm_report, warm_meta, *(functools.partial(check.prepare, ctx) for check in checks)]


class Grading:
    """One submission on its way through the pipeline; use as a context manager.

    Made first, before anything heavy is imported: it finds the notebook, stages a
    fresh working folder and *launches* the sandboxed kernel (fresh namespaces,
    limits, torch pre-imported, the walls raised once ipykernel has bound its
    sockets), which boots while :meth:`run_notebook` loads the notebook, the
    exercise, torch and nbclient here. Then :meth:`run_notebook` executes the
    notebook and :meth:`check` runs the checks and ends the kernel's whole tree.
    Each kernel serves exactly this one submission.

    ``grade batch`` keeps the grader's imports across submissions and makes the
    next submission's :class:`Grading` (launching its kernel) while this one is
    checked (:mod:`grader.batch`).

    Raises (from the constructor or :meth:`run_notebook`):
        SubmissionError: the input cannot be graded (exit status 2).
        UsageError: impossible options (exit status 2).
        KernelError: the sandbox could not start (exit status 2).
    """

    def __init__(self, path: Path | str, options: SubmitOptions = SubmitOptions()) -> None:
        from grader.load import find_notebook

        self.options = options
        self.started = time.monotonic()
        self.deadline = self.started + options.timeout
        self.notebook_path = find_notebook(Path(path))
        self.folder = Path(tempfile.mkdtemp(prefix="grader-stage-"))
        self.kernel: SandboxKernel | None = None
        self.runs: list[CellRun] | None = None
        self.warmer: Warmer | None = None
        try:
            self.kernel = SandboxKernel(self.folder, options.limits,
                                        _forbidden_dirs(self.notebook_path, options.out, self.folder))
            self.kernel.launch()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Grading":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_notebook(self) -> list[CellRun]:
        """Load and validate the notebook and its exercise, wait for the kernel, run every cell."""
        from grader.checks.property import warm_hypothesis
        from grader.exercises import load_exercise
        from grader.load import load_submission

        import nbformat

        self.submission = load_submission(self.notebook_path, exercise=self.options.exercise)
        self.exercise = load_exercise(self.submission.exercise)
        self.device = resolve_device(self.options.device)
        self.checks = self.exercise.all_checks()
        self.notebook = self.submission.notebook  # executed in place: the original file is never written
        nbformat.write(self.notebook, self.folder / "submission.ipynb")
        warm_hypothesis()  # its one-time start, paid while the kernel boots; no later draw changes
        self.warmer = Warmer(_warm_tasks(self.checks, self._context(None)))
        self.kernel.start()
        self.isolation = _check_isolation(self.kernel.walls.isolation, self.options.require_isolation)
        if not looks_unimplemented(self.notebook, self.exercise.functions):
            self.kernel.warm_meta()  # its device checks will need it; a stub's are answered without a call
        self.runs = self.kernel.run_notebook(self.notebook, self.deadline)
        return self.runs

    def check(self) -> tuple[GradingResult, nbformat.NotebookNode]:
        """Run every check against the kernel, then end its tree; the results and the executed notebook."""
        from grader.runner import KernelRunner

        if self.runs is None:
            self.run_notebook()
        if self.warmer is not None:
            self.warmer.stop()
        try:
            rows = run_checks(self.checks, self._context(KernelRunner(self.kernel, self.deadline)), self.deadline)
        finally:
            self.close()  # the kernel's tree is gone before any result is made
        result = to_results(self.exercise, rows, self.runs, self.notebook, self.submission.path, self.options,
                            self.device, time.monotonic() - self.started)
        result.isolation = self.isolation
        return result, self.notebook

    def _context(self, runner):
        """The checks' context: the same seed, device and exercise for :meth:`check` and for the warmer."""
        from grader.checks import Context

        return Context(runner, self.device, self.options.seed, self.exercise.name)

    def close(self) -> None:
        """Kill the kernel's whole tree and remove the working folder (idempotent)."""
        kernel, self.kernel = self.kernel, None
        try:
            if kernel is not None:
                kernel.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def grade_submission(path: Path | str, options: SubmitOptions = SubmitOptions()) -> tuple[GradingResult, nbformat.NotebookNode]:
    """Grade the notebook at ``path``; the results and the executed notebook.

    The kernel is launched first and boots while the grader loads the notebook,
    the exercise and torch (:class:`Grading`).

    Raises:
        SubmissionError: the input cannot be graded (exit status 2).
        UsageError: impossible options (exit status 2).
        KernelError: the sandbox could not start (exit status 2).
    """
    with Grading(path, options) as grading:
        grading.run_notebook()
        return grading.check()


def _check_isolation(isolation: dict, required: bool) -> dict:
    """Warn (one line on stderr) when a wall is missing; refuse to grade when they are required."""
    from grader.sandbox.isolation import complete, describe, require

    if not complete(isolation):
        if required:
            require(isolation)
        print(describe(isolation), file=sys.stderr)
    return isolation
