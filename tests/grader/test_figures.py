"""The zygote's throwaway figure (:func:`grader.sandbox.figures.warm`) changes nothing a notebook can see.

Each forked kernel of a ``grade batch`` slot inherits the zygote's matplotlib caches (font lookups, the
mathtext parser, Pillow's PNG writer) filled by one figure drawn there, and none of its fonts' open
files. A notebook's figures must still be the bytes a cold kernel draws, its settings the same, and
pyplot as untouched (no figure, no backend chosen yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: A notebook's figure, drawn as the inline backend draws it (a PNG cropped to its tight bounding box), after
#: pyplot's import and with or without the warm-up first; what a notebook could see of matplotlib's state.
_SCRIPT = r"""
import hashlib, io, json, os, sys
import matplotlib
import matplotlib.pyplot as plt
from grader.sandbox import figures

def state():
    files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    return {"rc": repr(sorted(dict(matplotlib.rcParams).items())), "figures": plt.get_fignums(),
            "backend": matplotlib.rcParams._get_backend_or_none(), "backend_module": plt._backend_mod is not None,
            "font_files_open": sorted(f for f in files if f.endswith((".ttf", ".otf", ".afm")))}

before = state()
if sys.argv[1] == "warm":
    figures.warm()
after = state()
fig, (a, b) = plt.subplots(1, 2, figsize=(6, 2.5))
a.plot([0, 1, 2], [2, 0, 1], label=r"$\sqrt{\bar\alpha_t}\,x_0$")
a.scatter([0, 1, 2], [1, 2, 0], s=4, c=[0, 1, 2], cmap="coolwarm")
a.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"$\log\,\mathrm{SNR}(t)$, $t = 1$")
a.legend()
b.imshow([[0.0, 0.5], [1.0, 0.25]], cmap="gray")
b.set_title("signal kept", fontsize=8)
fig.tight_layout()
png = io.BytesIO()
fig.canvas.print_figure(png, format="png", bbox_inches="tight")
print(json.dumps({"before": before, "after": after, "png": hashlib.sha256(png.getvalue()).hexdigest()}))
"""


def _run(mode: str) -> dict:
    env = {**os.environ, "MPLBACKEND": "agg"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_warmed_process_draws_the_bytes_a_cold_one_draws():
    """Same settings, no pyplot figure, no backend module chosen and no font file left open by the warm-up (a
    forked kernel closes the descriptors it inherits: a font kept would read through a closed one), and the same
    PNG bytes for a figure with text, mathtext (some of it the warm-up's own strings), a legend, a scatter and an
    image. Seen failing with a setting changed, a pyplot figure made, and the fonts not dropped."""
    cold, warm = _run("cold"), _run("warm")
    assert warm["after"] == warm["before"] == cold["before"]
    assert warm["after"]["figures"] == [] and not warm["after"]["backend_module"]
    assert warm["png"] == cold["png"]
