"""Gradescope: the autograder zip, run as Gradescope runs it, in a temporary /autograder.

The end-to-end tests extract the zip into ``ROOT/source`` as Gradescope does, put a
notebook in ``ROOT/submission``, and run ``ROOT/source/run_autograder`` with
``GRADE_AUTOGRADER_ROOT=ROOT``. The grader is imported from the zip's own copy
(``grader-src`` on PYTHONPATH, the libraries from this environment), so the test
shows that what the zip carries grades. They also measure what Gradescope's
default container (768 MB, one CPU) must hold: the peak memory of the whole process
tree and the wall time, pinned to one CPU with ``taskset -c 0`` where it exists.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
import zipfile
from pathlib import Path

import pytest

from grader.cli import main
from grader.export.gradescope import GRACE, GRADESCOPE_TIMEOUT, RESERVED

from ._tree import run_measured

ROOT = Path(__file__).resolve().parents[2]
#: Gradescope's default container: 768 MB of memory (its documentation's default for autograders).
GRADESCOPE_MEMORY = 768 * 1024**2


def _export(tmp_path: Path, *extra: str) -> Path:
    zip_path = tmp_path / "autograder.zip"
    assert main(["export", "gradescope", "q_sampler", "--out", str(zip_path), *extra]) == 0
    return zip_path


def test_the_zip_has_setup_and_run_autograder_at_its_root(tmp_path, capsys):
    """Are setup.sh and run_autograder at the root, executable, and does setup install the pinned CPU torch?"""
    with zipfile.ZipFile(_export(tmp_path, "--visibility", "after_due_date")) as archive:
        names = archive.namelist()
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
        setup = archive.read("setup.sh").decode()
        config = json.loads(archive.read("gradescope.json"))
    assert {"setup.sh", "run_autograder", "run_gradescope.py", "gradescope.json"} <= set(names)
    assert modes["setup.sh"] & stat.S_IXUSR and modes["run_autograder"] & stat.S_IXUSR
    import torch

    assert f"torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "pip install --no-cache-dir ./grader-src" in setup
    assert "grader-src/grader/cli.py" in names and "grader-src/reference/q_sampler.py" in names
    assert "grader-src/pyproject.toml" in names
    assert not [n for n in names if "solutions/" in n or "__pycache__" in n or n.startswith("grader-src/tests")]
    assert config["exercise"] == "q_sampler" and config["visibility"] == "after_due_date"
    assert config["budget"] == GRADESCOPE_TIMEOUT - RESERVED - GRACE  # the grader stops well before Gradescope


def test_unknown_exercise_and_too_short_a_timeout(tmp_path, capsys):
    """Do an unknown exercise and a timeout that leaves no time to grade exit 2 with one line?"""
    assert main(["export", "gradescope", "homework9", "--out", str(tmp_path / "a.zip")]) == 2
    assert main(["export", "gradescope", "q_sampler", "--out", str(tmp_path / "a.zip"),
                 "--gradescope-timeout", "100"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "homework9" in err[0] and "at least" in err[1]


def _autograder(tmp_path: Path, zip_path: Path, notebook: Path | None) -> Path:
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(root / "source")
    for name in ("run_autograder", "setup.sh"):
        (root / "source" / name).chmod(0o755)  # zipfile does not restore modes; Gradescope does
    if notebook is not None:
        shutil.copy(notebook, root / "submission" / notebook.name)
    return root


def _run(root: Path) -> tuple:
    env = {**os.environ, "GRADE_AUTOGRADER_ROOT": str(root),
           "PYTHONPATH": str(root / "source" / "grader-src"),  # the zip's grader, not this checkout's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(root / "source" / "run_autograder")]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]  # Gradescope's default container has one CPU
    started = time.monotonic()
    done, peak = run_measured(command, env=env, cwd=root)
    return done, peak, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("notebook, full", [(ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb", True),
                                            (ROOT / "samples" / "alice" / "q_sampler.ipynb", False)])
def test_run_autograder_grades_a_submission_within_gradescopes_container(tmp_path, notebook, full):
    """Does run_autograder write a results.json Gradescope reads, within 768 MB for the whole tree, at one CPU?"""
    root = _autograder(tmp_path, _export(tmp_path, "--stdout-visibility", "visible"), notebook)
    done, peak, seconds = _run(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"grader: {root / 'source' / 'grader-src' / 'grader' / '__init__.py'}" in done.stdout  # the zip's copy
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["output_format"] == results["test_output_format"] == results["test_name_format"] == "text"
    assert results["visibility"] == "visible" and results["stdout_visibility"] == "visible"
    assert all(t["visibility"] == "visible" and t["name_format"] == "text" for t in results["tests"])
    assert (results["score"] == results["extra_data"]["max_score"]) == full and results["score"] > 0
    assert (root / "results" / "feedback" / "report.html").is_file()
    print(f"\n{notebook.parent.name}: {seconds:.1f} s at one CPU; peak of the whole tree "
          f"(up to {peak.processes} processes, {peak.samples} samples): PSS {peak.pss_bytes / 2**20:.0f} MiB, "
          f"RSS sum {peak.rss_bytes / 2**20:.0f} MiB (Gradescope default: 768 MB)")
    assert peak.samples > 10 and peak.processes >= 2  # the kernel was seen, not only the grader
    assert peak.pss_bytes < GRADESCOPE_MEMORY
    assert seconds < GRADESCOPE_TIMEOUT - RESERVED - GRACE


def test_no_notebook_is_said_in_results_json(tmp_path, capsys):
    """With nothing submitted, does run_autograder (no grader started) write a results.json that says so?"""
    root = _autograder(tmp_path, _export(tmp_path), None)
    done, _, _ = _run(root)
    results = json.loads((root / "results" / "results.json").read_text())
    assert done.returncode == 0 and results["score"] == 0 and "No notebook was submitted" in results["output"]
    assert results["tests"][0]["max_score"] == 24 and results["output_format"] == "text"


@pytest.mark.slow
def test_a_global_timeout_is_said_not_a_silent_zero(tmp_path):
    """With a grader stopped past the autograder's budget, does results.json say so in plain words?"""
    root = _autograder(tmp_path, _export(tmp_path), None)
    shutil.copy(ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb", root / "submission")
    config = json.loads((root / "source" / "gradescope.json").read_text())
    config.update(budget=0.5, grace=0.5)  # Python alone takes longer: the backstop fires
    (root / "source" / "gradescope.json").write_text(json.dumps(config))
    done, _, _ = _run(root)
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and "was stopped after" in results["output"]
    assert "Gradescope's timeout is 600 s" in results["output"] and results["tests"][0]["max_score"] == 24
