"""Grading at the floor's speed: the grader against nbclient, paired in one run, for every exercise.

Measures, each figure the median of ``--repeat`` runs, the two sides of a pair run one after the
other in alternating order (grader first on even rounds, nbclient first on odd ones), every
process with ``OMP_NUM_THREADS=1`` (the grader's kernel uses one torch thread too):

* **solution**: ``grade submit`` of a copy of ``solutions/NAME`` against nbclient executing the
  same notebook in a fresh process (``NotebookClient(...).execute()``, cwd the notebook's folder);
  target ≤ 1.1×;
* **stub**: ``grade submit`` of a copy of ``exercises/NAME`` (its cells raise at once) against the
  one-cell floor, nbclient running a notebook whose one cell is ``import torch``; target ≤ 1.5×;
* **peak memory** of each whole process tree (the command and every descendant: grader, kernel,
  the kernel's namespace), PSS summed over the tree from ``/proc/PID/smaps_rollup``, polled every
  0.1 s during the timed runs (both sides are polled, so both pay the same small cost);
* **fast paths**: ``grade list``, ``grade --help`` and a bad-input error (a missing notebook),
  wall time of the console script; target < 0.5 s;
* **batch** (``--batch-copies``, default 20, on ``--jobs`` 2): ``grade batch`` of copies of one
  solution, wall × jobs / copies (the cost per submission per core) against one ``grade submit``
  of it, the mean of one run just before the batch and one just after (the same load); target
  ≤ 0.6×. ``--batch-rounds`` rounds (default 3: this machine's speed was seen to drift by 40 %
  between two batches minutes apart), the median of their ratios; these runs are not polled for memory
  (see :func:`measure_batch`), one more polled run gives the batch's peak. ``--batch-cold`` also runs
  the batch with every kernel started cold (``GRADER_ZYGOTE=0``): what the slots' zygote saves.

Both sides import nbformat, whose jsonschema would build rfc3987_syntax's parser at import
(2.4-2.8 s here, for a string format no notebook schema uses): the grader skips that import
(:func:`grader.cli._skip_unused_validators`), and so does the nbclient side here, so that the
floor is not inflated by a cost the grader no longer pays.

The grader's own packages (``grader``, ``reference``) are compiled to bytecode before anything is
timed, as ``pip install`` does for an installed package and as any first run does where Python may
write bytecode. The runs themselves never write it (``PYTHONDONTWRITEBYTECODE=1``, as the grader's
kernels run), and on a machine whose environment sets that variable for everything, as these do, an
editable checkout would otherwise compile the grader's ~20 000 lines again in every grader process:
up to 0.2 s of CPU each (compiling all of them took 0.2 s), in three to five processes a run. No
installed grader pays that, and nbclient's side, all installed packages, never does.

The pairing is done here (not with farm-bench) because each run is also polled for memory and its
score read back from results.json: the solutions must get full marks and the stubs none.

Usage: python benchmarks/bench_speed.py [--repeat 3] [--exercises ddim q_sampler ...]
       [--batch-exercise q_sampler] [--batch-copies 20] [--batch-rounds 3] [--jobs 2] [--no-batch] [--batch-cold]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRADE = Path(sys.executable).with_name("grade")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}

#: nbclient alone, as a course would run a notebook: a fresh Python, nbformat, a python3 kernel.
NBCLIENT = """
import sys
sys.modules.setdefault("rfc3987_syntax", None)  # the import the grader skips too (see the module's docstring)
import nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
"""

#: A load average above this means other work ran beside the benchmark: its own grader and kernel keep the load
#: near 2 on their own. At the end, after the batch, the threshold is this plus ``--jobs``: the batch's slots, each
#: with a kernel running and the next one booting, leave the one-minute average near 2.6 for two jobs by themselves.
LOADED = 2.5
POLL = 0.1  # seconds between memory samples: a short burst can be missed, as by the grader's own watchdog


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(c) for c in f.read().split())
    except OSError:  # gone meanwhile
        pass
    return found


def _tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # gone, or not ours to read
        pass
    return 0


def run(command: list[str], cwd: Path | None = None, env: dict | None = None, poll: bool = True) -> dict:
    """Run ``command``; its wall time, the peak PSS of its process tree (MiB; 0 unless ``poll``), its exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    if poll:
        while proc.poll() is None:
            peak = max(peak, sum(_pss_kib(p) for p in _tree(proc.pid)))
            time.sleep(POLL)
        stderr_bytes = proc.stderr.read()
    else:  # waited for, not looked at: the wall time is the process's own, not rounded up to a poll
        stderr_bytes = proc.communicate()[1]
    wall = time.perf_counter() - started
    stderr = stderr_bytes.decode(errors="replace")
    proc.stderr.close()
    return {"wall": wall, "peak_mib": peak / 1024, "rc": proc.returncode, "stderr": stderr[-2000:]}


def grade_submit(source: Path, scratch: Path, poll: bool = True) -> dict:
    """``grade submit`` of a fresh copy of the folder ``source``; its run and score."""
    work = Path(tempfile.mkdtemp(dir=scratch)) / source.name
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("feedback", "*.executed.ipynb"))
    out = work.parent / "feedback"
    result = run([str(GRADE), "submit", str(work), "--out", str(out), "--quiet"], poll=poll)
    try:
        graded = json.loads((out / "results.json").read_text())
        result["score"] = graded["score"]
        result["max"] = sum(t.get("max_score", 0) for t in graded["tests"])
    except (OSError, ValueError, KeyError):  # not graded: shown as such in the table, the run goes on
        print(f"grade submit {source} failed ({result['rc']}): {result['stderr']}", file=sys.stderr)
        result["score"], result["max"] = float("nan"), float("nan")
    shutil.rmtree(work.parent, ignore_errors=True)
    return result


def nbclient(notebook: Path, cwd: Path) -> dict:
    result = run([sys.executable, "-c", NBCLIENT, str(notebook), str(cwd)], cwd=cwd)
    if result["rc"] != 0:
        print(f"nbclient {notebook} failed ({result['rc']}): {result['stderr']}", file=sys.stderr)
    return result


def paired(first, second, round_: int) -> tuple[dict, dict]:
    """Run the pair in alternating order: ``first`` first on even rounds, ``second`` first on odd ones."""
    if round_ % 2 == 0:
        a = first()
        return a, second()
    b = second()
    return first(), b


def median(runs: list[dict], key: str = "wall") -> float:
    return statistics.median(r[key] for r in runs)


def measure_exercises(names: list[str], repeat: int, scratch: Path, after_round=lambda runs, rounds: None) -> dict:
    floor_nb = scratch / "floor.ipynb"
    floor_nb.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                          "language": "python"}},
        "cells": [{"cell_type": "code", "id": "floor", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": "import torch"}]}))
    runs = {name: {"solution": [], "nbclient": [], "stub": [], "floor": []} for name in names}
    for round_ in range(repeat):
        for name in names:
            solution, stub = ROOT / "solutions" / name, ROOT / "exercises" / name
            a, b = paired(lambda: grade_submit(solution, scratch),
                          lambda: nbclient(solution / f"{name}.ipynb", solution), round_)
            runs[name]["solution"].append(a)
            runs[name]["nbclient"].append(b)
            a, b = paired(lambda: grade_submit(stub, scratch), lambda: nbclient(floor_nb, scratch), round_)
            runs[name]["stub"].append(a)
            runs[name]["floor"].append(b)
            r = runs[name]
            print(f"round {round_ + 1} {name}: solution {r['solution'][-1]['wall']:.2f} s "
                  f"({r['solution'][-1]['score']:g}/{r['solution'][-1]['max']:g}) vs nbclient "
                  f"{r['nbclient'][-1]['wall']:.2f} s; stub {r['stub'][-1]['wall']:.2f} s "
                  f"({r['stub'][-1]['score']:g}) vs floor {r['floor'][-1]['wall']:.2f} s", flush=True)
        after_round(runs, round_ + 1)  # the table so far, written after every round
    return runs


def measure_fast_paths(repeat: int, scratch: Path) -> dict:
    commands = {"grade list": ["list"], "grade --help": ["--help"],
                "grade submit missing.ipynb (bad input)": ["submit", str(scratch / "missing.ipynb")],
                "grade submit --seed abc (bad option)": ["submit", str(ROOT / "solutions" / "q_sampler"),
                                                         "--seed", "abc"]}
    return {label: statistics.median(run([str(GRADE), *argv])["wall"] for _ in range(max(5, repeat)))
            for label, argv in commands.items()}


def solution_copies(name: str, copies: int, submissions: Path) -> Path:
    """``submissions``, made with ``copies`` folders ``studentNN`` each holding a copy of the solution notebook."""
    for i in range(copies):
        folder = submissions / f"student{i:02d}"
        folder.mkdir(parents=True)
        shutil.copy(ROOT / "solutions" / name / f"{name}.ipynb", folder / f"{name}.ipynb")
    return submissions


def measure_batch(name: str, copies: int, jobs: int, scratch: Path, cold: bool = False, rounds: int = 3) -> dict:
    """``grade batch`` of ``copies`` copies of the solution on ``jobs`` jobs, ``rounds`` times, each bracketed by one
    ``grade submit`` of it just before and one just after (the yardstick, under the same load); the ratio is the
    median of the rounds'. ``cold``: also one batch with every kernel started cold (GRADER_ZYGOTE=0), for the
    zygote's share.

    The timed runs are not polled for memory: reading ``smaps_rollup`` costs the kernel in proportion to the
    tree's processes and mappings, and a batch's tree has about three times a `grade submit`'s (two slots, their
    zygotes and kernels): one poll of it took 42 ms of CPU (68 ms wall), a third of a core at a 0.1 s period,
    which slowed the batch far more than its yardstick. The peak memory comes from one more, polled, batch.
    """
    submissions = solution_copies(name, copies, scratch / "batch" / "submissions")

    def batch(out: str, env: dict | None = None, poll: bool = False) -> dict:
        result = run([str(GRADE), "batch", str(submissions), "--out", str(scratch / "batch" / out), "--jobs",
                      str(jobs), "--exercise", name, "--progress", "lines"], env=env, poll=poll)
        if result["rc"] != 0:
            print(f"grade batch ended with {result['rc']}: {result['stderr']}", file=sys.stderr)
        graded = sorted((scratch / "batch" / out).glob("*/results.json"))
        result["graded"] = sum(json.loads(path.read_text()).get("score") is not None for path in graded)
        return {**result, "per_submission_per_core": result["wall"] * jobs / copies}

    solution = ROOT / "solutions" / name
    runs = []
    for k in range(rounds):
        before = grade_submit(solution, scratch, poll=False)
        result = batch(f"out{k}")
        after = grade_submit(solution, scratch, poll=False)
        result["brackets"] = [before["wall"], after["wall"]]
        result["single"] = (before["wall"] + after["wall"]) / 2
        result["ratio"] = result["per_submission_per_core"] / result["single"]
        runs.append(result)
        print(f"batch round {k + 1}: {result['wall']:.1f} s, {result['per_submission_per_core']:.2f} s per submission "
              f"per core against {result['single']:.2f} s: {result['ratio']:.2f}x", flush=True)
    summary = {"runs": runs, "ratio": statistics.median(r["ratio"] for r in runs),
               "graded": min(r["graded"] for r in runs), "rc": max(r["rc"] for r in runs),
               "peak_mib": batch("out-memory", poll=True)["peak_mib"]}
    if cold:
        summary["cold"] = batch("out-cold", {**ENV, "GRADER_ZYGOTE": "0"})
        summary["cold"]["single"] = grade_submit(solution, scratch, poll=False)["wall"]
    return summary


def table(names, runs, fast, batch, args, load, rounds=None) -> str:
    lines = [
        "# Grading speed against nbclient, paired in one run",
        "",
        f"`python benchmarks/bench_speed.py --repeat {args.repeat}"
        + (f" --exercises {' '.join(args.exercises)}" if args.exercises else "")
        + (f" --batch-exercise {args.batch_exercise} --batch-copies {args.batch_copies} --batch-rounds "
           f"{args.batch_rounds} --jobs {args.jobs}"
           + (" --batch-cold" if "cold" in batch else "") if batch else " --no-batch") + "`",
        "",
        (f"**Partial: {rounds} of {args.repeat} rounds so far.** " if rounds and rounds < args.repeat else "")
        + f"Machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}; load average {load[0]:.1f} at the "
        f"start and {load[1]:.1f} at the end"
        + (": **a loaded, shared machine** (other work ran beside it), so absolute times are inflated and noisy"
           if load[0] > LOADED or load[1] > LOADED + (args.jobs if batch else 0)
           else " (the benchmark's own busy processes: nothing else ran)")
        + "; the ratios are paired (the two sides of each pair ran one "
        "after the other, in alternating order; a ratio is the median of the rounds' ratios) and are the figures "
        "to read. Medians of "
        f"{args.repeat} runs (the runs column), OMP_NUM_THREADS=1 on both sides; nbclient skips the rfc3987_syntax import as the "
        "grader does, and the grader's own packages are compiled to bytecode first, as an installed grader's are "
        "(see the script's docstring). Peak memory: PSS summed over the whole process tree, polled "
        "every 0.1 s, median of the runs' peaks.",
        "",
        "| exercise | solution: `grade submit` | nbclient, same notebook | ratio (≤ 1.1×) | stub: `grade submit` "
        "| floor: nbclient, `import torch` | ratio (≤ 1.5×) | peak memory, grading the solution | "
        "peak memory, nbclient | scores: solution, stub | runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    met = {"solution": 0, "stub": 0}
    for name in names:
        r = runs[name]
        sol, nbc, stub, floor = (median(r[k]) for k in ("solution", "nbclient", "stub", "floor"))
        # Paired: the median of each round's ratio (the two sides of a pair ran under the same load).
        ratio_sol = statistics.median(a["wall"] / b["wall"] for a, b in zip(r["solution"], r["nbclient"]))
        ratio_stub = statistics.median(a["wall"] / b["wall"] for a, b in zip(r["stub"], r["floor"]))
        met["solution"] += ratio_sol <= 1.1
        met["stub"] += ratio_stub <= 1.5
        seen = {kind: "/".join(sorted({format(x["score"], "g") for x in r[kind]})) for kind in ("solution", "stub")}
        scores = f"{seen['solution']} of {r['solution'][0]['max']:g}, {seen['stub']}"
        lines.append(f"| {name} | {sol:.2f} s | {nbc:.2f} s | {ratio_sol:.2f}× {'✓' if ratio_sol <= 1.1 else '✗'} "
                     f"| {stub:.2f} s | {floor:.2f} s | {ratio_stub:.2f}× {'✓' if ratio_stub <= 1.5 else '✗'} "
                     f"| {median(r['solution'], 'peak_mib'):.0f} MiB | {median(r['nbclient'], 'peak_mib'):.0f} MiB "
                     f"| {scores} | {len(r['stub'])} |")
    lines += ["", f"Targets met: solution ≤ 1.1× nbclient for {met['solution']} of {len(names)} exercises; "
                  f"stub ≤ 1.5× the floor for {met['stub']} of {len(names)}.", "",
              "| fast path | wall time (median of ≥ 5) | target < 0.5 s |", "| --- | ---: | --- |"]
    for label, wall in fast.items():
        lines.append(f"| `{label}` | {wall:.3f} s | {'✓' if wall < 0.5 else '✗'} |")
    if batch:
        ratio = batch["ratio"]
        rounds_text = "; ".join(f"{r['wall']:.1f} s, {r['per_submission_per_core']:.2f} s per submission per core "
                                f"against {r['single']:.2f} s ({r['brackets'][0]:.2f} s before, {r['brackets'][1]:.2f} s "
                                f"after): {r['ratio']:.2f}×" for r in batch["runs"])
        lines += ["", f"`grade batch` of {args.batch_copies} copies of the {args.batch_exercise} solution on "
                      f"{args.jobs} jobs, {len(batch['runs'])} rounds, each bracketed by one `grade submit` of it just "
                      f"before and one just after (their mean is the yardstick; wall × jobs / copies is the cost per "
                      f"submission per core; no memory polling in these runs): {rounds_text}. Median ratio "
                      f"**{ratio:.2f}×** (target ≤ 0.6×: {'met' if ratio <= 0.6 else 'not met'}); peak memory of the "
                      f"batch's tree (one more run, polled) {batch['peak_mib']:.0f} MiB; {batch['graded']} of "
                      f"{args.batch_copies} graded in every round (worst exit {batch['rc']})."]
        if "cold" in batch:
            cold = batch["cold"]
            lines += ["", f"The same batch with every kernel started cold (`GRADER_ZYGOTE=0`, no zygote), then one "
                          f"`grade submit`: {cold['wall']:.1f} s, {cold['per_submission_per_core']:.2f} s per submission "
                          f"per core against {cold['single']:.2f} s: {cold['per_submission_per_core'] / cold['single']:.2f}×; "
                          f"{cold['graded']} of {args.batch_copies} graded."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from grader.exercises import exercise_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--exercises", nargs="*", default=None)
    parser.add_argument("--batch-exercise", default="q_sampler")
    parser.add_argument("--batch-copies", type=int, default=20)
    parser.add_argument("--batch-rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--batch-cold", action="store_true", help="also the batch with every kernel cold (GRADER_ZYGOTE=0)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.md")
    args = parser.parse_args()
    names = args.exercises or [n for n in exercise_names() if (ROOT / "solutions" / n / f"{n}.ipynb").is_file()
                               and (ROOT / "exercises" / n / f"{n}.ipynb").is_file()]
    for package in ("grader", "reference"):  # bytecode, as an installed grader has (see the module's docstring)
        compileall.compile_dir(ROOT / package, quiet=1)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as folder:
        scratch = Path(folder)
        fast = measure_fast_paths(args.repeat, scratch)
        print("fast paths:", {k: round(v, 3) for k, v in fast.items()}, flush=True)
        batch = None
        if not args.no_batch:  # first: twenty gradings, the figure the batch work needs
            batch = measure_batch(args.batch_exercise, args.batch_copies, args.jobs, scratch, args.batch_cold,
                                  args.batch_rounds)
            print(f"batch: median ratio {batch['ratio']:.2f}x", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)

        def write(runs, rounds):
            done = [n for n in names if runs[n]["solution"]]
            text = table(done, runs, fast, batch, args, (load_start, os.getloadavg()[0]), rounds)
            args.out.write_text(text, encoding="utf-8")
            return text

        runs = measure_exercises(names, args.repeat, scratch, write)
    print(write(runs, args.repeat))


if __name__ == "__main__":
    main()
