"""Write what grading found: results.json, report.html, the executed notebook, a terminal summary.

The HTML report is rendered only through an autoescaped jinja2 template: every
string that comes from a submission (messages, tracebacks, outputs) is escaped.
Plots are inlined as base64 PNG, so the report is one self-contained file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import jinja2
import nbformat

from grader.errors import GraderError
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


def _open_folder(out: Path) -> int:
    """A descriptor of the feedback folder, made if missing; refused if it is a link or not a folder."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise GraderError(f"cannot write the feedback into {out}: it is not a plain folder ({exc.strerror})") from None


def _atomic_write(folder: int, name: str, data: str) -> None:
    """Write ``name`` in the folder ``folder`` (a descriptor) via a new temporary file and a rename.

    A reader never sees half a file, and nothing at ``name`` is followed or opened: a link or a
    FIFO placed there is replaced, not written through. The temporary file is made with O_EXCL
    and O_NOFOLLOW, under a random name.
    """
    tmp = f".{name}.{secrets.token_hex(8)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder)
        except OSError:
            pass
        raise


def write_outputs(result: GradingResult, notebook: nbformat.NotebookNode, out: Path) -> dict[str, Path]:
    """Write results.json, report.html and ``<notebook>.executed.ipynb`` into ``out``, atomically.

    Called once the kernel and everything it started are gone, so that what is written is final.
    """
    stem = Path(result.notebook).stem
    names = {"results": "results.json", "report": "report.html", "notebook": f"{stem}.executed.ipynb"}
    if (out / names["notebook"]).resolve() == Path(result.notebook).resolve():  # never overwrite the submission
        names["notebook"] = f"{stem}.graded.executed.ipynb"
    contents = {
        "results": json.dumps(result.to_gradescope(), indent=2, ensure_ascii=False) + "\n",
        "report": render_html(result),
        "notebook": nbformat.writes(notebook),
    }
    folder = _open_folder(out)
    try:
        for key, name in names.items():
            _atomic_write(folder, name, contents[key])
    finally:
        os.close(folder)
    return {key: out / name for key, name in names.items()}


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
