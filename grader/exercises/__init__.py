"""The exercises: one module each, holding one :class:`Exercise` named ``EXERCISE``.

Adding an exercise is adding a module here (plus its reference module and its
solution notebook); nothing else in the grader changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

from grader.checks import Check, Signatures
from grader.errors import UnknownExercise

__all__ = ["Exercise", "exercise_names", "find_exercise_of", "load_exercise"]


@dataclass(frozen=True)
class Exercise:
    """An exercise: its functions (with the curriculum's argument names) and its checks.

    Attributes:
        name: the folder name under ``exercises/`` and ``solutions/``.
        title: a human title.
        functions: ``(name, (argument names in order...))`` per graded function or class.
        checks: the declared checks, in the order they are reported.
    """

    name: str
    title: str
    functions: tuple[tuple[str, tuple[str, ...]], ...]
    checks: tuple[Check, ...]

    def all_checks(self) -> tuple[Check, ...]:
        return (Signatures(self.functions), *self.checks)

    @property
    def function_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.functions)


def exercise_names() -> list[str]:
    """Every exercise the grader knows, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@lru_cache(maxsize=None)
def load_exercise(name: str) -> Exercise:
    """The exercise called ``name``, or :class:`UnknownExercise`."""
    if name not in exercise_names():
        known = ", ".join(exercise_names())
        raise UnknownExercise(f"unknown exercise {name!r}; the grader knows: {known}")
    return importlib.import_module(f"{__name__}.{name}").EXERCISE


def find_exercise_of(function_name: str) -> Exercise | None:
    """The exercise that declares a function called ``function_name``."""
    for name in exercise_names():
        exercise = load_exercise(name)
        if function_name in exercise.function_names:
            return exercise
    return None
