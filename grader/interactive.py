"""``check(fn)`` in a student's notebook: the public checks of one function, in a second.

This runs in the student's own kernel, on their own machine: the code is
trusted, so the function is called directly (through the same worker code the
sandbox uses, so arguments and results travel the same way). Only public
checks run, with fewer examples; statistical checks and the grade are left to
``grade submit``.
"""

from __future__ import annotations

import time

import torch

from grader.checks import Context
from grader.exercises import find_exercise_of
from grader.runner import InProcessRunner
from grader.submit import run_checks

__all__ = ["check"]

#: Fraction of each check's examples that check() draws (the boundaries always run).
SCALE = 0.25


def check(function, *, examples: int | None = None, verbose: bool = False) -> bool:
    """Run the public checks of ``function``; print a verdict per check; True when all passed."""
    name = getattr(function, "__name__", None)
    exercise = find_exercise_of(name) if name else None
    if exercise is None:
        print(f"check: no exercise grades a function called {name!r}")
        return False
    checks = tuple(c for c in exercise.checks if c.function == name and c.public)
    if not checks:
        print(f"check: {name} has no quick public checks; `grade submit` tests it")
        return False
    namespace = {**getattr(function, "__globals__", {}), name: function}
    scale = SCALE if examples is None else examples / 25
    ctx = Context(InProcessRunner(namespace), torch.device("cpu"), 0, exercise.name, scale=scale, public_only=True)
    started = time.monotonic()
    left = [t for t in getattr(exercise, "not_released", ()) if t.startswith(f"{name}: ")]  # a student release
    rows = [row for row in run_checks(checks, ctx) if row[1].name not in left]
    passed = all(verdict.passed for _, _, verdict in rows)
    for _, spec, verdict in rows:
        mark = "✓" if verdict.passed else "✗"
        print(f"{mark} {spec.name}")
        if not verdict.passed or verdict.passed and verbose:
            print("    " + verdict.output.replace("\n", "\n    "))
    seconds = time.monotonic() - started
    if passed:
        print(f"All {len(rows)} public checks of {name} passed ({seconds:.1f} s). "
              "grade submit runs more, including statistical ones.")
    if left:
        print(f"({len(left)} more public test(s) of {name} cannot be answered from values recorded at release time: "
              f"{'; '.join(t.removeprefix(name + ': ') for t in left)}. grade submit runs them.)")
    return passed
