"""What the zygote's throwaway figure (``grader.sandbox.figures.warm``) saves each forked kernel.

Two kinds of parent process, run in alternating groups: each imports torch and pyplot (Agg), one of
them also calls ``figures.warm()``; each forks ``--children`` children in turn, and each child runs the
code cells of a solution notebook (``check(...)`` calls made no-ops, every figure shown as the inline
backend shows it: a PNG cropped to its tight bounding box) and exits. A child's CPU (user + system,
from the parent's ``RUSAGE_CHILDREN``) is the figure; the script prints both kinds' means, their
difference with its standard error, and what the warm-up cost the parent.

Usage: python benchmarks/bench_figures_warm.py [--exercise q_sampler] [--groups 6] [--children 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "agg"}

#: One parent: argv = notebook, warm|cold, children. Prints a JSON line: the warm-up's CPU, each child's CPU.
PARENT = r"""
import io, json, os, resource, sys, time
import torch
import matplotlib.pyplot as plt
from grader.sandbox import figures

notebook, mode, children = sys.argv[1], sys.argv[2], int(sys.argv[3])
cells = ["".join(c["source"]) for c in json.load(open(notebook))["cells"] if c["cell_type"] == "code"]
started = time.process_time()
if mode == "warm":
    figures.warm()
warm_cpu = time.process_time() - started

def show(*args, **kwargs):
    for number in plt.get_fignums():
        plt.figure(number).canvas.print_figure(io.BytesIO(), format="png", bbox_inches="tight")
    plt.close("all")

def child():
    sys.stdout = open(os.devnull, "w")
    plt.show = show
    namespace = {"__name__": "__main__"}
    for source in cells:
        exec(compile(source.replace("from grader import check", "check = lambda f: None"), "cell", "exec"), namespace)
    os._exit(0)

spent = []
for _ in range(children):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        child()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a child failed"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
print(json.dumps({"warm_cpu": warm_cpu, "children": spent}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exercise", default="q_sampler")
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--children", type=int, default=5)
    args = parser.parse_args()
    notebook = ROOT / "solutions" / args.exercise / f"{args.exercise}.ipynb"
    if not notebook.is_file():
        parser.error(f"no solution notebook {notebook.relative_to(ROOT)}")
    runs: dict[str, list[float]] = {"cold": [], "warm": []}
    warm_costs = []
    for group in range(args.groups):
        for mode in ("cold", "warm") if group % 2 == 0 else ("warm", "cold"):
            done = subprocess.run([sys.executable, "-c", PARENT, str(notebook), mode, str(args.children)],
                                  capture_output=True, text=True, env=ENV, cwd=notebook.parent, timeout=900)
            if done.returncode != 0:
                sys.exit(f"a {mode} parent failed: {done.stderr[-2000:]}")
            result = json.loads(done.stdout.splitlines()[-1])
            runs[mode].extend(result["children"])
            if mode == "warm":
                warm_costs.append(result["warm_cpu"])
    cold, warm = runs["cold"], runs["warm"]
    se = (statistics.variance(cold) / len(cold) + statistics.variance(warm) / len(warm)) ** 0.5
    print(f"{args.exercise}: {len(cold)} children of each kind, CPU of one child: cold {statistics.mean(cold):.3f} s "
          f"(sd {statistics.stdev(cold):.3f}), warm {statistics.mean(warm):.3f} s (sd {statistics.stdev(warm):.3f}); "
          f"saved {statistics.mean(cold) - statistics.mean(warm):.3f} ± {se:.3f} s a child, for "
          f"{statistics.median(warm_costs):.3f} s once in the parent (median)")


if __name__ == "__main__":
    main()
