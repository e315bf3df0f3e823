"""How much does grading cost beyond the floor, and what does isolation cost per call?

Measures, on this machine (median of --repeat runs):

* floor: ``python -c "import torch"`` (the grader's own start) plus a sandboxed kernel's
  start to ready (a second Python with torch and ipykernel);
* ``grade submit`` on each exercise's solution notebook, end to end, and its split into
  the notebook's own cells and the checks;
* isolation per call: one trivial call through the kernel versus in-process, and the
  amortised cost per call in a batch of 200;
* ``check(fn)`` in a notebook (grading.md: "answers in under a second"): the public
  checks of every function, called on the reference implementation, warm.

Usage: python benchmarks/bench_grading.py [--repeat 3] [--exercises q_sampler ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grader.runner import InProcessRunner, KernelRunner  # noqa: E402
from grader.sandbox.kernel import Limits, SandboxKernel  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_of(repeat: int, fn) -> float:
    return statistics.median(timed(fn) for _ in range(repeat))


def python_torch_start() -> None:
    subprocess.run([sys.executable, "-c", "import torch"], check=True)


def kernel_start() -> None:
    with SandboxKernel(Path(tempfile.mkdtemp()), Limits(), []):
        pass


def grade(exercise: str) -> dict:
    folder = Path(tempfile.mkdtemp()) / exercise
    shutil.copytree(ROOT / "solutions" / exercise, folder)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "grader", "submit", str(folder), "--json", "--device", "cpu"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr)
    shutil.rmtree(folder.parent)
    return {"seconds": seconds, "full_marks": done.returncode == 0}


def notebook_cells(exercise: str) -> float:
    nb = nbformat.read(ROOT / "solutions" / exercise / f"{exercise}.ipynb", as_version=4)
    with SandboxKernel(Path(tempfile.mkdtemp()), Limits(), []) as kernel:
        runs = kernel.run_notebook(nb, time.monotonic() + 600)
    return sum(r.seconds for r in runs)


def call_overhead() -> dict:
    calls = [{"function": "identity", "args": [torch.ones(4)]}]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def identity(x):\n    return x")]
    results = {}
    with SandboxKernel(Path(tempfile.mkdtemp()), Limits(), []) as kernel:
        kernel.run_notebook(nb, time.monotonic() + 60)
        runner = KernelRunner(kernel, time.monotonic() + 600)
        runner.run(calls, [0])  # warm
        results["kernel_single"] = median_of(20, lambda: runner.run(calls, [0]))
        results["kernel_batch200"] = median_of(5, lambda: runner.run(calls * 200, list(range(200)))) / 200
    local = InProcessRunner({"identity": lambda x: x})
    results["inprocess_single"] = median_of(20, lambda: local.run(calls, [0]))
    results["inprocess_batch200"] = median_of(5, lambda: local.run(calls * 200, list(range(200)))) / 200
    return results


def check_latency(exercise: str, repeat: int) -> dict[str, float]:
    """Seconds for ``check(fn)`` on each function of ``exercise`` with public checks (warm, median)."""
    import contextlib
    import importlib
    import io

    from grader.exercises import load_exercise
    from grader.interactive import check

    module = importlib.import_module(f"reference.{exercise}")
    names = sorted({c.function for c in load_exercise(exercise).checks if c.public and c.function})
    seconds = {}
    for name in names:
        function = getattr(module, name)
        with contextlib.redirect_stdout(io.StringIO()):
            if not check(function):  # warm: imports, hypothesis's first draw
                raise RuntimeError(f"check({name}) fails on the reference")
            seconds[name] = median_of(repeat, lambda: check(function))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--exercises", nargs="*", default=None)
    args = parser.parse_args()
    exercises = args.exercises or sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())

    floor_python = median_of(args.repeat, python_torch_start)
    floor_kernel = median_of(args.repeat, kernel_start)
    floor = floor_python + floor_kernel
    lines = [
        f"# Grading cost ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"median of {args.repeat})",
        "",
        f"Floor: python + import torch {floor_python:.2f} s, kernel start {floor_kernel:.2f} s, total {floor:.2f} s.",
        "",
        "| exercise | grade submit (s) | ratio to floor | notebook cells (s) | rest: checks, I/O (s) | full marks |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for exercise in exercises:
        runs = [grade(exercise) for _ in range(args.repeat)]
        seconds = statistics.median(r["seconds"] for r in runs)
        cells = notebook_cells(exercise)
        rest = seconds - floor - cells
        lines.append(f"| {exercise} | {seconds:.2f} | {seconds / floor:.2f} | {cells:.2f} | {rest:.2f} | "
                     f"{all(r['full_marks'] for r in runs)} |")
    overhead = call_overhead()
    lines += [
        "",
        "Isolation per call (a trivial function of a 4-element tensor):",
        "",
        "| | one call per batch (ms) | amortised in a batch of 200 (ms) |",
        "| --- | ---: | ---: |",
        f"| sandboxed kernel | {1e3 * overhead['kernel_single']:.1f} | {1e3 * overhead['kernel_batch200']:.2f} |",
        f"| in-process | {1e3 * overhead['inprocess_single']:.2f} | {1e3 * overhead['inprocess_batch200']:.3f} |",
    ]
    lines += [
        "",
        "`check(fn)` in a notebook (public checks, in-process, warm; the goal is under a second):",
        "",
        "| exercise | functions | median (s) | slowest (s) |",
        "| --- | ---: | ---: | --- |",
    ]
    for exercise in exercises:
        latency = check_latency(exercise, args.repeat)
        slowest = max(latency, key=latency.get)
        lines.append(f"| {exercise} | {len(latency)} | {statistics.median(latency.values()):.2f} | "
                     f"{latency[slowest]:.2f} ({slowest}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "grading.md").write_text(text)


if __name__ == "__main__":
    main()
