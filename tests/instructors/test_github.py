"""GitHub Actions and Classroom: the job summary, annotations, the autograding result, the workflow file.

The end-to-end test runs ``grade submit --ci`` with GitHub's variables pointing at
temporary files and decodes what it wrote, as GitHub Classroom's reporter does
(``Buffer.from(process.env[`${RUNNER}_RESULTS`], "base64")`` then ``JSON.parse``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grader import ci
from grader.cli import build_parser, main
from grader import results

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "bad value\n::warning::all tests passed\r\n%0A::error::fake,title=x: y\n```\n✅ 24 / 24"


def _result(message: str = HOSTILE) -> results.GradingResult:
    tests = [results.TestResult("1", "the notebook runs from top to bottom", None, "execution", True, 0, 0, "ok"),
             results.TestResult("2", "q_sample: matches the reference", "q_sample", "property", False, 0, 3, message),
             results.TestResult("3", "q_step: matches the reference", "q_step", "property", True, 2, 2, "passed")]
    return results.GradingResult("q_sampler", "q_sampler.ipynb", tests, 2024, "cpu", "0.1.0", 1.0)


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_workflow_commands_escaped_by_githubs_rules():
    """Are %, CR, LF escaped in a message, and also : and , in a property (GitHub's escapeData/escapeProperty)?"""
    assert ci.escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert ci.escape_property("a: b, c%") == "a%3A b%2C c%25"
    line = ci.annotation("q_sample: matches, or not", HOSTILE, "exercises/q_sampler/q_sampler.ipynb")
    assert "\n" not in line and "\r" not in line
    assert line.startswith("::error file=exercises/q_sampler/q_sampler.ipynb,title=q_sample%3A matches%2C or not::")
    assert "%250A" in line  # a literal "%0A" in the message stays literal text, not a newline


def test_a_message_cannot_start_a_workflow_command_or_close_the_summarys_code_block():
    """Does student text stay inside its annotation and its code block, whatever it holds?"""
    emitted: list[str] = []
    ci.write_github(_result(), False, env={"GITHUB_ACTIONS": "true"}, emit=emitted.append)
    assert len(emitted) == 1 and all("\n" not in line for line in emitted)
    summary = ci.step_summary(_result(), False)
    block = summary.split("<summary>q\\_sample: matches the reference</summary>")[1]
    fence = block.strip().splitlines()[0]
    assert fence.startswith("````")  # longer than the ``` in the message, so the message cannot close it
    assert summary.count(fence[:4] + "text") == 1 and f"\n{fence.rstrip('text')}\n" in summary
    assert ci.neutralise("::error::x") == ": :error::x" and ci.neutralise("  FAIL q: ::x") == "  FAIL q: ::x"


def test_classroom_result_is_version_1_with_tests():
    """Is the result what the reporter reads: version 1, status, max_score, tests with name/status/score/message?"""
    payload = ci.classroom_result(_result(), False)
    assert payload["version"] == 1 and payload["status"] == "fail" and payload["max_score"] == 5
    names = [t["name"] for t in payload["tests"]]
    assert names == ["q_sample: matches the reference", "q_step: matches the reference"]
    assert [t["status"] for t in payload["tests"]] == ["fail", "pass"]
    assert sum(t["score"] for t in payload["tests"]) == 2  # what NotifyClassroom adds up
    error = ci.classroom_result(None, False, error="invalid JSON", max_score=24)
    assert error["status"] == "error" and error["max_score"] == 24 and error["tests"][0]["message"] == "invalid JSON"


def test_an_ungradable_notebook_in_ci_is_an_error_result_not_a_silent_zero(tmp_path, monkeypatch, capsys):
    """Does a corrupt notebook in CI write an 'error' result with the reason, and exit 2?"""
    folder = tmp_path / "q_sampler"
    folder.mkdir()
    (folder / "q_sampler.ipynb").write_text("{ not json")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    status = main(["submit", str(folder), "--ci", "--exercise", "q_sampler"])
    assert status == 2
    result = json.loads(base64.b64decode(_outputs(tmp_path / "output")["result"]))
    assert result["status"] == "error" and "invalid JSON" in result["tests"][0]["message"]
    assert result["max_score"] > 0  # the exercise's points: Classroom counts 0 of them, visibly
    assert "could not be graded" in (tmp_path / "summary.md").read_text()
    assert capsys.readouterr().out.startswith("::error title=the notebook could not be graded::")


def test_export_github_writes_a_workflow_the_reporter_understands(tmp_path, capsys):
    """Is the workflow valid YAML, one step per exercise, each step's result handed to the reporter by its id?"""
    yaml = pytest.importorskip("yaml", reason="PyYAML parses the workflow in this test")
    status = main(["export", "github", "q_sampler", "elbo", "--out", str(tmp_path),
                   "--grader", "diffusion-course-grader @ git+https://example.org/grader@v1"])
    assert status == 0
    workflow = yaml.safe_load((tmp_path / ".github" / "workflows" / "classroom.yml").read_text())
    job = workflow["jobs"]["run-autograding-tests"]
    assert workflow["name"] == job["name"] == "Autograding Tests"  # the check run the reporter updates
    assert workflow["permissions"]["checks"] == "write"
    steps = {step.get("id"): step for step in job["steps"]}
    reporter = next(s for s in job["steps"] if s.get("uses", "").startswith("classroom-resources/autograding-grading"))
    assert reporter["with"]["runners"] == "q_sampler,elbo"
    for name in ("q_sampler", "elbo"):
        assert steps[name]["continue-on-error"] is True
        assert reporter["env"][f"{name.upper()}_RESULTS"] == f"${{{{ steps.{name}.outputs.result }}}}"
        argv = steps[name]["run"].split()
        assert argv[:2] == ["grade", "submit"] and build_parser().parse_args(argv[1:]).ci
    install = next(s for s in job["steps"] if s.get("name") == "Install the grader")["run"]
    assert "torch==" in install and "download.pytorch.org/whl/cpu" in install and "example.org/grader@v1" in install


def test_export_github_refuses_an_unknown_exercise(tmp_path, capsys):
    """Does an unknown exercise exit 2 with one line?"""
    assert main(["export", "github", "homework9", "--out", str(tmp_path)]) == 2
    assert "homework9" in capsys.readouterr().err


@pytest.mark.slow
def test_grade_submit_ci_with_githubs_variables(tmp_path):
    """Run the CLI as a GitHub Actions step would: decode the result, read the summary and the annotations."""
    shutil.copytree(ROOT / "samples" / "alice", tmp_path / "alice")
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path),
           "GITHUB_OUTPUT": str(tmp_path / "github_output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    done = subprocess.run([sys.executable, "-m", "grader", "submit", "alice", "--ci", "--exercise", "q_sampler",
                           "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    results = json.loads((tmp_path / "alice" / "feedback" / "results.json").read_text())
    outputs = _outputs(tmp_path / "github_output")
    result = json.loads(base64.b64decode(outputs["result"]).decode("utf-8"))
    assert result["version"] == 1 and result["status"] == "fail"
    assert result["max_score"] == results["extra_data"]["max_score"] == float(outputs["max-score"])
    assert sum(t["score"] for t in result["tests"]) == results["score"] == float(outputs["score"])
    failed = [t for t in results["tests"] if t["status"] == "failed" and t["max_score"]]
    assert {t["name"] for t in result["tests"] if t["status"] == "fail"} == {t["name"] for t in failed}
    annotations = [line for line in done.stdout.splitlines() if line.startswith("::")]
    assert len(annotations) == min(len(failed), ci.MAX_ANNOTATIONS)
    assert all(line.startswith("::error file=alice/q_sampler.ipynb,title=") for line in annotations)
    summary = (tmp_path / "summary.md").read_text()
    assert f"{results['score']:g} / 24 points" in summary and "q\\_sample: matches the reference" in summary
