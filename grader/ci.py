"""What ``grade submit --ci`` tells GitHub Actions and GitHub Classroom.

* the job summary: markdown appended to the file named by ``$GITHUB_STEP_SUMMARY``;
* an error annotation per failed test: the ``::error title=…::…`` workflow command
  on standard output, escaped by GitHub's rules (``%``, CR and LF in the message;
  also ``:`` and ``,`` in a property);
* the autograding result GitHub Classroom's reporter
  (``classroom-resources/autograding-grading-reporter``) reads: base64 of a JSON
  object ``{"version": 1, "status": "pass"|"fail"|"error", "max_score", "tests":
  [{"name", "status", "score", "message", …}]}`` — the format the
  ``education/autograding-*`` actions write — as the step output ``result``, a
  ``result=…`` line appended to ``$GITHUB_OUTPUT``. The reporter reads it from
  ``$<RUNNER>_RESULTS`` (see the workflow :mod:`grader.export.github` writes).

Everything a submission wrote (exception messages, printed values) reaches these
only escaped: a message cannot end an annotation and start a workflow command of
its own, nor close a code block in the summary and fake a verdict.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from grader.results import GradingResult

__all__ = ["annotation", "classroom_result", "escape_data", "escape_property", "neutralise", "step_summary",
           "write_github"]

#: GitHub shows at most 10 error annotations per step; more are dropped silently, so we say so ourselves.
MAX_ANNOTATIONS = 10
#: A job summary may hold 1 MiB per step; a test's feedback is capped well below that.
MAX_FEEDBACK_CHARS = 4000


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF escaped (GitHub's ``escapeData``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: also ``:`` and ``,`` (GitHub's ``escapeProperty``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(title: str, message: str, file: str | None = None) -> str:
    """``::error file=…,title=…::message``: one line, whatever the text holds."""
    properties = ([f"file={escape_property(file)}"] if file else []) + [f"title={escape_property(title)}"]
    return f"::error {','.join(properties)}::{escape_data(message)}"


def neutralise(line: str) -> str:
    """A log line that GitHub cannot take for a workflow command (those start with ``::``)."""
    return re.sub(r"^(\s*)::", r"\1: :", line)


def _fence(text: str) -> str:
    """A markdown code block that ``text`` cannot close: a fence longer than any run of backticks in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _cell(text: str) -> str:
    """A markdown table cell: one line, pipes and markup escaped."""
    flat = " ".join(text.split())
    return re.sub(r"([\\|*_`<>\[\]#])", r"\\\1", flat)


def step_summary(result: GradingResult, passed: bool) -> str:
    """The job summary: the total, one table row per test, the failures' feedback in code blocks."""
    verdict = "✅ passed" if passed else "❌ not passed"
    lines = [f"## {_cell(result.exercise)}: {result.score:g} / {result.max_score:g} points — {verdict}", "",
             "| | test | points |", "| --- | --- | --- |"]
    for test in result.tests:
        mark = "✅" if test.passed else "❌"
        points = f"{test.score:g} / {test.max_score:g}" if test.max_score else "—"
        lines.append(f"| {mark} | {_cell(test.name)} | {points} |")
    failed = [t for t in result.tests if not t.passed]
    if failed:
        lines += ["", "### What failed", ""]
        for test in failed:
            feedback = test.output if len(test.output) <= MAX_FEEDBACK_CHARS else \
                test.output[:MAX_FEEDBACK_CHARS] + "\n… (cut; the whole feedback is in report.html)"
            lines += [f"<details><summary>{_cell(test.name)}</summary>", "", _fence(feedback), "", "</details>", ""]
    lines += ["", f"Seed {result.seed}, grader {_cell(result.version)}, {_cell(result.device)}. "
                  "The full report is the job's `feedback` artifact (report.html).", ""]
    return "\n".join(lines)


def classroom_result(result: GradingResult | None, passed: bool, *, error: str = "",
                     max_score: float = 0.0) -> dict:
    """The autograding result, version 1, as GitHub Classroom's reporter reads it (before base64)."""
    if result is None:
        return {"version": 1, "status": "error", "max_score": max_score,
                "tests": [{"name": "the notebook could be graded", "status": "error", "score": 0,
                           "message": error, "test_code": "", "filename": "", "line_no": 0, "execution_time": 0}]}
    tests = [{"name": t.name, "status": "pass" if t.passed else "fail", "score": t.score, "max_score": t.max_score,
              "message": t.output[:MAX_FEEDBACK_CHARS], "test_code": "", "filename": "", "line_no": 0,
              "execution_time": 0} for t in result.tests if t.max_score > 0 or not t.passed]
    return {"version": 1, "status": "pass" if passed else "fail", "max_score": result.max_score, "tests": tests}


def encode_result(payload: dict) -> str:
    return base64.b64encode(json.dumps(payload, ensure_ascii=False).encode("utf-8")).decode("ascii")


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def write_github(result: GradingResult | None, passed: bool, *, env: Mapping[str, str] | None = None,
                 notebook: Path | None = None, error: str = "", max_score: float = 0.0, emit=print) -> None:
    """Write whatever GitHub's variables ask for: the summary, the annotations, the Classroom result."""
    env = os.environ if env is None else env
    summary = env.get("GITHUB_STEP_SUMMARY")
    output = env.get("GITHUB_OUTPUT")
    payload = classroom_result(result, passed, error=error, max_score=max_score)
    if output:
        score = result.score if result is not None else 0
        top = result.max_score if result is not None else max_score
        _append(output, f"result={encode_result(payload)}\nscore={score:g}\nmax-score={top:g}\n")
    if summary:
        text = step_summary(result, passed) if result is not None else \
            f"## The notebook could not be graded\n\n{_fence(error)}\n"
        _append(summary, text)
    if env.get("GITHUB_ACTIONS") == "true":
        file = None
        if notebook is not None:
            try:
                file = str(notebook.resolve().relative_to(Path(env.get("GITHUB_WORKSPACE") or os.getcwd()).resolve()))
            except ValueError:
                file = None
        if result is None:
            emit(annotation("the notebook could not be graded", error, file))
            return
        failed = [t for t in result.tests if not t.passed and t.max_score > 0]
        for test in failed[:MAX_ANNOTATIONS]:
            emit(annotation(f"{test.name} (0 / {test.max_score:g})", test.output[:MAX_FEEDBACK_CHARS], file))
        if len(failed) > MAX_ANNOTATIONS:
            emit(annotation(f"{len(failed) - MAX_ANNOTATIONS} more failed tests",
                            "GitHub shows 10 annotations per step: see the job summary for every test", file))
