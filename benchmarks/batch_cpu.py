"""Where a ``grade batch``'s CPU goes: each process of its tree by role, fixed costs apart from per-submission ones.

``bench_speed.py`` times the batch against one ``grade submit`` (wall time per submission per core,
target ≤ 0.6×). This script says what that wall time is made of, so that a change aimed at the batch
can be judged by the CPU it removes rather than by a wall time that drifts by a third between runs:

* each process of the tree, polled every ``--interval`` s (``/proc/PID/stat``: user + system time
  and its parent; its command line; once, whether it is PID 1 of a PID namespace), is given a role:
  the ``grade batch`` parent, a slot (``grader.batch --slot``, or ``grader.sandbox.launch --slot``
  started pristine), a slot's zygote (the first ``grader.sandbox.launch --zygote`` the slot starts,
  or a pristine slot's own fork, with the slot's command line), a kernel forked from it (the same
  command line, PID 1 of its own namespace, re-parented to the slot), a kernel started cold (PID 1 of its
  namespace, launched by ``grader.sandbox.launch``), or a process in between (the zygote's
  intermediate, the shim that waits on a kernel outside its namespace);
* the CPU the polls missed (what a process spent after its last poll) is the difference between
  their sum and what the kernel's own accounting says the whole tree used (``wait4``'s resource
  usage of the batch, which counts every descendant reaped below it); it is printed, not spread;
* two batch sizes, ``--copies`` and ``--small``, separate each role's fixed cost from its cost per
  submission by a straight line through the two totals (cost = fixed + copies × per submission),
  each the median of ``--rounds`` rounds (small batches are the noisier: use the split for the
  roles that cost the most);
* one ``grade submit`` of the same solution, polled the same way: its wall time (the batch's
  yardstick), its CPU, and its grader's and kernel's shares.

Polling reads a few small files of each process of the tree and nothing else (no ``smaps``), and
its own CPU is printed. Every process runs with ``OMP_NUM_THREADS=1``, and the grader's packages are
compiled to bytecode first, as ``bench_speed.py`` does (its docstring says why).

Usage: python benchmarks/batch_cpu.py [--exercise q_sampler] [--copies 20] [--small 4] [--jobs 2]
       [--rounds 3] [--interval 0.05] [--out FILE]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import ENV, GRADE, ROOT, _tree, solution_copies  # noqa: E402 -- the same environment and console script

TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("parent", "slots", "zygotes", "kernels (forked)", "kernels (cold)", "intermediates", "grader", "other")


def _stat(pid: int) -> tuple[int, float, int] | None:
    """``(parent, CPU seconds, start time in ticks)`` of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _namespaced(pid: int) -> bool:
    """Is ``pid`` PID 1 of a PID namespace of its own (as a sandboxed kernel is)?"""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return line.split()[-1] == b"1" and len(line.split()) > 2
    except OSError:
        pass
    return False


def polled(command: list[str], interval: float) -> dict:
    """Run ``command``, polling its tree; its wall time, exact tree CPU, and CPU by process."""
    started = time.perf_counter()
    poller_before = time.process_time()
    errors = tempfile.TemporaryFile()  # a file, not a pipe: nothing reads it before the end, and a full pipe blocks
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=errors)
    seen: dict[tuple[int, int], dict] = {}
    while True:
        for pid in _tree(proc.pid):
            stat = _stat(pid)
            if stat is None:
                continue
            parent, cpu, start = stat
            entry = seen.get((pid, start))
            if entry is None:
                entry = seen[(pid, start)] = {"pid": pid, "start": start, "namespaced": _namespaced(pid), "cmd": ""}
            # read again each time: a process seen between its fork and its exec shows its parent's, or none
            entry["cmd"] = _cmdline(pid) or entry["cmd"]
            entry["parent"], entry["cpu"] = parent, cpu
        # wait4 reaps it and gives its rusage: its own CPU and that of every descendant reaped below it
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(interval)
    wall = time.perf_counter() - started
    errors.seek(0)
    stderr = errors.read().decode(errors="replace")
    errors.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "tree_cpu": usage.ru_utime + usage.ru_stime, "rc": proc.returncode, "stderr": stderr[-2000:],
            "root": proc.pid, "processes": list(seen.values()), "poller_cpu": time.process_time() - poller_before}


def _forked(cmd: str) -> bool:
    """A zygote's command line, which its kernels keep: a zygote started cold, or a pristine slot's."""
    return "grader.sandbox.launch --zygote" in cmd or "grader.sandbox.launch --slot" in cmd


def roles(run: dict) -> dict[str, float]:
    """CPU seconds by role, and the CPU the polls missed."""
    # A slot is the batch's child: ``grader.batch --slot`` or, started pristine, ``grader.sandbox.launch --slot``.
    slots = {p["pid"] for p in run["processes"] if " --slot" in p["cmd"] and p["parent"] == run["root"]}
    # A slot's zygote is the first process of its command line (``--zygote``, or a pristine slot's own, forked) the
    # slot starts; the kernels forked from it keep the command line (so do the shims that wait on them, outside
    # their namespace), and are started later.
    first: dict[int, tuple[int, int]] = {}
    for p in run["processes"]:
        if _forked(p["cmd"]) and p["parent"] in slots and not p["namespaced"]:
            first[p["parent"]] = min(first.get(p["parent"], (p["start"], p["pid"])), (p["start"], p["pid"]))
    zygotes = {pid for _, pid in first.values()}
    totals = dict.fromkeys(ROLES, 0.0)
    for p in run["processes"]:
        if p["pid"] == run["root"]:
            role = "grader" if " submit " in f" {p['cmd']} " else "parent"
        elif p["pid"] in slots:
            role = "slots"
        elif p["pid"] in zygotes:
            role = "zygotes"
        elif "grader.sandbox.launch" in p["cmd"]:  # a kernel is PID 1 of its namespace; the rest wait or fork
            kind = "kernels (forked)" if _forked(p["cmd"]) else "kernels (cold)"
            role = kind if p["namespaced"] else "intermediates"
        else:
            role = "other"
        totals[role] += p["cpu"]
    totals["missed by the polls"] = run["tree_cpu"] - sum(totals.values())
    return totals


def batch(name: str, copies: int, jobs: int, scratch: Path, interval: float) -> dict:
    submissions = solution_copies(name, copies, scratch / f"copies{copies}")
    run = polled([str(GRADE), "batch", str(submissions), "--out", str(scratch / f"out{copies}"), "--jobs", str(jobs),
                  "--exercise", name, "--progress", "lines"], interval)
    graded = len(list((scratch / f"out{copies}").glob("*/results.json")))
    if run["rc"] != 0 or graded != copies:
        sys.exit(f"grade batch of {copies} copies ended with {run['rc']} ({graded} graded): {run['stderr']}")
    return run


def submit(name: str, scratch: Path, interval: float) -> dict:
    work = Path(tempfile.mkdtemp(dir=scratch)) / name
    shutil.copytree(ROOT / "solutions" / name, work, ignore=shutil.ignore_patterns("feedback", "*.executed.ipynb"))
    run = polled([str(GRADE), "submit", str(work), "--out", str(work.parent / "feedback"), "--quiet"], interval)
    if run["rc"] != 0:
        sys.exit(f"grade submit ended with {run['rc']}: {run['stderr']}")
    return run


def summary(runs: list[dict]) -> dict:
    """The medians over rounds: each role's CPU, the whole tree's, the wall time, the poller's CPU."""
    by_role = [roles(r) for r in runs]
    return {"roles": {k: statistics.median(r[k] for r in by_role) for k in by_role[0]},
            **{k: statistics.median(r[k] for r in runs) for k in ("wall", "tree_cpu", "poller_cpu")}}


def table(args, big: dict, small: dict, single: dict, ratios: list[float]) -> str:
    n, m, cores = args.copies, args.small, args.jobs
    lines = [
        "# Where a batch's CPU goes", "",
        f"`python benchmarks/batch_cpu.py --exercise {args.exercise} --copies {n} --small {m} --jobs {cores} "
        f"--rounds {args.rounds} --interval {args.interval}`", "",
        f"Machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}. Each round: one `grade submit` of the "
        f"{args.exercise} solution, then `grade batch` of {n} copies of it and of {m} copies, on {cores} jobs. Each "
        "process's CPU (user + system) polled from /proc and summed by role; the medians of the rounds; each role's "
        "fixed cost and cost per submission from the straight line through its two medians.", "",
        f"| role | {n} copies | {m} copies | fixed | per submission |", "| --- | ---: | ---: | ---: | ---: |"]
    for role in (*ROLES, "missed by the polls"):
        a, b = big["roles"][role], small["roles"][role]
        if role == "grader" or (a == 0 and b == 0):
            continue
        per = (a - b) / (n - m)
        lines.append(f"| {role} | {a:.2f} s | {b:.2f} s | {a - n * per:.2f} s | {per:.3f} s |")
    a, b = big["tree_cpu"], small["tree_cpu"]
    per = (a - b) / (n - m)
    lines.append(f"| **whole tree** (wait4) | {a:.2f} s | {b:.2f} s | {a - n * per:.2f} s | {per:.3f} s |")
    kernel = single["roles"]["kernels (cold)"]
    lines += ["",
              f"Wall time: {big['wall']:.1f} s for {n} copies ({big['wall'] * cores / n:.2f} s per submission per "
              f"core; the tree used {big['tree_cpu'] / (big['wall'] * cores):.0%} of {cores} cores), "
              f"{small['wall']:.1f} s for {m}. The poller's own CPU: {big['poller_cpu']:.2f} s and "
              f"{small['poller_cpu']:.2f} s.", "",
              f"`grade submit` of it: {single['wall']:.2f} s wall, {single['tree_cpu']:.2f} s of CPU (its grader "
              f"{single['roles']['grader']:.2f} s, its kernel {kernel:.2f} s). The batch of {n}: "
              f"{big['tree_cpu'] / n:.2f} s of CPU a submission, {big['tree_cpu'] / n / single['tree_cpu']:.2f}× a "
              f"`grade submit`'s; wall time per submission per core against that round's `grade submit`: "
              + ", ".join(f"{r:.2f}×" for r in ratios) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exercise", default="q_sampler")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--small", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 0 < args.small < args.copies:
        parser.error("--small must be between 0 and --copies")
    if not (ROOT / "solutions" / args.exercise / f"{args.exercise}.ipynb").is_file():
        parser.error(f"no solution notebook solutions/{args.exercise}/{args.exercise}.ipynb")
    for package in ("grader", "reference"):
        compileall.compile_dir(ROOT / package, quiet=1)
    singles, bigs, smalls = [], [], []
    with tempfile.TemporaryDirectory(prefix="batch-cpu-") as folder:
        for k in range(args.rounds):
            scratch = Path(folder) / f"round{k}"
            scratch.mkdir()
            singles.append(submit(args.exercise, scratch, args.interval))
            bigs.append(batch(args.exercise, args.copies, args.jobs, scratch, args.interval))
            smalls.append(batch(args.exercise, args.small, args.jobs, scratch, args.interval))
            print(f"round {k + 1}: grade submit {singles[-1]['wall']:.2f} s, batch of {args.copies} "
                  f"{bigs[-1]['wall']:.1f} s ({bigs[-1]['tree_cpu']:.1f} s CPU), of {args.small} "
                  f"{smalls[-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    ratios = [b["wall"] * args.jobs / args.copies / s["wall"] for b, s in zip(bigs, singles)]
    text = table(args, summary(bigs), summary(smalls), summary(singles), ratios)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
