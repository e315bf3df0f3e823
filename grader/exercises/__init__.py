"""The exercises: one module each, holding one :class:`Exercise` named ``EXERCISE``.

Adding an exercise is adding a module here (plus its reference module and its
solution notebook); nothing else in the grader changes.

Importing this package is light (no torch): :func:`describe_exercise` reads a
declaration's name, title and functions from its source, without importing it
(declarations import ``reference`` and so torch), for ``grade list`` and for
naming an exercise before anything heavy is imported. The literal it reads is
checked against the imported declaration by tests/grader/test_cli.py, for every
module found here, so a new exercise is covered as soon as its module exists.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from grader.errors import UnknownExercise

if TYPE_CHECKING:
    from grader.checks import Check

__all__ = ["Exercise", "ExerciseIndex", "describe_exercise", "exercise_names", "find_exercise_of", "load_exercise"]


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
        from grader.checks import Signatures

        return (Signatures(self.functions), *self.checks)

    @property
    def function_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.functions)


@dataclass(frozen=True)
class ExerciseIndex:
    """What ``grade list`` shows of an exercise, read from its declaration's source (no import)."""

    name: str
    title: str
    functions: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def function_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.functions)


def exercise_names() -> list[str]:
    """Every exercise the grader knows, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _check_known(name: str) -> None:
    if name not in exercise_names():
        known = ", ".join(exercise_names())
        raise UnknownExercise(f"unknown exercise {name!r}; the grader knows: {known}")


def _literal_index(name: str) -> ExerciseIndex | None:
    """``EXERCISE = Exercise(name=..., title=..., functions=...)`` read as literals, or None if it is not written so."""
    source = (Path(__path__[0]) / f"{name}.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["EXERCISE"]
                and isinstance(node.value, ast.Call)):
            fields = {k.arg: k.value for k in node.value.keywords}
            try:
                values = {key: ast.literal_eval(fields[key]) for key in ("name", "title", "functions")}
            except (KeyError, ValueError):
                return None
            functions = tuple((f, tuple(args)) for f, args in values["functions"])
            return ExerciseIndex(values["name"], values["title"], functions)
    return None


@lru_cache(maxsize=None)
def describe_exercise(name: str) -> ExerciseIndex:
    """The name, title and functions of exercise ``name`` without importing its declaration, or :class:`UnknownExercise`.

    A declaration whose ``EXERCISE`` is not written with literal ``name``, ``title`` and
    ``functions`` is imported instead (right, only slower).
    """
    _check_known(name)
    index = _literal_index(name)
    if index is None:
        exercise = load_exercise(name)
        index = ExerciseIndex(exercise.name, exercise.title, exercise.functions)
    return index


@lru_cache(maxsize=None)
def load_exercise(name: str) -> Exercise:
    """The exercise called ``name``, or :class:`UnknownExercise`."""
    _check_known(name)
    return importlib.import_module(f"{__name__}.{name}").EXERCISE


def find_exercise_of(function_name: str) -> Exercise | None:
    """The exercise that declares a function called ``function_name``."""
    for name in exercise_names():
        if function_name in describe_exercise(name).function_names:
            return load_exercise(name)
    return None
