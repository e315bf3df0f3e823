"""``grade release --out DIR``: what students get, without the reference or the solutions.

The release holds the generated notebooks (``exercises/NAME/NAME.ipynb``, made from
``solutions/`` here and now), the grader's package without its exercise
declarations (they import ``reference`` and hold the hidden checks), and, in their
place, the public checks as values: for each public agreement check, the inputs
``check(fn)`` draws (the same seed, the same number of examples), the reference's
outputs on them, the outputs of each known mistake (for hints), the tolerance and
the expected dtype — saved with ``torch.save`` and loaded with
``weights_only=True``, so the release carries data, never code.

``check(fn)`` in a released notebook then runs the grader's own agreement check on
those inputs, its reference replaced by a lookup of the recorded outputs
(:func:`recorded_check`). Public checks that
judge a property with code of their own (a law, a count of model calls) are not
in the release; ``check`` says what it ran and ``grade submit`` runs everything.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from hypothesis import strategies as st

from grader.checks import Agreement, Context, Diagnosis, Inputs, Tolerance, draw_cases

__all__ = ["recorded_check", "record_check", "record_exercise", "write_release"]

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


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


#: Agreement's fields that hold code; everything else it has is data and is recorded as is.
_CODE_FIELDS = ("cases", "build", "reference", "scale", "diagnoses", "probe", "aspects", "extra_aspects", "examples")


def _data_field(value: Any) -> tuple[bool, Any]:
    """``(True, recorded form)`` for a field value that is plain data; ``(False, None)`` for code."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, torch.dtype):
        return True, {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, Tolerance):
        return True, {"tolerance": dataclasses.asdict(value)}
    if isinstance(value, (tuple, list, frozenset, set)) and all(isinstance(v, str) for v in value):
        return True, {"strings": sorted(value) if isinstance(value, (frozenset, set)) else list(value),
                      "type": type(value).__name__}
    return False, None


def _field_value(recorded: Any) -> Any:
    if isinstance(recorded, dict) and "dtype" in recorded:
        return getattr(torch, recorded["dtype"])
    if isinstance(recorded, dict) and "tolerance" in recorded:
        return Tolerance(**recorded["tolerance"])
    if isinstance(recorded, dict) and "strings" in recorded:
        return {"frozenset": frozenset, "set": frozenset, "list": tuple, "tuple": tuple}[recorded["type"]](
            recorded["strings"])
    return recorded


class RecordedInputs(Inputs):
    """Inputs whose reference values were recorded at release time: ``call_reference`` looks them up."""

    def call_reference(self, fn: Callable) -> Any:
        if isinstance(fn, Lookup):
            return self.meta["recorded"][fn.slot][fn.index]
        raise TypeError("a student release holds no reference implementation")


@dataclass(frozen=True)
class Lookup:
    """Stands for a reference (``slot="expected"``) or a known mistake (``"wrong"``): its recorded values."""

    slot: str
    index: int

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a student release holds no reference implementation")


def recorded_check(data: dict) -> Agreement:
    """The public agreement check that ``data`` (see :func:`record_check`) describes, replaying recorded values.

    It is the grader's own :class:`~grader.checks.Agreement`: the same comparison, tolerance,
    hints, dtype-and-device and meta-device tests; only its inputs are the recorded ones and
    its reference is a lookup of the recorded outputs.
    """
    cases = data["cases"]

    def build(index: int, ctx: Context) -> Inputs:
        case = cases[index]
        meta = {"recorded": {"expected": case["expected"], "wrong": case["wrong"]}, "scale": case["scale"]}
        return RecordedInputs(_to_device(dict(case["args"]), ctx.device), _to_device(dict(case["kwargs"]), ctx.device),
                              dict(case["notes"]), meta, _to_device(dict(case["hidden"]), ctx.device))

    fields = {name: _field_value(value) for name, value in data["fields"].items()}
    references = tuple(Lookup("expected", i) for i in range(data["references"]))
    return Agreement(
        **fields, cases=st.sampled_from(range(len(cases))), build=build, examples=tuple(range(len(cases))),
        reference=references if len(references) > 1 else references[0],
        scale=(lambda inputs: inputs.meta["scale"]) if data["scaled"] else None,
        diagnoses=tuple(Diagnosis(Lookup("wrong", i), message) for i, message in enumerate(data["hints"])),
    )


# ----------------------------------------------------------------------------------------- recording

def record_check(check, exercise: str) -> dict | None:
    """The values of one public agreement check, on the inputs ``check(fn)`` draws; None if it cannot be.

    Only :class:`~grader.checks.Agreement` itself (not a subclass, which may judge with code
    of its own) without a probe and without extra aspects is recorded: its verdicts depend on
    the reference's outputs alone, which are values.
    """
    from grader.interactive import SCALE
    from grader.runner import InProcessRunner

    if type(check) is not Agreement or not check.public or check.probe is not None or check.extra_aspects:
        return None
    ctx = Context(InProcessRunner({}), torch.device("cpu"), 0, exercise, scale=SCALE, public_only=True)
    n = max(1, math.ceil(check.max_examples * ctx.scale))
    tag = f"{check.function}:{check.aspects[0].name}"
    drawn = draw_cases(check.cases, n, ctx.seed_for("cases", tag) % 2**32, check.examples)
    references = check.reference if isinstance(check.reference, tuple) else (check.reference,)
    cases = []
    for case in drawn:
        inputs = check.build(case, ctx)
        wrong = []
        for diagnosis in check.diagnoses:
            try:
                wrong.append(_plain(inputs.call_reference(diagnosis.wrong)))
            except Exception:  # noqa: BLE001 -- the mistake cannot be computed on this input: it is not named here
                wrong.append(None)
        scale = _plain(check.scale(inputs.in_float64())) if check.scale is not None else None
        cases.append({"args": dict(inputs.args), "kwargs": dict(inputs.kwargs), "hidden": dict(inputs.hidden),
                      "notes": dict(inputs.notes), "expected": [_plain(inputs.call_reference(r)) for r in references],
                      "wrong": wrong, "scale": scale})
    fields = {}
    for field_ in dataclasses.fields(check):
        if field_.name in _CODE_FIELDS or not field_.init:
            continue
        plain, value = _data_field(getattr(check, field_.name))
        if not plain:
            return None  # a field this release does not know how to carry as data: not released
        fields[field_.name] = value
    return {"function": check.function, "fields": fields, "cases": cases, "references": len(references),
            "scaled": check.scale is not None, "hints": [d.message for d in check.diagnoses],
            "tests": [spec.name for spec in check.tests()]}


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
from grader.release import recorded_check

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
                    tuple(recorded_check(c) for c in data["checks"]), tuple(data["not_released"]))


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
#: and the instructors' tools that need the reference or the solutions.
LEFT_OUT = ("exercises", "export", "generate.py")


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

