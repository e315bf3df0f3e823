"""``grade export gradescope EXERCISE --out autograder.zip``: an autograder Gradescope runs as is.

The zip holds, at its root (Gradescope's autograder specification):

* ``setup.sh`` — run once when Gradescope builds the image: installs the pinned
  CPU torch and this grader (``grader-src/``, a copy of the installable project);
* ``run_autograder`` — run per submission: grades ``/autograder/submission/*.ipynb``
  into ``/autograder/results/results.json`` (``run_gradescope.py`` does the work);
* ``gradescope.json`` — the exercise, the budgets and the visibility settings.

The root ``/autograder`` is overridable with ``GRADE_AUTOGRADER_ROOT``, so that a
test can run the autograder in a temporary folder.

Time: Gradescope kills a run at its timeout (10 minutes by default) and then shows
no score at all. The grader's own budget (``--timeout``) is set below it, with
room for Python, the kernel's start and writing the results; and a grader that
overruns even that is stopped by ``run_gradescope.py``, which then writes a
results.json that says so — a global timeout is never a silent 0.
"""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

from grader.exercises import load_exercise
from grader.export import grader_sources, torch_requirement

__all__ = ["GRADESCOPE_TIMEOUT", "RUNNER", "write_autograder"]

#: Gradescope's default autograder timeout, in seconds (its settings allow more).
GRADESCOPE_TIMEOUT = 600.0
#: Seconds kept free below Gradescope's timeout: Python and torch imports (≈ 10 s at one CPU under load),
#: the kernel's start (≈ 5 s), the interrupt grace and kernel kill (3 s + 5 s), writing the report, and a
#: margin for a slower machine — about 4x what was measured (see tests/instructors/test_gradescope.py).
RESERVED = 90.0
#: After its budget, the grader gets this long to finish on its own before it is killed.
GRACE = 30.0

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder's image.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y --no-install-recommends python3 python3-pip
fi
python3 -m pip install --no-cache-dir {torch} --index-url https://download.pytorch.org/whl/cpu
python3 -m pip install --no-cache-dir ./grader-src
python3 -c "import grader, torch; print('grader', grader.__version__, 'torch', torch.__version__)"
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission (as /autograder/run_autograder).
ROOT="${GRADE_AUTOGRADER_ROOT:-/autograder}"
exec python3 "$ROOT/source/run_gradescope.py"
"""

RUNNER = '''"""Grade /autograder/submission/*.ipynb into /autograder/results/results.json (written by grade export)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("GRADE_AUTOGRADER_ROOT", "/autograder"))
CONFIG = json.loads((ROOT / "source" / "gradescope.json").read_text())


def finish(results, note=""):
    """Apply Gradescope's display settings and write results.json."""
    results["visibility"] = CONFIG["visibility"]
    results["stdout_visibility"] = CONFIG["stdout_visibility"]
    results["output_format"] = results["test_output_format"] = results["test_name_format"] = "text"
    if note:
        results["output"] = (results.get("output", "") + "\\n" + note).strip()
    for test in results.get("tests", []):
        test["visibility"] = CONFIG["test_visibility"]
        test["output_format"] = test["name_format"] = "text"
    out = ROOT / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(results.get("output", ""))


def failure(message):
    """A submission the grader could not grade: 0 points, and the reason in plain words."""
    finish({"score": 0.0, "output": message, "tests": [{
        "name": "the notebook could be graded", "score": 0.0, "max_score": CONFIG["max_score"],
        "status": "failed", "output": message}], "extra_data": {"exercise": CONFIG["exercise"], "error": message}})


def main():
    exercise = CONFIG["exercise"]
    notebooks = sorted(p for p in (ROOT / "submission").rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in p.parts and not p.name.endswith(".executed.ipynb"))
    if not notebooks:
        return failure(f"No notebook was submitted: upload your {exercise}.ipynb.")
    named = [p for p in notebooks if p.name == f"{exercise}.ipynb"]
    notebook = (named or notebooks)[0]
    note = "" if len(notebooks) == 1 else f"{len(notebooks)} notebooks were submitted; {notebook.name} was graded."
    feedback = ROOT / "results" / "feedback"
    command = [sys.executable, "-m", "grader", "submit", str(notebook), "--out", str(feedback), "--exercise",
               exercise, "--timeout", str(CONFIG["budget"]), "--device", "cpu", *CONFIG["options"]]
    started = time.monotonic()
    print("grader:", importlib.util.find_spec("grader").origin)
    print("grading", notebook, "with", " ".join(command), flush=True)
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=CONFIG["budget"] + CONFIG["grace"])
    except subprocess.TimeoutExpired:
        return failure(f"Grading was stopped after {time.monotonic() - started:.0f} s, past the autograder's "
                       f"budget of {CONFIG['budget']:.0f} s (Gradescope's timeout is {CONFIG['timeout']:.0f} s): "
                       "no score could be given. Look for a cell or a function that runs for very long, "
                       "and submit again; if it persists, tell the course staff.")
    sys.stdout.write(done.stdout[-5000:])
    sys.stderr.write(done.stderr[-5000:])
    if done.returncode not in (0, 1):
        lines = [line for line in done.stderr.splitlines() if line.startswith("grade:")]
        return failure(lines[-1].replace("grade: error: ", "") if lines else
                       f"The grader failed (exit status {done.returncode}); please tell the course staff.")
    try:
        results = json.loads((feedback / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return failure(f"The grader's results could not be read ({type(exc).__name__}); please tell the course staff.")
    finish(results, note)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # never end without a results.json: Gradescope would show no score and no reason
        failure(f"The autograder failed ({type(exc).__name__}: {exc}); please tell the course staff.")
        raise
'''


def config(exercise: str, *, timeout: float = GRADESCOPE_TIMEOUT, visibility: str = "visible",
           test_visibility: str = "visible", stdout_visibility: str = "hidden", options: tuple[str, ...] = ()) -> dict:
    spec = load_exercise(exercise)  # unknown: UnknownExercise (exit 2) with the known ones
    max_score = sum(t.points for check in spec.all_checks() for t in check.tests())
    budget = timeout - RESERVED - GRACE
    if budget < 60:
        raise ValueError(f"a Gradescope timeout of {timeout:g} s leaves {budget:g} s to grade; give at least "
                         f"{60 + RESERVED + GRACE:g} s")
    return {"exercise": exercise, "timeout": timeout, "budget": budget, "grace": GRACE, "max_score": max_score,
            "visibility": visibility, "test_visibility": test_visibility, "stdout_visibility": stdout_visibility,
            "options": list(options)}


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # fixed: the same zip every time
    info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def write_autograder(exercise: str, out: Path, **options) -> Path:
    """Write Gradescope's autograder zip for ``exercise`` to ``out``; its path."""
    settings = config(exercise, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        _add(archive, "setup.sh", SETUP.format(torch=torch_requirement()).encode(), executable=True)
        _add(archive, "run_autograder", RUN.encode(), executable=True)
        _add(archive, "run_gradescope.py", RUNNER.encode())
        _add(archive, "gradescope.json", (json.dumps(settings, indent=2) + "\n").encode())
        for file, name in grader_sources():
            _add(archive, f"grader-src/{name}", file.read_bytes())
    return out
