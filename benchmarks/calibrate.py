"""The statistical calibration: measured detection and false-failure rates over many seeds.

For every exercise with a catalogue in ``tests/catalogue/``:

* every **bug** is graded on each seed (the checks of its function only); the
  detection rate is the fraction of seeds where some test of that function fails —
  the policy asks for ≥ 99%;
* the **correct** namespace and every **alternative** are graded on each seed; the
  false-failure rate is the fraction of seeds with any failed test — the policy
  bounds it by 1e-4 per submission, so over 200 seeds we expect none;
* the p-values of every statistic of every statistical check of the correct
  namespace and of every alternative are collected over seeds: for a correct implementation they are
  uniform on [0, 1] (exact tests) or larger (conservative ones), and a one-sided
  Kolmogorov–Smirnov test says whether they pile up near 0. A level that is off —
  a threshold too tight, a law slightly wrong — shows here long before it shows
  as false failures.

The test suite runs the same measurements with fewer seeds
(``tests/exercises/test_catalogue.py``, and this module's own functions in
``tests/exercises/test_calibration.py``). This script imports no test code: it grades
in process through the grader's own API (:func:`grade`), and reads the catalogues —
data, one module per exercise, with ``BUGS``, ``ALTERNATIVES`` and ``CORRECT`` — from
``tests/catalogue/`` (:data:`CATALOGUE`), where the test suite also finds them.

Usage: python benchmarks/calibrate.py [--seeds 200] [--exercises ddim ...] [--jobs 2]
Writes benchmarks/results/calibration.md (or --out).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    """One catalogue entry's measurement."""

    exercise: str
    kind: str  # "bug", "alternative", "correct"
    name: str
    function: str
    seeds: int
    failing_seeds: list[int] = field(default_factory=list)
    p_values: dict[str, list[float]] = field(default_factory=dict)
    sample_sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.failing_seeds) / self.seeds


#: Where the catalogues are (a package of data modules, imported as ``tests.catalogue.<exercise>``).
CATALOGUE = ROOT / "tests" / "catalogue"


def catalogue(exercise: str):
    """The catalogue module of ``exercise``."""
    return importlib.import_module(f"tests.catalogue.{exercise}")


def catalogues(only: list[str] | None = None) -> dict:
    return {m.name: catalogue(m.name) for m in pkgutil.iter_modules([str(CATALOGUE)])
            if only is None or m.name in only}


def grade(exercise: str, namespace: dict, seed: int, functions: set[str] | None = None) -> list:
    """``(function, test name, verdict)`` for the checks of ``exercise`` (those of ``functions`` when given),
    graded in this process against the functions of ``namespace`` on the CPU, with grading seed ``seed``."""
    import torch

    from grader.checks import Context
    from grader.exercises import load_exercise
    from grader.runner import InProcessRunner
    from grader.submit import run_checks

    ex = load_exercise(exercise)
    checks = tuple(c for c in ex.checks if functions is None or c.function in functions)
    ctx = Context(InProcessRunner(dict(namespace)), torch.device("cpu"), seed, ex.name)
    return [(check.function, spec.name, verdict) for check, spec, verdict in run_checks(checks, ctx)]


def _measure(job: tuple) -> Row:
    """Grade one catalogue entry on every seed (runs in a worker process)."""
    import torch

    torch.set_num_threads(1)
    exercise, kind, name, function, seeds = job[:5]
    first_seed = job[5] if len(job) > 5 else 0
    module = catalogue(exercise)
    if kind == "correct":
        namespace, functions = dict(module.CORRECT), statistical_functions(exercise) if function == "statistical" else None
    else:
        entry = next(e for e in (module.BUGS if kind == "bug" else module.ALTERNATIVES) if e.name == name)
        namespace, functions = {**module.CORRECT, function: entry.impl}, {function}
    row = Row(exercise, kind, name, function, seeds)
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        graded = grade(exercise, namespace, seed, functions)
        if any(not verdict.passed for _, _, verdict in graded):
            row.failing_seeds.append(seed)
        if kind != "bug":
            for _, test, verdict in graded:
                for statistic in verdict.details.get("statistics", []):
                    key = f"{test} — {statistic['name']}"
                    row.p_values.setdefault(key, []).append(statistic["p_value"])
                    row.sample_sizes[key] = statistic["n"]
    row.seconds = time.perf_counter() - started
    return row


def statistical_functions(exercise: str) -> set[str]:
    """The functions of ``exercise`` that have a statistical check."""
    from grader.checks import Statistical
    from grader.exercises import load_exercise

    return {c.function for c in load_exercise(exercise).checks if isinstance(c, Statistical)}


def correct_statistics(exercise: str, seeds: int, first_seed: int = 0) -> Row:
    """Only the statistical checks of the correct namespace, on ``seeds`` seeds (used by the test suite)."""
    return _measure((exercise, "correct", "reference", "statistical", seeds, first_seed))


def jobs_for(found: dict, seeds: int) -> list[tuple]:
    jobs = []
    for exercise, module in found.items():
        jobs.append((exercise, "correct", "reference", "all", seeds))
        jobs += [(exercise, "alternative", a.name, a.function, seeds) for a in module.ALTERNATIVES]
        jobs += [(exercise, "bug", b.name, b.function, seeds) for b in module.BUGS]
    return jobs


def run(seeds: int, exercises: list[str] | None = None, jobs: int = 1) -> list[Row]:
    work = jobs_for(catalogues(exercises), seeds)
    if jobs <= 1:
        return [_measure(job) for job in work]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_measure, work))


def ks_p_value(p_values: list[float]) -> float:
    """One-sided Kolmogorov–Smirnov p-value: are the p-values stochastically smaller than Uniform(0, 1)?

    A valid test has P(p ≤ x) ≤ x for every x: exact tests give uniform p-values,
    conservative ones (a Chernoff bound, the binomial band test's composite null)
    larger ones. Only p-values piling up near 0 — a level that is not what it
    claims — make this small (``alternative="greater"``: the data's CDF above the
    uniform CDF somewhere).
    """
    from scipy import stats

    if len(p_values) < 5:
        return float("nan")
    return float(stats.kstest(p_values, "uniform", alternative="greater").pvalue)


def report(rows: list[Row], seeds: int, seconds: float) -> str:
    lines = [
        "# Statistical calibration",
        "",
        f"{seeds} seeds per entry; {time.strftime('%Y-%m-%d')}; {seconds / 60:.1f} min on {os.cpu_count()} CPUs. "
        f"Command: `python benchmarks/calibrate.py {' '.join(sys.argv[1:])}`.",
        "",
        "Policy (grading.md): every catalogued bug caught on ≥ 99% of seeds; correct implementations fail a",
        "statistical test with probability ≤ 1e-6 per test and ≤ 1e-4 per submission.",
        "",
        "## Correct implementations (false failures)",
        "",
        "| exercise | implementation | function | seeds failed | rate |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        if row.kind != "bug":
            lines.append(f"| {row.exercise} | {row.name} | {row.function} | {len(row.failing_seeds)} / {row.seeds} | "
                         f"{row.rate:.3f} |")
    lines += [
        "",
        "## Statistics of correct implementations over seeds",
        "",
        "For a correct implementation every p-value is Uniform(0, 1) for an exact test, or larger for a conservative",
        "one (Chernoff bounds, band tests); KS is the one-sided Kolmogorov–Smirnov p-value against p-values piling",
        "up near 0, and `min p` the smallest p-value seen (the tests reject below their level α ≤ 1e-6).",
        "",
        "| exercise | implementation | test — statistic | n per seed | mean p | min p | KS p |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for key, values in row.p_values.items():
            lines.append(f"| {row.exercise} | {row.name} | {key} | {row.sample_sizes[key]:,} | "
                         f"{sum(values) / len(values):.3f} | {min(values):.2g} | {ks_p_value(values):.3f} |")
    lines += [
        "",
        "## Bugs (detection)",
        "",
        "| exercise | bug | function | seeds caught | rate |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        if row.kind == "bug":
            lines.append(f"| {row.exercise} | {row.name} | {row.function} | {len(row.failing_seeds)} / {row.seeds} | "
                         f"{row.rate:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--exercises", nargs="*", default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration.md")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.seeds, args.exercises, args.jobs)
    text = report(rows, args.seeds, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    missed = [r for r in rows if r.kind == "bug" and r.rate < 0.99]
    false = [r for r in rows if r.kind != "bug" and r.failing_seeds]
    return 1 if missed or false else 0


if __name__ == "__main__":
    sys.exit(main())
