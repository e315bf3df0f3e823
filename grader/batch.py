"""``grade batch``: grade a class in parallel, one isolated ``grade submit`` process per student.

Layout: ``SUBMISSIONS_DIR/<student>/`` (a folder holding one notebook) or
``SUBMISSIONS_DIR/<student>.ipynb``. Output: ``OUT/<student>/`` (results.json,
report.html, the executed notebook) and ``OUT/gradebook.csv``, one row per
student with the total, each function's points, and why a submission could not
be graded, if it could not.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from grader.errors import UsageError
from grader.submit import SubmitOptions

__all__ = ["grade_batch"]


@dataclass
class Row:
    student: str
    status: int
    results: dict | None
    error: str


def _entries(folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of submissions")
    entries = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.suffix == ".ipynb":
            entries.append((path.stem if path.is_file() else path.name, path))
    if not entries:
        raise UsageError(f"{folder} holds no submissions (folders or .ipynb files)")
    return entries


def _command(path: Path, out: Path, options: SubmitOptions, exercise: str | None) -> list[str]:
    limits = options.limits
    command = [sys.executable, "-m", "grader", "submit", str(path), "--out", str(out), "--json",
               "--seed", str(options.seed), "--device", options.device, "--timeout", str(options.timeout),
               "--cell-timeout", str(limits.cell_timeout), "--call-timeout", str(limits.call_timeout),
               "--memory-limit", str(limits.memory_bytes), "--threads", str(limits.threads or 1)]
    if exercise:
        command += ["--exercise", exercise]
    return command


def _grade_one(student: str, path: Path, out: Path, options: SubmitOptions, exercise: str | None) -> Row:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the grader's own process: small tensors
    try:
        done = subprocess.run(_command(path, out / student, options, exercise), capture_output=True,
                              text=True, env=env, timeout=options.timeout + 120)
    except subprocess.TimeoutExpired:
        return Row(student, 2, None, f"grading took longer than {options.timeout + 120:.0f} s")
    if done.returncode in (0, 1):
        try:
            return Row(student, done.returncode, json.loads(done.stdout), "")
        except json.JSONDecodeError:
            return Row(student, 2, None, "the grader's output could not be read")
    lines = [line for line in done.stderr.splitlines() if line.startswith("grade:")]
    return Row(student, done.returncode, None, lines[-1] if lines else f"exit status {done.returncode}")


def _write_gradebook(rows: list[Row], path: Path) -> None:
    functions: list[str] = []
    for row in rows:
        for test in (row.results or {}).get("tests", []):
            name = test["extra_data"].get("function")
            if name and name not in functions:
                functions.append(name)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "exercise", "score", "max_score", "status", *functions, "error"])
        for row in rows:
            results = row.results or {}
            per_function = {name: 0.0 for name in functions}
            for test in results.get("tests", []):
                name = test["extra_data"].get("function")
                if name:
                    per_function[name] += test["score"]
            status = {0: "full marks", 1: "graded"}.get(row.status, "not graded")
            writer.writerow([row.student, results.get("extra_data", {}).get("exercise", ""), results.get("score", 0),
                             results.get("extra_data", {}).get("max_score", ""), status,
                             *(f"{per_function[name]:g}" for name in functions), row.error])


def grade_batch(submissions: Path, out: Path | None, *, jobs: int | None, exercise: str | None,
                options: SubmitOptions) -> int:
    """Grade every submission; 0 when every one could be graded, 1 otherwise."""
    entries = _entries(submissions)
    out = out or submissions.resolve().parent / "gradebook"
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or (os.cpu_count() or 2) // 2)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(lambda e: _grade_one(e[0], e[1], out, options, exercise), entries))
    _write_gradebook(rows, out / "gradebook.csv")
    for row in rows:
        score = f"{row.results['score']:g}/{row.results['extra_data']['max_score']:g}" if row.results else "—"
        print(f"{row.student:24s} {score:>9s}  {row.error}")
    ungraded = [r for r in rows if r.results is None]
    print(f"{len(rows) - len(ungraded)} of {len(rows)} submissions graded; gradebook: {out / 'gradebook.csv'}")
    return 1 if ungraded else 0
