"""The report and the terminal summary, without a browser (tests/grader/test_report_browser.py has one).

A realistic result is built by hand (`sample_result`): a notebook whose third cell raised, a
property failure with its smallest input, a statistical failure whose mean and cross-call
correlation are off, a passing statistical test, and a function left as the stub.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib

import nbformat
import pytest

from grader.render import math_markup, render_html, terminal_summary
from grader.results import GradingResult
from grader.results import TestResult as Result


def tiny_png() -> str:
    """A valid 2×2 grey PNG as base64 (the browser test uses the grader's real plots)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80\x80" for _ in range(2))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def _stat(name: str, value: float, low: float, high: float, passed: bool) -> dict:
    return {"name": name, "value": value, "low": low, "high": high, "p_value": 1e-9 if not passed else 0.4,
            "alpha": 2e-7, "n": 65536, "derivation": "exact", "passed": passed}


def sample_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Forward process"),
                nbformat.v4.new_code_cell("import torch", execution_count=1),
                nbformat.v4.new_code_cell("x = 1 / 0\nprint(x)", execution_count=2, outputs=[nbformat.v4.new_output(
                    "error", ename="ZeroDivisionError", evalue="division by zero",
                    traceback=["\x1b[0;31m------\x1b[0m", "Cell \x1b[0;32mIn[2], line 1\x1b[0m",
                               "----> 1 x = 1 / 0", "ZeroDivisionError: division by zero"])])]
    return nb


def sample_result(plot: str | None = None, passing_plot: str | None = None) -> GradingResult:
    plot = plot or tiny_png()
    stub = [Result(str(n), f"q_posterior: test {n}", "q_posterior", "property", False, 0.0, 1.0,
                       "q_posterior is not implemented yet (it raises NotImplementedError) (on every input)")
            for n in range(6, 24)]
    tests = [
        Result("1", "the notebook runs from top to bottom", None, "execution", False, 0.0, 0.0,
                   "1 of 2 code cells failed; the grader ran the later cells anyway:\n"
                   "  cell 3 ('x = 1 / 0'): ZeroDivisionError: division by zero",
                   {"traceback": "Cell In[2], line 1\n----> 1 x = 1 / 0"}),
        Result("2", "q_sample: defined with the curriculum's signature", None, "structure", True, 0.0, 0.0,
                   "q_sample(x0, t, alphas_cumprod, noise)"),
        Result("3", "q_sample: matches the reference", "q_sample", "property", False, 0.0, 3.0,
                   "the result differs from the expected values\nHint: ᾱ_t is a variance\n"
                   "Failed on 3 of 20 inputs. The smallest failing input found:\nq_sample(\n  x0 = [0.5]\n)",
                   {"input": "  x0 = float32 tensor of shape (1,): [0.5]\n  t = int64 tensor of shape (1,): [3]",
                    "expected": "[0.66398833]", "got": "[0.6613127]"}),
        Result("4", "q_sample: with noise=None, the output follows N(√ᾱ_t·x₀, (1 − ᾱ_t)·I)", "q_sample",
                   "statistical", False, 0.0, 2.0,
                   "the distribution of q_sample's output is not the expected one (z of the mean is off).",
                   {"statistics": [_stat("z of the mean", 9.1, -5.3, 5.3, False),
                                   _stat("mean of squared residuals", 1.0, 0.97, 1.03, True),
                                   _stat("correlation between two calls", 7.7, -6.0, 6.0, False)],
                    "plot": plot}),
        Result("5", "q_step: iterated, it follows q(x_t | x₀) with β̃_0 = 0", "q_step", "statistical", True,
                   2.0, 2.0, "passed: z of the mean = 0.3, within [-5.3, 5.3]",
                   {"statistics": [_stat("z of the mean", 0.3, -5.3, 5.3, True)], "plot": passing_plot or plot}),
    ] + stub
    cells = [{"cell": 2, "status": "ok", "error": ""},
             {"cell": 3, "status": "error", "error": "ZeroDivisionError: division by zero"}]
    return GradingResult("q_sampler", "alice/q_sampler.ipynb", tests, 2024, "cpu", "0.1.0", 3.2, cells)


def test_names_and_latex_become_mathml() -> None:
    html = str(math_markup("q_posterior: β̃_0 and ᾱ_{t−1}, σ_i²; $\\sqrt{\\bar\\alpha_t}\\,x_0$"))
    assert html.startswith("q_posterior: <math>")  # an identifier stays text
    assert html.count("<math") == 4 and "<msqrt>" in html and "<msubsup>" in html
    assert '<mover accent="true"><mi>β</mi><mo stretchy="false">~</mo></mover>' in html
    assert "http" not in html  # no namespace URL: HTML5 knows <math>
    assert str(math_markup("q_step, x_in and t_max")) == "q_step, x_in and t_max"


@pytest.mark.parametrize("latex", ["$\\text{<script>alert(1)</script>}$", "$\\text{<img src=x onerror=alert(1)>}$",
                                   "$\\text{<a href=\"javascript:alert(1)\">x</a>}$", "<b>$x$</b>"])
def test_latex_carries_no_markup(latex: str) -> None:
    """latex2mathml copies \\text{…} through raw: only an allowlisted, re-serialised tree gets out."""
    html = str(math_markup(latex))
    assert not re.search(r"<(?!/?(math|mrow|mi|mn|mo|mtext)\b)", html), html


def test_report_has_a_section_per_function_and_one_card_per_stub() -> None:
    html = render_html(sample_result(), sample_notebook())
    functions = re.findall(r'<section class="function" id="fn-[^"]+" data-function="([^"]+)"', html)
    assert functions == ["the notebook", "q_sample", "q_step", "q_posterior"]
    stub = html[html.index('data-function="q_posterior"'):html.index('id="cells"')]
    assert stub.count("is not implemented yet") == 1 and "18 tests (18 points)" in stub
    assert '<section class="test' not in stub
    assert "<script" not in html and not re.search(r"https?://", html)
    hint = html[html.index('id="test-3"'):html.index('id="test-4"')]
    assert re.search(r'<pre class="feedback">[^<]*Hint: <math><msub><mover', hint)  # ᾱ_t in the feedback


def test_every_failing_statistic_is_listed_with_its_meaning() -> None:
    html = render_html(sample_result(), sample_notebook())
    card = html[html.index('id="test-4"'):html.index('id="test-5"')]
    rows = re.findall(r'<tr class="statistic (ok|off)">(.*?)</tr>', card, re.S)
    assert [r[0] for r in rows] == ["off", "off", "ok"]  # failing first, both listed
    assert "the mean of what your code returns is off" in rows[0][1]
    assert "Check the mean&#39;s formula first" in rows[1][1]  # a wrong mean also shows as a correlation: said so
    assert re.search(r'class="meaning"></td>', rows[2][1])  # a passing one needs no explanation


def test_every_statistical_test_has_a_plot_passing_ones_folded() -> None:
    html = render_html(sample_result(), sample_notebook())
    assert html.count('<img class="plot"') == 2
    passing = html[html.index('data-function="q_step"'):html.index('data-function="q_posterior"')]
    assert '<details class="passed-tests">' in passing and '<img class="plot"' in passing


def test_cells_are_named_one_way() -> None:
    html = render_html(sample_result(), sample_notebook())
    assert "In[2]" not in html and "In [2]" not in html  # IPython's execution count, renamed
    named = "cell 3 (&#39;x = 1 / 0&#39;)"
    cells, errors = html[html.index('id="cells"'):html.index('id="errors"')], html[html.index('id="errors"'):]
    assert named in cells and named in errors and "cell 3, line 1" in errors and "Cell cell" not in errors
    assert "\x1b" not in html and "ZeroDivisionError: division by zero" in errors


def test_report_under_a_flood_stays_under_2_mb() -> None:
    """Every test at the grader's caps (10,000 characters of output, 20,000 of details), 60 tests,
    plots of 300 kB each and 50 errors in the notebook: the report embeds at most its own caps."""
    result = sample_result()
    big_plot = base64.b64encode(b"\x89PNG" + b"\x00" * 150_000).decode()
    flood = []
    for n in range(60):
        flood.append(Result(str(100 + n), f"q_sample: flood {n}", "q_sample", "statistical", n % 2 == 0, 0, 1,
                                "é" * 10_000, {"input": "x" * 5000, "expected": "y" * 5000, "got": "z" * 5000,
                                               "traceback": "t" * 5000, "plot": big_plot,
                                               "statistics": [_stat("z of the mean", 9.0, -5, 5, False)] * 5}))
    result.tests += flood
    nb = sample_notebook()
    nb.cells += [nbformat.v4.new_code_cell(f"raise ValueError({n})", execution_count=3 + n, outputs=[
        nbformat.v4.new_output("error", ename="ValueError", evalue="v" * 5000, traceback=["line\n" * 2000])])
        for n in range(50)]
    html = render_html(result, nb)
    assert len(html.encode()) < 2_000_000, len(html.encode())
    assert "more characters in results.json" in html and "(the plot was too large to embed)" in html


def test_terminal_summary_shows_the_smallest_input_and_each_failing_statistic() -> None:
    result = sample_result()
    result.tests[2].output += "\x1b[31m\x07red\x1b[0m"  # whatever got past the grader's gates
    text = terminal_summary(result)
    assert "smallest failing input:" in text and "t = int64 tensor of shape (1,): [3]" in text
    assert "Hint: ᾱ_t is a variance" in text
    assert "z of the mean = 9.1, outside [-5.3, 5.3]" in text
    assert "correlation between two calls = 7.7, outside [-6, 6]" in text
    assert "mean of squared residuals = 1" not in text  # a passing statistic is not a failure's news
    assert "q_posterior is not implemented yet: its 18 tests (18 points)" in text and text.count("q_posterior") == 2
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    quiet = terminal_summary(result, quiet=True)
    assert "\n" not in quiet and quiet.startswith("q_sampler: 2 / 25 points")


@pytest.mark.slow  # a fresh interpreter importing torch: 3-20 s on the loaded 2 cores
def test_plots_are_drawn_in_the_report_step_only() -> None:
    """Does a statistical verdict carry its histogram undrawn (no matplotlib during the checks), drawn by the report?

    A fresh interpreter runs a statistical check's verdict: matplotlib must not be imported by it; the
    report then draws a PNG that decodes, and results.json's extra data holds no plot.
    """
    import json
    import subprocess
    import sys

    code = """
import sys, json, torch
from grader.checks.statistical import StatReport, stat_verdict
from grader.stats import mean_z
class C: function, name, alpha, derivation = "q_sample", "noise=None", 1e-6, "exact"
r = torch.randn(4096, generator=torch.Generator().manual_seed(0))
v = stat_verdict(C, lambda: StatReport([mean_z(r, 1e-6)], residuals=r))
during = "matplotlib" in sys.modules
from grader.results import GradingResult, TestResult
from grader.render import render_html
t = TestResult("1", "q_sample: noise=None", "q_sample", "statistical", v.passed, 1.0, 1.0, v.output, v.details)
res = GradingResult("q_sample", "nb.ipynb", [t], 0, "cpu", "0")
html = render_html(res)
print(json.dumps({"during": during, "kind": type(v.details["plot"]).__name__, "html": html,
                  "json": json.dumps(res.to_gradescope(), default=str)}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["kind"] == "ResidualPlot" and not seen["during"]
    png = re.search(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', seen["html"]).group(1)
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "ResidualPlot" not in seen["json"] and "iVBOR" not in seen["json"]
