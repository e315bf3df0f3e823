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

The measurements are the catalogue's own tests (``tests/exercises/test_catalogue.py``), run on
more seeds: this script runs pytest in a subprocess with ``CALIBRATION_SEEDS=N`` and
``--calibration-out FILE`` (tests/conftest.py), where every entry records, seed by seed, whether
it failed and its statistics' p-values and sample sizes (:func:`rows_from_records` reads them),
and tabulates that file. So there is one definition of "caught" and "full marks", and this
script imports no test code (tests/exercises/test_calibration.py holds it to that). The
reference's statistical checks on other seeds are ``tests/exercises/test_calibration.py``.

Usage: python benchmarks/calibrate.py [--seeds 200] [--exercises ddim ...] [--jobs 2]
Writes benchmarks/results/calibration.md (or --out). ``--jobs`` > 1 runs pytest-xdist workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The catalogue's tests, and those of them that record a calibration row (their full entries,
#: not the quick loop's "quick …" ones).
CATALOGUE_TESTS = "tests/exercises/test_catalogue.py"
RECORDING = ("test_bug_is_caught_and_named", "test_alternative_gets_full_marks",
             "test_reference_gets_full_marks_on_every_seed")


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
    recorded: int = 0  # seeds recorded

    @property
    def rate(self) -> float:
        return len(self.failing_seeds) / self.seeds


def selected(nodeids: list[str], exercises: list[str] | None = None) -> list[str]:
    """The recording tests among pytest's node ids, of ``exercises`` only when given.

    Their ids are ``test[EXERCISE: entry]`` (bugs and alternatives; the quick loop's are
    ``test[quick EXERCISE: entry]``) and ``test[EXERCISE]`` (the reference on every seed).
    """
    chosen = []
    for nodeid in nodeids:
        test, _, param = nodeid.partition("::")[2].partition("[")
        if test not in RECORDING or not param.endswith("]") or param.startswith("quick "):
            continue
        exercise = param[:-1].split(": ")[0]
        if exercises is None or exercise in exercises:
            chosen.append(nodeid)
    return chosen


def _pytest(*args: str, env: dict | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=capture, text=True)


def collect(exercises: list[str] | None = None) -> list[str]:
    """The node ids of the recording catalogue tests (of ``exercises`` when given), as pytest lists them."""
    listed = _pytest("--collect-only", "-q", CATALOGUE_TESTS, capture=True)
    if listed.returncode != 0:
        raise SystemExit(f"calibrate: pytest could not collect {CATALOGUE_TESTS}:\n{listed.stdout[-2000:]}")
    nodeids = selected(listed.stdout.splitlines(), exercises)
    if not nodeids:
        raise SystemExit(f"calibrate: no catalogue entries for {exercises}")
    return nodeids


def measure(nodeids: list[str], seeds: int, jobs: int = 1) -> list[Row]:
    """Run the tests ``nodeids`` on ``seeds`` seeds (0 … seeds − 1) in a pytest subprocess; their records as rows."""
    with tempfile.TemporaryDirectory(prefix="calibration-") as folder:
        out = Path(folder) / "records.jsonl"
        done = _pytest("-q", "--calibration-out", str(out), *(["-n", str(jobs)] if jobs > 1 else []), *nodeids,
                       env={"CALIBRATION_SEEDS": str(seeds)})
        # 0: every entry held; 1: some did not (the tables say which). Anything else: the run broke.
        if done.returncode not in (0, 1):
            raise SystemExit(f"calibrate: pytest stopped with exit status {done.returncode}")
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    rows = rows_from_records(records, seeds)
    incomplete = [f"{r.exercise}: {r.name} ({r.recorded} of {r.seeds} seeds)" for r in rows if r.recorded != r.seeds]
    if len(rows) != len(nodeids) or incomplete:
        raise SystemExit(f"calibrate: {len(nodeids)} entries were run, {len(rows)} recorded; incomplete: {incomplete}")
    return rows


def run(seeds: int, exercises: list[str] | None = None, jobs: int = 1) -> list[Row]:
    """Every catalogue entry of ``exercises`` (all when None) and the reference, on ``seeds`` seeds."""
    return measure(collect(exercises), seeds, jobs)


def rows_from_records(records: list[dict], seeds: int) -> list[Row]:
    """The records of ``--calibration-out`` as one row per entry: by exercise, then the reference, the
    alternatives and the bugs in catalogue order; p-values in the order the tests reported them."""
    order = {"correct": 0, "alternative": 1, "bug": 2}
    rows: dict[tuple, Row] = {}
    for r in sorted(records, key=lambda r: (r["exercise"], order[r["kind"]], r["index"], r["seed"])):
        row = rows.setdefault((r["exercise"], r["kind"], r["index"]),
                              Row(r["exercise"], r["kind"], r["name"], r["function"], seeds))
        row.recorded += 1
        if r["failed"]:
            row.failing_seeds.append(r["seed"])
        for key, p_value, n in r["statistics"]:
            row.p_values.setdefault(key, []).append(p_value)
            row.sample_sizes[key] = n
    return list(rows.values())


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
