"""Catalogues of realistic student bugs, and of correct alternative implementations, per exercise.

Each module ``tests/catalogue/<exercise>.py`` defines

* ``BUGS``: :class:`Bug` entries — a wrong implementation of one curriculum function,
  written the way students actually get it wrong, with what the mistake is;
* ``ALTERNATIVES``: :class:`Alternative` entries — correct implementations that
  differ from the reference (float64 inside, loops, numpy, another grouping) and
  must get full marks;
* ``CORRECT``: the namespace of correct functions (name → callable) that bugs and
  alternatives are substituted into.

``tests/exercises/test_catalogue.py`` proves every bug caught, with its function
named, and every alternative at full marks, on many seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Bug:
    """A realistic mistake in ``function``; ``impl`` replaces it in the correct namespace."""

    name: str
    function: str
    impl: Callable
    mistake: str


@dataclass(frozen=True)
class Alternative:
    """A correct implementation of ``function`` that differs from the reference."""

    name: str
    function: str
    impl: Callable
    how: str
