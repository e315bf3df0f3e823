"""Write what grading found: results.json, report.html, the executed notebook, a terminal summary.

The HTML report is rendered only through an autoescaped jinja2 template: every
string that comes from a submission (messages, tracebacks, outputs) is escaped.
Plots are inlined as base64 PNG, so the report is one self-contained file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jinja2
import nbformat

from grader.results import GradingResult

__all__ = ["render_html", "terminal_summary", "write_outputs"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("grader", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(result: GradingResult) -> str:
    by_function: dict[str, list] = {}
    for test in result.tests:
        by_function.setdefault(test.function or "notebook", []).append(test)
    return _ENV.get_template("report.html.j2").render(result=result, by_function=by_function)


def _atomic_write(path: Path, data: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def write_outputs(result: GradingResult, notebook: nbformat.NotebookNode, out: Path) -> dict[str, Path]:
    """Write results.json, report.html and ``<notebook>.executed.ipynb`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(result.notebook).stem
    paths = {
        "results": out / "results.json",
        "report": out / "report.html",
        "notebook": out / f"{stem}.executed.ipynb",
    }
    if paths["notebook"].resolve() == Path(result.notebook).resolve():  # never overwrite the submission
        paths["notebook"] = out / f"{stem}.graded.executed.ipynb"
    _atomic_write(paths["results"], json.dumps(result.to_gradescope(), indent=2, ensure_ascii=False) + "\n")
    _atomic_write(paths["report"], render_html(result))
    _atomic_write(paths["notebook"], nbformat.writes(notebook))
    return paths


def terminal_summary(result: GradingResult, *, verbose: bool = False) -> str:
    """What ``grade submit`` prints: one line per test, the failures' first lines, the total."""
    lines = [f"Grading {result.notebook} ({result.exercise}, seed {result.seed}, {result.device})"]
    for test in result.tests:
        mark = "PASS" if test.passed else "FAIL"
        points = f"{test.score:g}/{test.max_score:g}" if test.max_score else "   "
        lines.append(f"  {mark} {points:>7}  {test.name}")
        if not test.passed:
            body = test.output.splitlines() if verbose else test.output.splitlines()[:2]
            lines.extend(f"                 {line}" for line in body)
    lines.append(result.summary())
    return "\n".join(lines)
