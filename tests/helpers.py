"""Helpers shared by the tests: grade a namespace of functions in this process; grade an exercise's
solution and student notebooks end to end; find processes by thread name."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch

from grader.checks import Context
from grader.exercises import load_exercise
from grader.results import GradingResult
from grader.runner import InProcessRunner
from grader.sandbox.kernel import CellRun
from grader.submit import DEFAULT_SEED, SubmitOptions, grade_submission, run_checks, to_results

ROOT = Path(__file__).resolve().parents[1]

#: Seeds for catalogue and calibration tests. The suite (CI) runs every catalogue entry on 5 seeds, a
#: regression check that fits CI's budget with eleven exercises; each exercise's calibration on 20 seeds
#: is committed (benchmarks/results/calibration/) and is what ``benchmarks/calibrate.py --seeds 20``
#: (CALIBRATION_SEEDS=20) reproduces.
SEEDS = int(os.environ.get("CALIBRATION_SEEDS", "5"))


@dataclass
class Graded:
    name: str
    function: str | None
    passed: bool
    points: float
    output: str
    details: dict


def grade_namespace(exercise: str, namespace: dict, seed: int = 0, functions: set[str] | None = None,
                    device: str = "cpu") -> list[Graded]:
    """Run an exercise's checks (only those of ``functions`` when given) against ``namespace``."""
    ex = load_exercise(exercise)
    checks = tuple(c for c in ex.checks if functions is None or c.function in functions)
    ctx = Context(InProcessRunner(dict(namespace)), torch.device(device), seed, ex.name)
    return [Graded(spec.name, check.function, verdict.passed, spec.points, verdict.output, verdict.details)
            for check, spec, verdict in run_checks(checks, ctx)]


def grade_notebook_in_process(notebook: Path, exercise: str, workdir: Path, seed: int = DEFAULT_SEED) -> GradingResult:
    """Grade ``notebook`` as ``grade submit`` scores it, but in this process and without the sandbox.

    Its code cells run in order in one namespace with ``workdir`` as the working directory (a failing
    cell's error is recorded and the later cells run, as the kernel does); then every check of the
    exercise, the signatures included, grades that namespace (:func:`grader.submit.run_checks`) and
    :func:`grader.submit.to_results` scores it. For trusted notebooks only: the repository's own.
    """
    nb = nbformat.read(notebook, as_version=4)
    namespace: dict = {"__name__": "__main__"}
    runs = []
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):  # the cells' prints and check()s
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            try:
                exec(compile(cell.source, f"<cell {index + 1}>", "exec"), namespace)  # noqa: S102 -- our notebooks
                runs.append(CellRun(index, "ok"))
            except Exception as exc:  # noqa: BLE001 -- recorded, as the kernel records a cell's error
                runs.append(CellRun(index, "error", f"{type(exc).__name__}: {exc}",
                                    traceback="".join(traceback.format_exception(exc))))
    ex = load_exercise(exercise)
    device = torch.device("cpu")
    rows = run_checks(ex.all_checks(), Context(InProcessRunner(namespace), device, seed, ex.name))
    return to_results(ex, rows, runs, nb, notebook, SubmitOptions(seed=seed, device="cpu"), device, 0.0)


def assert_solution_full_stub_zero(exercise: str, max_score: float, tmp_path: Path, timeout: float = 900.0) -> None:
    """``solutions/EXERCISE`` gets ``max_score`` with every test passed, and ``exercises/EXERCISE`` 0.

    The solution goes through :func:`grader.submit.grade_submission`, the sandboxed kernel of
    ``grade submit`` (on the CPU, within ``timeout`` seconds): the notebook as authored runs where
    students' notebooks run and earns every point. The generated student notebook is graded in this
    process (:func:`grade_notebook_in_process`: no kernel to start, what it proves is the checks'
    verdicts, not the sandbox's): it scores 0 and every graded test says "not implemented".
    """
    folder = tmp_path / "solutions" / exercise
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / exercise / f"{exercise}.ipynb", folder)
    solution, _ = grade_submission(folder, SubmitOptions(device="cpu", timeout=timeout))
    assert [(t.name, t.output) for t in solution.tests if not t.passed] == []
    assert solution.score == solution.max_score == max_score, (solution.score, solution.max_score)
    workdir = tmp_path / "exercises" / exercise
    workdir.mkdir(parents=True)
    stub = grade_notebook_in_process(ROOT / "exercises" / exercise / f"{exercise}.ipynb", exercise, workdir)
    graded = [t for t in stub.tests if t.max_score > 0]
    assert stub.max_score == max_score, stub.max_score
    assert stub.score == 0 and graded, [(t.name, t.output) for t in graded if t.passed]
    assert [(t.name, t.output) for t in graded if "not implemented" not in t.output] == []
    for function in load_exercise(exercise).function_names:
        assert any(t.function == function for t in graded), f"{function} has no graded test"


def named_processes(name: str) -> list[str]:
    """Pids of processes with a thread called ``name`` (PR_SET_NAME), zombie leaders' live threads included."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().strip() == name:
                        found.append(pid)
        except OSError:
            continue
    return found
