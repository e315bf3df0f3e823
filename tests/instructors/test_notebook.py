"""Students: the `notebook` extra (JupyterLab) opens the exercises.

The README's one command installs ``.[notebook]`` and runs ``jupyter lab
exercises/q_sampler/q_sampler.ipynb``. These tests need JupyterLab in this
environment (CI installs the extra); without it they are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _jupyter() -> str:
    candidate = Path(sys.executable).parent / "jupyter"
    path = str(candidate) if candidate.exists() else shutil.which("jupyter")
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        pytest.skip("JupyterLab is not installed here: pip install -e '.[notebook]' (CI installs it)")
    return path


def test_every_exercise_names_the_kernel_the_extra_provides():
    """Does each generated notebook ask for the python3 kernel (ipykernel's, a dependency of the grader)?"""
    for path in sorted((ROOT / "exercises").glob("*/*.ipynb")):
        kernelspec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
        assert kernelspec.get("name", "python3") == "python3", path


@pytest.mark.slow
def test_jupyter_lab_version():
    """Does the extra's `jupyter lab --version` work (JupyterLab 4)?"""
    done = subprocess.run([_jupyter(), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"4\.\d+\.\d+\S*", done.stdout.strip()), done.stdout


@pytest.mark.slow
def test_jupyter_lab_serves_the_first_exercise(tmp_path):
    """Started as the README says (without a browser), does JupyterLab serve exercises/q_sampler/q_sampler.ipynb?"""
    shutil.copytree(ROOT / "exercises", tmp_path / "exercises")
    with socket.socket() as probe:  # a free port, so that the test knows where to ask
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [_jupyter(), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=course", f"--ServerApp.root_dir={tmp_path}",
               "exercises/q_sampler/q_sampler.ipynb"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root; JupyterLab refuses that unless told
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents/exercises/q_sampler/q_sampler.ipynb",
                                         headers={"Authorization": "token course"})
        model, deadline = None, time.monotonic() + 180  # JupyterLab starts in seconds; 8 test runs share 2 cores
        while model is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    model = json.loads(response.read())
            except OSError:  # not listening yet
                time.sleep(0.5)
        assert model is not None, "JupyterLab did not serve the notebook"
        assert model["type"] == "notebook" and model["content"]["metadata"]["grader"]["exercise"] == "q_sampler"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
