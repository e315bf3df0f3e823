"""``grade release --out DIR``: what students get, without the reference or the solutions.

The release holds the generated notebooks (``exercises/NAME/NAME.ipynb``, made from
``solutions/`` here and now), the grader's package without its exercise
declarations (they import ``reference`` and hold the hidden checks), and, in their
place, the public checks as values: for each public agreement check, the inputs
``check(fn)`` draws (the same seed, the same number of examples), the reference's
outputs on them, the outputs of each known mistake (for hints), the tolerance and
the expected dtype — saved with ``torch.save`` and loaded with
``weights_only=True``, so the release carries data, never code.

``check(fn)`` in a released notebook then calls ``fn`` on those inputs and compares
what it returns with the recorded values (:class:`Recorded`). Public checks that
judge a property with code of their own (a law, a count of model calls) are not
in the release; ``check`` says what it ran and ``grade submit`` runs everything.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grader.checks import (Check, Context, Inputs, Mismatch, Outcome, TestSpec, Tolerance, Verdict, as_tensor,
                           as_tuple, compare_values, dtype_device_aspect)

__all__ = ["Recorded", "record_exercise", "write_release"]

#: Where the recorded checks live, inside the released package.
RELEASED = "released"


def _plain(value: Any) -> Any:
    """What the reference returned, as float64 CPU tensors (tuples stay tuples)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu")
        return value.double() if value.is_floating_point() else value.clone()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value


def _dtype_spec(dtype_from: Any) -> Any:
    if isinstance(dtype_from, torch.dtype):
        return {"dtype": str(dtype_from).replace("torch.", "")}
    return dtype_from  # an argument's name, or None (the default dtype)


def _dtype_from(spec: Any) -> Any:
    return getattr(torch, spec["dtype"]) if isinstance(spec, dict) else spec


@dataclass(frozen=True, eq=False)
class Recorded(Check):
    """A public agreement check replayed from values recorded at release time.

    ``data`` is what :func:`record_check` saved: ``function``, ``tests`` (the graded
    tests' names, points and kinds), ``cases`` (per case: the arguments, their
    description, the expected result, each known mistake's result), ``hints``,
    ``tolerance``, ``outputs``, ``broadcastable``, ``dtype`` and the probe, if any.
    """

    function: str
    data: dict = field(repr=False)
    public: bool = True

    def tests(self) -> list[TestSpec]:
        return [TestSpec(name, points, kind) for name, points, kind in self.data["tests"]]

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(**self.data["tolerance"])

    def _items(self, value: Any, outputs: tuple | None) -> list[tuple[str, Any]]:
        if outputs is None:
            return [("the result", value)]
        items = as_tuple(value, outputs, "the result")
        return [(f"`{name}` (item {i} of the result)", item) for i, (name, item) in enumerate(zip(outputs, items))]

    def _compare(self, value: Any, expected: Any) -> None:
        outputs = tuple(self.data["outputs"]) if self.data["outputs"] is not None else None
        expected_items = [expected] if outputs is None else list(expected)
        for (label, got), exp, name in zip(self._items(value, outputs), expected_items, outputs or ("",)):
            compare_values(as_tensor(got, label), exp, self.tolerance, label,
                           broadcast=name in self.data["broadcastable"])

    def run(self, ctx: Context) -> list[Verdict]:
        cases = self.data["cases"]
        tag = self.data["tag"]
        calls = []
        for case in cases:
            call = {"function": self.function, "args": list(case["args"].values()), "kwargs": dict(case["kwargs"])}
            if self.data["probe"]:
                call["probe"], call["probe_name"] = self.data["probe"], self.data["probe_name"]
            calls.append(call)
        seeds = [ctx.seed_for("call", self.function, tag, i) % 2**63 for i in range(len(calls))]
        outcomes = [Outcome.from_wire(raw) for raw in ctx.runner.run(calls, seeds)]
        values = self._values_verdict(cases, outcomes)
        verdicts = [values]
        if self.data["dtype"] is not None:
            verdicts.append(self._dtype_verdict(cases, outcomes, values))
        return verdicts

    def _failure(self, case: dict, outcome: Outcome) -> Mismatch | None:
        if not outcome.ok:
            return Mismatch(outcome.explain(self.function))
        try:
            self._compare(outcome.value, case["expected"])
        except Mismatch as mismatch:
            return mismatch
        return None

    def _hint(self, cases: list[dict], outcomes: list[Outcome]) -> str:
        answered = [(c, o) for c, o in zip(cases, outcomes) if o.ok]
        for index, message in enumerate(self.data["hints"]):
            def matches(case: dict, outcome: Outcome) -> bool:
                wrong = case["wrong"][index]
                if wrong is None:
                    return False
                try:
                    self._compare(outcome.value, wrong)
                except Exception:  # noqa: BLE001 -- not comparable, or different: not this mistake
                    return False
                return True

            if answered and all(matches(c, o) for c, o in answered):
                return message
        return ""

    def _values_verdict(self, cases: list[dict], outcomes: list[Outcome]) -> Verdict:
        failures = [(c, o, m) for c, o in zip(cases, outcomes) if (m := self._failure(c, o)) is not None]
        if not failures:
            return Verdict(True, f"passed on {len(cases)} inputs")
        case, outcome, mismatch = failures[0]
        if not outcome.ok and all(not o.ok and o.status == outcome.status for _, o, _ in failures):
            where = "on every input" if len(failures) == len(cases) else f"on {len(failures)} of {len(cases)} inputs"
            return Verdict(False, f"{outcome.explain(self.function)} ({where})",
                           {"traceback": outcome.traceback} if outcome.traceback else {})
        lines = [str(mismatch)]
        hint = self._hint(cases, outcomes)
        if hint:
            lines.append(f"Hint: {hint}")
        lines.append(f"Failed on {len(failures)} of {len(cases)} inputs. The first failing input:")
        lines.append(f"{self.function}(\n{case['describe']}\n)")
        return Verdict(False, "\n".join(lines), {"input": case["describe"]})

    def _dtype_verdict(self, cases: list[dict], outcomes: list[Outcome], values: Verdict) -> Verdict:
        if not values.passed:
            return Verdict(False, "not awarded while the values are wrong: this point is for right values in the "
                                  "right form")
        spec = self.data["dtype"]
        outputs = tuple(self.data["outputs"]) if self.data["outputs"] is not None else None
        aspect = dtype_device_aspect(_dtype_from(spec["dtype_from"]), spec["device_from"], 1,
                                     items=lambda value: self._items(value, outputs))
        for case, outcome in zip(cases, outcomes):
            try:
                aspect.judge(Inputs(dict(case["args"]), dict(case["kwargs"])), outcome)
            except Mismatch as mismatch:
                return Verdict(False, f"{mismatch}\n{self.function}(\n{case['describe']}\n)",
                               {"input": case["describe"]})
        return Verdict(True, f"passed on {len(cases)} inputs")


# ----------------------------------------------------------------------------------------- recording

def record_check(check, exercise: str) -> dict | None:
    """The values of one public agreement check, as ``check(fn)`` would draw them; None if it is not one."""
    from grader.checks import Agreement, draw_cases
    from grader.checks.base import probe_source
    from grader.interactive import SCALE
    from grader.runner import InProcessRunner

    if not isinstance(check, Agreement) or not check.public:
        return None
    ctx = Context(InProcessRunner({}), torch.device("cpu"), 0, exercise, scale=SCALE, public_only=True)
    n = max(1, math.ceil(check.max_examples * ctx.scale))
    tag = f"{check.function}:{check.aspects[0].name}"
    drawn = draw_cases(check.cases, n, ctx.seed_for("cases", tag) % 2**32, check.examples)
    cases = []
    for case in drawn:
        inputs = check.build(case, ctx)
        wrong = []
        for diagnosis in check.diagnoses:
            try:
                wrong.append(_plain(inputs.call_reference(diagnosis.wrong)))
            except Exception:  # noqa: BLE001 -- the mistake cannot be computed here: no hint from it
                wrong.append(None)
        cases.append({"args": dict(inputs.args), "kwargs": dict(inputs.kwargs), "describe": inputs.describe(),
                      "expected": _plain(inputs.call_reference(check.reference)), "wrong": wrong})
    tests = [(spec.name, spec.points, spec.kind) for spec in check.tests()]
    tolerance = check.tolerance
    return {
        "function": check.function, "tag": tag, "tests": tests, "cases": cases,
        "hints": [d.message for d in check.diagnoses],
        "tolerance": {"rtol32": tolerance.rtol32, "atol32": tolerance.atol32, "rtol64": tolerance.rtol64,
                      "atol64": tolerance.atol64, "why": tolerance.why},
        "outputs": list(check.outputs) if check.outputs is not None else None,
        "broadcastable": sorted(check.broadcastable),
        "dtype": {"dtype_from": _dtype_spec(check.dtype_from), "device_from": check.device_from}
        if check.dtype_points else None,
        "probe": probe_source(check.probe) if check.probe is not None else None,
        "probe_name": check.probe.__name__ if check.probe is not None else None,
    }


def record_exercise(name: str) -> dict:
    """Everything the release knows of an exercise: its functions and its recorded public checks."""
    from grader.exercises import load_exercise

    exercise = load_exercise(name)
    checks, left = [], []
    for check in exercise.checks:
        recorded = record_check(check, name)
        if recorded is not None:
            checks.append(recorded)
        elif check.public:
            left.extend(spec.name for spec in check.tests())
    return {"name": name, "title": exercise.title, "functions": [[f, list(args)] for f, args in exercise.functions],
            "checks": checks, "not_released": left}


# ----------------------------------------------------------------------------------------- the bundle

EXERCISES_INIT = '''"""The exercises of this student release: their public checks, as values recorded by ``grade release``.

Each ``released/NAME.pt`` holds an exercise's functions and, for each public
agreement check, its inputs and the reference's outputs on them; it is loaded
with ``weights_only=True`` (data, never code). No reference implementation and
no hidden check is part of this release: ``grade submit`` on the course's grader
runs those.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from grader.checks import Check, Signatures
from grader.errors import UnknownExercise
from grader.release import Recorded

__all__ = ["Exercise", "exercise_names", "find_exercise_of", "load_exercise"]

DATA = Path(__file__).resolve().parent / "released"


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    functions: tuple
    checks: tuple
    not_released: tuple = ()

    def all_checks(self) -> tuple:
        return (Signatures(self.functions), *self.checks)

    @property
    def function_names(self) -> tuple:
        return tuple(name for name, _ in self.functions)


def exercise_names() -> list:
    return sorted(p.stem for p in DATA.glob("*.pt"))


@lru_cache(maxsize=None)
def load_exercise(name: str) -> Exercise:
    if name not in exercise_names():
        raise UnknownExercise(f"unknown exercise {name!r}; this release holds: {', '.join(exercise_names())}")
    data = torch.load(DATA / f"{name}.pt", weights_only=True)
    return Exercise(data["name"], data["title"], tuple((f, tuple(args)) for f, args in data["functions"]),
                    tuple(Recorded(c["function"], c) for c in data["checks"]), tuple(data["not_released"]))


def find_exercise_of(function_name: str):
    for name in exercise_names():
        exercise = load_exercise(name)
        if function_name in exercise.function_names:
            return exercise
    return None
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "diffusion-course-student"
version = "{version}"
description = "The diffusion-models course's exercises, with the public checks (check(fn) in a notebook)"
requires-python = ">=3.10"
dependencies = ["torch>=2.1", "numpy>=1.24", "scipy>=1.10", "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.25",
                "jupyter_client>=8", "hypothesis>=6.90", "jinja2>=3.1", "matplotlib>=3.7"]

[project.optional-dependencies]
notebook = ["jupyterlab>=4"]

[project.scripts]
grade = "grader.cli:main"

[tool.setuptools.packages.find]
include = ["grader*"]

[tool.setuptools.package-data]
grader = ["templates/*.j2", "py.typed", "exercises/released/*.pt"]
'''

README = """# Diffusion models: the exercises

    python3 -m venv .venv && .venv/bin/pip install -e '.[notebook]' && .venv/bin/jupyter lab exercises/q_sampler/q_sampler.ipynb

Fill in each function, then run its check cell: `check(q_sample)` compares your function with
values recorded from the course's reference on the same inputs the course's grader starts with,
and says what differs. Your grade comes from the course's grader, which runs many more checks.
"""

#: Parts of the grader package a release leaves out: the declarations (replaced by values)
#: and the instructors' tools that need the reference.
LEFT_OUT = ("exercises", "export")


def _copy_package(source: Path, target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in LEFT_OUT or path.name == "__pycache__":
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, ignore=ignore)
        else:
            shutil.copy2(path, target / path.name)


def write_release(root: Path, out: Path) -> str:
    """Write the student release of the course at ``root`` into ``out``; a one-paragraph summary."""
    import nbformat

    from grader._version import __version__
    from grader.errors import UsageError
    from grader.exercises import exercise_names
    from grader.generate import student_notebook

    solutions = root / "solutions"
    if not solutions.is_dir():
        raise UsageError(f"{solutions} does not exist: run grade release from the course repository's root")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new folder, so that nothing of an older release stays in it")
    names = [n for n in exercise_names() if (solutions / n / f"{n}.ipynb").is_file()]
    package = Path(__file__).resolve().parent
    _copy_package(package, out / "grader")
    released = out / "grader" / "exercises" / RELEASED
    released.mkdir(parents=True)
    (out / "grader" / "exercises" / "__init__.py").write_text(EXERCISES_INIT, encoding="utf-8")
    lines = []
    for name in names:
        solution = nbformat.read(solutions / name / f"{name}.ipynb", as_version=4)
        target = out / "exercises" / name / f"{name}.ipynb"
        target.parent.mkdir(parents=True)
        target.write_text(nbformat.writes(student_notebook(solution, name)) + "\n", encoding="utf-8")
        data = record_exercise(name)
        torch.save(data, released / f"{name}.pt")
        recorded = sum(len(c["tests"]) for c in data["checks"])
        lines.append(f"  {name}: {len(data['checks'])} public checks as values ({recorded} tests)"
                     + (f"; {len(data['not_released'])} public tests judged by code are left to grade submit"
                        if data["not_released"] else ""))
    (out / "pyproject.toml").write_text(PYPROJECT.format(version=__version__), encoding="utf-8")
    (out / "README.md").write_text(README, encoding="utf-8")
    return "\n".join([f"{out}: the student release ({len(names)} exercises; no reference, no solutions)", *lines])


def is_release() -> bool:
    """Whether this grader is a student release (its exercises are recorded values)."""
    return (Path(__file__).resolve().parent / "exercises" / RELEASED).is_dir()

