"""Helpers shared by the tests: grade a namespace of functions in this process; find processes by thread name."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from grader.checks import Context
from grader.exercises import load_exercise
from grader.runner import InProcessRunner
from grader.submit import run_checks

#: Seeds for catalogue and calibration tests. CI runs a reduced number; the full
#: calibration (``benchmarks/calibrate.py``) sets CALIBRATION_SEEDS=200.
SEEDS = int(os.environ.get("CALIBRATION_SEEDS", "10"))


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
