"""Write what grading found: results.json, report.html, the executed notebook, a terminal summary.

The HTML report is rendered only through an autoescaped jinja2 template: every
string that comes from a submission (messages, tracebacks, outputs) is escaped.
Formulas become MathML (``$…$`` in feedback through latex2mathml, and names such
as ``β̃_0`` or ``ᾱ_{t−1}``), built as element trees from an allowlist and
serialised by :mod:`xml.etree`, so that no markup of a submission's passes through.
Plots are inlined as base64 PNG, so the report is one self-contained file with no
script and no URL. What the report embeds is capped (a flood of output stays
under 2 MB); results.json keeps the grader's own caps.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import nbformat
from markupsafe import Markup, escape

from grader.errors import GraderError
from grader.results import GradingResult, TestResult

__all__ = ["cell_names", "math_markup", "render_html", "terminal_summary", "write_outputs"]

#: Caps on what the report embeds (results.json keeps the grader's own caps of 10,000 characters
#: per output and 20,000 per test's details). With at most ~60 tests in an exercise, 3,000 characters
#: of output and 3,000 of traceback per test, 20 notebook errors of 3,000 characters, and plots of
#: at most 200,000 base64 characters up to 1,000,000 in all, a report stays well under 2 MB
#: (measured by test_report_under_a_flood).
REPORT_OUTPUT_CHARS, REPORT_TRACEBACK_CHARS = 3_000, 3_000
REPORT_ERRORS, REPORT_ERROR_CHARS = 20, 3_000
PLOT_CHARS, PLOTS_CHARS = 200_000, 1_000_000

_MATHML_TAGS = {"math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup", "msubsup", "mfrac",
                "msqrt", "mroot", "mover", "munder", "munderover", "mstyle", "mtable", "mtr", "mtd", "mpadded",
                "mphantom", "menclose", "semantics", "annotation"}
_MATHML_ATTRIBUTES = {"display", "stretchy", "mathvariant", "fence", "separator", "lspace", "rspace", "accent",
                      "accentunder", "movablelimits", "width", "height", "depth", "columnalign", "rowalign",
                      "displaystyle", "scriptlevel", "linethickness", "notation", "symmetric", "largeop",
                      "minsize", "maxsize", "form", "encoding", "columnspacing", "rowspacing", "columnlines",
                      "rowlines", "frame", "voffset"}
_MATHML_NS = "http://www.w3.org/1998/Math/MathML"  # what latex2mathml declares; dropped on output


def _allowed(element: ET.Element) -> bool:
    """Whether a tree holds only MathML presentation elements with plain attributes."""
    for node in element.iter():
        tag = node.tag.rpartition("}")[2] if isinstance(node.tag, str) else ""
        if tag not in _MATHML_TAGS or not (node.tag == tag or node.tag == f"{{{_MATHML_NS}}}{tag}"):
            return False
        if any(key not in _MATHML_ATTRIBUTES or "url" in value.lower() or ":" in value
               for key, value in node.attrib.items()):
            return False
    return True


def _serialise(element: ET.Element) -> Markup:
    """A checked tree as HTML5 MathML: no namespace (HTML knows ``<math>``), so the page holds no URL."""
    for node in element.iter():
        node.tag = node.tag.rpartition("}")[2]
        node.attrib.pop("xmlns", None)
    return Markup(ET.tostring(element, encoding="unicode", short_empty_elements=False))


def latex_mathml(latex: str) -> Markup | None:
    """``latex`` as a MathML ``<math>`` element, or None when it does not convert to plain MathML.

    latex2mathml copies ``\\text{…}`` through unescaped, so its output is parsed and checked
    against an allowlist of elements and attributes, then serialised afresh (text escaped).
    """
    from latex2mathml.converter import convert

    try:
        tree = ET.fromstring(convert(latex))
    except Exception:  # noqa: BLE001 -- unparsable LaTeX or markup that is not XML: shown as text
        return None
    return _serialise(tree) if _allowed(tree) else None


_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789−")
_ACCENTS = {"\u0303": "~", "\u0304": "¯", "\u0305": "¯", "\u0302": "^", "\u0307": "˙"}
#: A symbol with a subscript in the grader's own words: a Greek letter, maybe accented (β̃, ᾱ), ``_``,
#: a subscript of up to 4 letters/digits (σ_next) or a braced one (``ᾱ_{t−1}``); or a Latin letter
#: standing alone with a one-letter, numeric or braced subscript (x_t, x_0), so that no identifier
#: (``q_step``, ``x_in``) is one; then maybe a Unicode superscript (σ_i²).
_SYMBOL = re.compile(r"(?<![\w\u0300-\u036f])(?:([\u0370-\u03ff\u1f00-\u1fff][\u0300-\u036f]*)_"
                     r"(\{[^{}\s]{1,12}\}|[A-Za-z0-9\u0370-\u03ff]{1,4})"
                     r"|([A-Za-z][\u0300-\u036f]*)_(\{[^{}\s]{1,12}\}|[A-Za-z\u0370-\u03ff]|[0-9]{1,3}))"
                     r"([⁰¹²³⁴⁵⁶⁷⁸⁹⁻]*)(?![\w\u0300-\u036f])")


def _element(tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    node = ET.Element(tag, attributes)
    node.text = text
    return node


def _tokens(text: str) -> ET.Element:
    """A subscript or superscript as a row of mi (letters), mn (numbers) and mo (the rest)."""
    row = _element("mrow")
    for piece in re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+|.", text):
        tag = "mn" if piece[0].isdigit() else "mi" if piece.isalpha() else "mo"
        row.append(_element(tag, piece))
    return row


def _symbol(match: re.Match) -> ET.Element:
    greek, greek_sub, latin, latin_sub, sup = match.groups()
    base, sub = (greek, greek_sub) if greek else (latin, latin_sub)
    letters = unicodedata.normalize("NFD", base)
    core = _element("mi", letters[0])
    for mark in letters[1:]:
        accented = _element("mover", accent="true")
        accented.extend([core, _element("mo", _ACCENTS.get(mark, mark), stretchy="false")])
        core = accented
    sub = sub[1:-1] if sub.startswith("{") else sub
    node = _element("msubsup" if sup else "msub")
    node.extend([core, _tokens(sub)] + ([_tokens(sup.translate(_SUPERSCRIPTS))] if sup else []))
    wrapper = _element("math")
    wrapper.append(node)
    return wrapper


def math_markup(text: str, *, symbols: bool = True) -> Markup:
    """``text`` escaped, with each ``$…$`` as MathML and (``symbols``) each ``β̃_0``-like symbol too."""
    out: list[str] = []
    for index, piece in enumerate(re.split(r"(?<!\\)\$([^$\n]{1,400})(?<!\\)\$", text)):
        if index % 2:
            mathml = latex_mathml(piece)
            out.append(str(mathml) if mathml is not None else str(escape(f"${piece}$")))
            continue
        position = 0
        for match in (_SYMBOL.finditer(piece) if symbols else ()):
            out.append(str(escape(piece[position:match.start()])))
            out.append(str(_serialise(_symbol(match))))
            position = match.end()
        out.append(str(escape(piece[position:])))
    return Markup("".join(out))


_TWO_CALLS = ("Two calls with the same inputs should draw independent noise. A correlation means they share "
              "something: reused noise or a fixed seed, or an error in the mean, such as a wrong coefficient "
              "of x₀: both calls get the same x₀, so the same error shows in both and correlates them, even "
              "when the z of the mean is fine (x₀ is centred). Check the mean's formula first.")

#: What each statistic of the statistical checks measures, and what a value outside its range
#: usually means, in a student's words (matched on the start of the statistic's name).
_MEANINGS = [
    ("z of the mean", "The average of your output, standardised against the exact law, should be close to 0; "
                      "outside the range, the mean of what your code returns is off (a wrong coefficient, "
                      "e.g. ᾱ_t where √ᾱ_t belongs, or a missing or extra term)."),
    ("mean of squared residuals", "The spread of your output against the exact standard deviation should be "
                                  "close to 1; above the range there is too much noise (a variance used where "
                                  "its square root belongs, or a wrong mean), below it too little."),
    ("mean square", "The spread of your output against the exact standard deviation should be close to 1; "
                    "above the range there is too much noise or a wrong mean, below it too little."),
    ("correlation between two calls", _TWO_CALLS),
    ("correlation between the two calls", _TWO_CALLS),
    ("correlation between coordinates", "Coordinates of one sample should get independent noise; a correlation "
                                        "means one noise value is shared across coordinates (e.g. a noise "
                                        "tensor of the wrong shape broadcast), or a wrong mean."),
    ("correlation between batch elements", "Each element of a batch should get its own noise; a correlation "
                                           "means one noise draw is shared across the batch (e.g. noise of "
                                           "shape (1, …) broadcast), or the same wrong mean in each element."),
]


def meaning(name: str) -> str:
    """A sentence on what a statistic outside its range means."""
    for prefix, sentence in _MEANINGS:
        if name.startswith(prefix):
            return sentence
    return ("This statistic of your output is outside the range a correct implementation lands in "
            "(with the probability stated below): its law differs from the exact one in this respect.")


def cell_names(notebook: nbformat.NotebookNode | None) -> tuple[dict[int, str], dict[int, int]]:
    """How the report names cells: ``{position: "cell 7 (import torch)"}`` (1-based positions in the
    notebook, as the execution test's text names them) and ``{execution count: position}``."""
    names: dict[int, str] = {}
    by_count: dict[int, int] = {}
    for index, cell in enumerate((notebook or {}).get("cells", [])):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        lines = source.strip().splitlines()
        first = lines[0][:70] if lines else ""
        names[index + 1] = f"cell {index + 1} ({first!r})" if first else f"cell {index + 1}"
        count = cell.get("execution_count")
        if cell.get("cell_type") == "code" and isinstance(count, int):
            by_count[count] = index + 1
    return names, by_count


def _renamed(text: str, by_count: dict[int, int]) -> str:
    """IPython's ``Cell In[7]`` / ``In[7]`` as the notebook position the report uses (``cell 9``)."""
    def position(match: re.Match) -> str:
        count = int(match.group(1))
        return f"cell {by_count[count]}" if count in by_count else match.group(0)
    return re.sub(r"(?:Cell )?In ?\[(\d+)\]", position, text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit:,} more characters in results.json]"


def _notebook_errors(notebook, names: dict[int, str], by_count: dict[int, int]) -> list[dict]:
    """The executed notebook's errors, cell by cell: what the student's code raised (cleaned, capped)."""
    from grader.sandbox import wire

    errors = []
    for index, cell in enumerate((notebook or {}).get("cells", [])):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") != "error" or len(errors) >= REPORT_ERRORS:
                continue
            trace = output.get("traceback") or []
            trace = "\n".join(trace) if isinstance(trace, list) else str(trace)
            head = f"{output.get('ename', '')}: {output.get('evalue', '')}"
            errors.append({"cell": names.get(index + 1, f"cell {index + 1}"),  # cleaned of escapes, then renamed
                           "error": _renamed(wire.clean_text(head, 500), by_count),
                           "traceback": _renamed(wire.clean_text(trace, REPORT_ERROR_CHARS, keep="tail"), by_count)})
    return errors


def _stub_message(function: str, tests: list[TestResult]) -> str | None:
    """One line for a function every test of which found it not implemented; None otherwise."""
    marker = f"{function} is not implemented yet"
    scored = [t for t in tests if t.max_score > 0]  # a 0-point test (it is defined) may pass
    if scored and all(not t.passed and t.output.startswith(marker) for t in scored):
        points = sum(t.max_score for t in scored)
        return (f"{marker}: its {len(scored)} test{'s' if len(scored) > 1 else ''} ({points:g} points) "
                f"will run once it returns a value.")
    return None


def _function_of(test: TestResult) -> str:
    """The function a test belongs to: its own, else its name's prefix ("q_sample: defined …"), else the notebook."""
    if test.function:
        return test.function
    prefix = test.name.split(":", 1)[0]
    return prefix if ":" in test.name and prefix.isidentifier() else "the notebook"


def _grouped(tests: list[TestResult]) -> dict[str, list[TestResult]]:
    groups: dict[str, list[TestResult]] = {}
    for test in tests:
        groups.setdefault(_function_of(test), []).append(test)
    return groups


def _prepared(test: TestResult, by_count: dict[int, int], plots: list[int]) -> dict:
    """What the template shows of a test: capped texts, failing statistics first with their meaning."""
    details = test.details
    stats = [dict(s, meaning=meaning(s["name"]) if not s.get("passed") else "")
             for s in details.get("statistics") or [] if isinstance(s, dict)]
    stats.sort(key=lambda s: bool(s.get("passed")))
    plot = details.get("plot")
    if callable(getattr(plot, "png", None)):  # a ResidualPlot: drawn here, in the report step only
        plot = plot.png()
    if not isinstance(plot, str) or len(plot) > PLOT_CHARS or plots[0] + len(plot) > PLOTS_CHARS:
        plot = None if not plot else ""  # "": there was one, too large to embed
    else:
        plots[0] += len(plot)
    text = lambda key, limit: _cut(_renamed(str(details[key]), by_count), limit) if details.get(key) else ""  # noqa: E731
    return {"t": test, "output": _cut(_renamed(test.output, by_count), REPORT_OUTPUT_CHARS),
            "input": text("input", REPORT_OUTPUT_CHARS), "expected": text("expected", REPORT_OUTPUT_CHARS),
            "got": text("got", REPORT_OUTPUT_CHARS), "traceback": text("traceback", REPORT_TRACEBACK_CHARS),
            "statistics": stats, "plot": plot}


def render_html(result: GradingResult, notebook: nbformat.NotebookNode | None = None) -> str:
    """The report: a section per function (failures first, passing tests folded, one line for a stub),
    the cells as the notebook shows them, and the notebook's errors."""
    names, by_count = cell_names(notebook)
    plots = [0]
    groups = _grouped(result.tests)
    sections = []
    for function, tests in groups.items():
        stub = _stub_message(function, tests)
        shown = [] if stub else [_prepared(t, by_count, plots) for t in tests]
        sections.append({"function": function, "id": "fn-" + re.sub(r"[^A-Za-z0-9_-]", "-", function),
                         "tests": tests, "stub": stub,
                         "failed": [p for p in shown if not p["t"].passed],
                         "passed": [p for p in shown if p["t"].passed],
                         "score": sum(t.score for t in tests), "max_score": sum(t.max_score for t in tests)})
    cells = [{**c, "name": names.get(c.get("cell"), f"cell {c.get('cell')}"),
              "error": _renamed(str(c.get("error") or ""), by_count)} for c in result.cells]
    return _ENV.get_template("report.html.j2").render(
        result=result, sections=sections, cells=cells, errors=_notebook_errors(notebook, names, by_count))


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("grader", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["math"] = math_markup  # names and feedback: `$…$` and symbols such as β̃_0 as MathML


def warm() -> None:
    """Load the report step's lazy parts now: the compiled template, latex2mathml, matplotlib's Agg
    canvas and its font (:func:`grader.submit.warm_report` calls this in the background)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _ENV.get_template("report.html.j2")
    latex_mathml(r"\bar\alpha_t")
    figure = Figure(figsize=(1, 1), dpi=10)
    FigureCanvasAgg(figure)
    figure.add_subplot().set_title("x")
    figure.canvas.draw()


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
        "report": render_html(result, notebook),
        "notebook": nbformat.writes(notebook),
    }
    folder = _open_folder(out)
    try:
        for key, name in names.items():
            _atomic_write(folder, name, contents[key])
    finally:
        os.close(folder)
    return {key: out / name for key, name in names.items()}


#: Lines of a failing test's input the terminal shows (the whole input is in the report).
TERMINAL_INPUT_LINES = 12


def _statistic_line(s: dict) -> str:
    verdict = "within" if s.get("passed") else "outside"
    try:
        return (f"{s['name']} = {s['value']:.4g}, {verdict} [{s['low']:.4g}, {s['high']:.4g}] "
                f"(n = {s['n']:,}, p = {s['p_value']:.2g})")
    except (KeyError, TypeError, ValueError):
        return str(s.get("name", "a statistic")) + f": {verdict} its range"


def terminal_summary(result: GradingResult, *, verbose: bool = False, quiet: bool = False) -> str:
    """What ``grade submit`` prints: one line per test; for a failure its first line, the smallest
    failing input and each failing statistic; one line per function not implemented yet; the total.

    ``quiet``: the total alone, one line. Every line is cleaned of escape and control characters.
    """
    from grader.sandbox import wire

    def clean(text: str) -> str:
        return wire.clean_text(text, 2_000)

    if quiet:
        return clean(result.summary()).replace("\n", " ")
    lines = [f"Grading {result.notebook} ({result.exercise}, seed {result.seed}, {result.device})"]
    groups = _grouped(result.tests)
    stubs = {f: _stub_message(f, tests) for f, tests in groups.items()}
    announced = set()
    for test in result.tests:
        function = _function_of(test)
        if stubs.get(function):
            if function not in announced:
                announced.add(function)
                lines.append(f"  FAIL {'0/' + format(sum(t.max_score for t in groups[function]), 'g'):>7}  "
                             f"{stubs[function]}")
            continue
        mark = "PASS" if test.passed else "FAIL"
        points = f"{test.score:g}/{test.max_score:g}" if test.max_score else "   "
        lines.append(f"  {mark} {points:>7}  {test.name}")
        if test.passed:
            continue
        body = test.output.splitlines()
        if not verbose:
            statistics = [s for s in test.details.get("statistics") or [] if isinstance(s, dict)]
            if test.kind == "execution":  # the cells that failed
                body = body[:7] + ([f"  ... ({len(body) - 7} more in the report)"] if len(body) > 7 else [])
            else:  # the first line and the hint; the input and the statistics follow
                body = body[:1] + [line for line in body[1:] if line.startswith("Hint:")][:2]
            inputs = str(test.details.get("input") or "").splitlines()
            if inputs:
                body.append("smallest failing input:" if test.kind == "property" else "input:")
                body.extend(inputs[:TERMINAL_INPUT_LINES])
                if len(inputs) > TERMINAL_INPUT_LINES:
                    body.append(f"  ... ({len(inputs) - TERMINAL_INPUT_LINES} more lines in the report)")
            body.extend(_statistic_line(s) for s in statistics if not s.get("passed"))
        lines.extend(f"                 {line}" for line in body)
    lines.append(result.summary())
    return "\n".join(clean(line) for line in lines)
