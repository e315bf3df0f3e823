"""grade submit end to end, through the sandboxed kernel: solution, stub, a bug, reproducibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from grader.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _submission(tmp_path: Path, source: str, edit=None) -> Path:
    folder = tmp_path / "q_sampler"
    folder.mkdir(parents=True)
    nb = nbformat.read(ROOT / source / "q_sampler" / "q_sampler.ipynb", as_version=4)
    if edit is not None:
        edit(nb)
    nbformat.write(nb, folder / "q_sampler.ipynb")
    return folder


def _grade(folder: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    status = main(["submit", str(folder), "--json", *extra])
    out = capsys.readouterr().out
    results = json.loads((folder / "feedback" / "results.json").read_text())
    assert json.loads(out) == results  # --json prints exactly what results.json holds
    return status, results, out


@pytest.fixture(scope="module")
def solution_results(tmp_path_factory):
    folder = _submission(tmp_path_factory.mktemp("solution"), "solutions")
    status = main(["submit", str(folder), "--json"])
    return status, folder, json.loads((folder / "feedback" / "results.json").read_text())


def test_solution_gets_full_marks(solution_results):
    """Does the instructors' solution get every point and exit 0?"""
    status, _, results = solution_results
    failed = [(t["name"], t["output"]) for t in results["tests"] if t["status"] != "passed"]
    assert not failed
    assert status == 0
    assert results["score"] == results["extra_data"]["max_score"] > 0


def test_results_follow_the_gradescope_schema(solution_results):
    """Does results.json carry every field grading.md promises?"""
    _, folder, results = solution_results
    assert {"score", "execution_time", "output", "visibility", "tests", "extra_data"} <= results.keys()
    assert {"exercise", "max_score", "seed", "grader_version", "device"} <= results["extra_data"].keys()
    numbers = [t["number"] for t in results["tests"]]
    assert len(set(numbers)) == len(numbers)
    for test in results["tests"]:
        assert {"name", "number", "score", "max_score", "status", "output", "tags", "visibility", "extra_data"} <= test.keys()
        assert test["status"] in ("passed", "failed")
        assert test["extra_data"]["exercise"] == "q_sampler"
        assert test["extra_data"]["kind"] in ("execution", "property", "statistical", "structure")
        assert "function" in test["extra_data"]
    kinds = {t["extra_data"]["kind"] for t in results["tests"]}
    assert kinds == {"execution", "property", "statistical", "structure"}
    feedback = folder / "feedback"
    assert (feedback / "report.html").read_text().startswith("<!DOCTYPE html>")
    executed = nbformat.read(feedback / "q_sampler.executed.ipynb", as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code")


def test_stub_gets_zero_and_says_not_implemented(tmp_path, capsys):
    """Does the generated student notebook get 0, exit 1, and a 'not implemented' message per function?"""
    folder = _submission(tmp_path, "exercises")
    status, results, _ = _grade(folder, capsys)
    assert status == 1
    assert results["score"] == 0
    graded = [t for t in results["tests"] if t["max_score"] > 0]
    assert graded and all(t["status"] == "failed" for t in graded)
    for test in graded:
        function = test["extra_data"]["function"]
        assert f"{function} is not implemented yet" in test["output"], test["output"]


def _break_q_sample(nb: nbformat.NotebookNode) -> None:
    """The classic one-based slip: alphas_cumprod[t - 1]."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "def q_sample(" in cell.source:
            body_start = cell.source.index("### BEGIN SOLUTION")
            cell.source = cell.source[:body_start] + (
                "### BEGIN SOLUTION\n"
                "    if noise is None:\n        noise = torch.randn_like(x0)\n"
                "    a = alphas_cumprod[t - 1].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))\n"
                "    return a.sqrt() * x0 + (1 - a).sqrt() * noise\n"
                "    ### END SOLUTION\n")
            return
    raise AssertionError("no q_sample cell")


def test_a_bug_is_named_and_grading_is_reproducible(tmp_path, capsys):
    """Is an off-by-one in q_sample reported on q_sample only, identically on two runs with the same seed?"""
    folder = _submission(tmp_path, "solutions", _break_q_sample)
    status, first, _ = _grade(folder, capsys, "--seed", "7")
    shutil.rmtree(folder / "feedback")
    _, second, _ = _grade(folder, capsys, "--seed", "7")
    assert status == 1
    failed = [t for t in first["tests"] if t["status"] == "failed"]
    assert failed and {t["extra_data"]["function"] for t in failed} <= {"q_sample", None}
    values = next(t for t in failed if t["name"] == "q_sample: matches the reference")
    assert "ᾱ_{t−1}" in values["output"]  # the diagnosis names the mistake
    for results in (first, second):
        results.pop("execution_time")
    assert first == second
