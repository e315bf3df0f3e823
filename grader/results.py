"""The results of grading one submission, and their Gradescope ``results.json`` form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GradingResult", "TestResult"]


@dataclass
class TestResult:
    """One graded test.

    Attributes:
        number: "1", "2", … in report order (Gradescope sorts by it).
        name: "q_sample: matches the reference".
        function: the curriculum name of the function or class it grades; None for the notebook itself.
        kind: "execution", "property", "statistical" or "structure".
        passed: whether the test passed (a 0-point test can fail too).
        score: points earned.
        max_score: points available.
        output: the feedback text.
        details: material for the report (input, expected, got, statistics, plot, traceback).
    """

    number: str
    name: str
    function: str | None
    kind: str
    passed: bool
    score: float
    max_score: float
    output: str
    details: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    def to_gradescope(self, exercise: str) -> dict[str, Any]:
        extra = {"exercise": exercise, "function": self.function, "kind": self.kind}
        extra.update({k: v for k, v in self.details.items() if k in ("input", "expected", "got", "statistics")})
        return {
            "name": self.name,
            "number": self.number,
            "score": self.score,
            "max_score": self.max_score,
            "status": self.status,
            "output": self.output,
            "tags": [exercise, self.kind] + ([self.function] if self.function else []),
            "visibility": "visible",
            "extra_data": extra,
        }


@dataclass
class GradingResult:
    """Everything ``grade submit`` found out about one submission.

    Attributes:
        exercise: the exercise graded.
        notebook: the path of the graded notebook.
        tests: every test, in report order.
        seed: the grading seed (the same seed always gives the same grade).
        device: where the reference and the student's tensors lived.
        version: the grader's version.
        execution_time: seconds from start to verdict.
        cells: how each code cell of the notebook ran (index, status, error).
        isolation: the operating system's walls that were in force around the kernel
            (see :mod:`grader.sandbox.isolation`).
    """

    exercise: str
    notebook: str
    tests: list[TestResult]
    seed: int
    device: str
    version: str
    execution_time: float = 0.0
    cells: list[dict] = field(default_factory=list)
    isolation: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return round(sum(t.score for t in self.tests), 6)

    @property
    def max_score(self) -> float:
        return round(sum(t.max_score for t in self.tests), 6)

    @property
    def full_marks(self) -> bool:
        return all(t.passed for t in self.tests if t.max_score > 0)

    def summary(self) -> str:
        failed = [t for t in self.tests if not t.passed and t.max_score > 0]
        line = f"{self.exercise}: {self.score:g} / {self.max_score:g} points"
        if failed:
            functions = sorted({t.function for t in failed if t.function})
            line += f"; {len(failed)} test(s) failed" + (f" ({', '.join(functions)})" if functions else "")
        return line

    def to_gradescope(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "execution_time": round(self.execution_time, 3),
            "output": self.summary(),
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "tests": [t.to_gradescope(self.exercise) for t in self.tests],
            "extra_data": {
                "exercise": self.exercise,
                "max_score": self.max_score,
                "seed": self.seed,
                "grader_version": self.version,
                "device": self.device,
                "cells": self.cells,
                "isolation": self.isolation,
            },
        }
