"""Statistical checks: the student's sampler against an exact law, at a stated level.

A statistical check is a procedure that calls the student (through the context)
with the noise left to the student's own draws, standardises what came back
against the exact law (``(x − mean)/std``: i.i.d. N(0, 1) when the sampler is
right) and applies the tests of :mod:`grader.stats`, splitting its level ``alpha``
between them (Bonferroni). The verdict carries every statistic, its threshold,
and a histogram of the residuals against N(0, 1): a :class:`ResidualPlot`, drawn only
when the report is written (matplotlib is imported there, once, and never during the checks).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Callable

import torch

from grader.checks.base import Check, Context, Inputs, Outcome, TestSpec, Verdict
from grader.checks.compare import Mismatch
from grader.stats import Statistic

__all__ = ["ResidualPlot", "StatReport", "Statistical", "Unanswered", "residual_plot", "stat_verdict", "value_of"]


@dataclass
class StatReport:
    """What a procedure measured: the statistics and the residuals for the plot."""

    statistics: list[Statistic]
    residuals: torch.Tensor | None = None
    inputs: Inputs | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Statistical(Check):
    """A law check.

    Attributes:
        function: the function under test.
        name: what is tested ("noise=None draws N(√ᾱ_t·x₀, 1 − ᾱ_t)").
        procedure: ``procedure(ctx, alpha) -> StatReport``; raises
            :class:`~grader.checks.compare.Mismatch` for a wrong type or shape, and
            :class:`Unanswered` when the student's code gave no value.
        alpha: the false-failure probability of the whole check for a correct implementation.
        derivation: how ``alpha`` is guaranteed (shown to students and instructors).
        points: points of the test.
    """

    function: str
    name: str
    procedure: Callable[[Context, float], StatReport] | None = None
    alpha: float | None = None
    derivation: str = ""
    points: float = 1.0
    public: bool = False

    def __post_init__(self) -> None:
        # Defaults only so that subclasses (Law) may add fields; every statistical check states its level.
        if self.alpha is None or not self.derivation:
            raise TypeError(f"{type(self).__name__} of {self.function}: give its level alpha and its derivation")
        if type(self) is Statistical and self.procedure is None:
            raise TypeError(f"Statistical of {self.function}: give its procedure")

    def tests(self) -> list[TestSpec]:
        return [TestSpec(f"{self.function}: {self.name}", self.points, "statistical")]

    def run(self, ctx: Context) -> list[Verdict]:
        return [stat_verdict(self, lambda: self.procedure(ctx, self.alpha))]


def stat_verdict(check, measure: Callable[[], StatReport]) -> Verdict:
    """The verdict of a statistical test (``check`` has function, name, alpha, derivation) on what ``measure`` reports.

    :class:`Unanswered` (no value) and :class:`~grader.checks.compare.Mismatch` (a wrong
    type or shape) raised by ``measure`` are failed tests with their one-line reason.
    """
    try:
        report = measure()
    except Unanswered as exc:
        return Verdict(False, exc.outcome.explain(check.function), {"traceback": exc.outcome.traceback})
    except Mismatch as exc:
        return Verdict(False, str(exc), dict(exc.details))
    passed = all(s.passed for s in report.statistics)
    if passed:
        output = "passed: " + "; ".join(s.describe() for s in report.statistics)
    else:
        failed = [s for s in report.statistics if not s.passed]
        ordered = failed + [s for s in report.statistics if s.passed]
        output = (f"the distribution of {check.function}'s output is not the expected one "
                  f"({failed[0].name} is off).\n" + "\n".join(s.describe() for s in ordered))
    if report.note:
        output += "\n" + report.note
    output += (f"\nA correct implementation fails this test with probability at most {check.alpha:.0e}: "
               f"{check.derivation}")
    details = {"statistics": [s.as_dict() for s in report.statistics]}
    if report.inputs is not None:
        details["input"] = report.inputs.describe()
    if report.residuals is not None:  # passing or not: the report shows a plot for every statistical test
        details["plot"] = ResidualPlot(_finite(report.residuals), f"{check.function}: {check.name}")
    return Verdict(passed, output, details)


class Unanswered(Exception):
    """The student's code produced no value for a statistical check."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def value_of(outcome: Outcome) -> object:
    """The outcome's value, or :class:`Unanswered`."""
    if not outcome.ok:
        raise Unanswered(outcome)
    return outcome.value


def _finite(residuals: torch.Tensor) -> torch.Tensor:
    r = residuals.detach().to("cpu", torch.float64).flatten()
    return r[torch.isfinite(r)]


@dataclass(frozen=True)
class ResidualPlot:
    """A residual histogram still to draw: the report step calls :meth:`png` (base64 PNG), results.json never does."""

    residuals: torch.Tensor
    title: str

    def png(self) -> str:
        return residual_plot(self.residuals, self.title)


def residual_plot(residuals: torch.Tensor, title: str) -> str:
    """A histogram of the standardised residuals against the N(0, 1) density, as base64 PNG.

    Drawn on a bare Agg canvas (no pyplot: no backend switch, no global figure list) with fixed
    margins instead of ``tight_layout``, which drew the figure a second time to measure its labels
    (a third of the plot's cost); the margins fit the fixed size, font sizes and one-line title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = _finite(residuals)
    fig = Figure(figsize=(5.5, 3.2), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.15, top=0.91)
    if r.numel():
        tails = r.quantile(torch.tensor([0.001, 0.999], dtype=torch.float64))  # one sort for both
        low, high = min(-5.0, float(tails[0])), max(5.0, float(tails[1]))
        ax.hist(r.clamp(low, high).numpy(), bins=80, range=(low, high), density=True, alpha=0.6,
                histtype="stepfilled",  # one polygon, not 80 patches: a third of the plot's cost
                label="your output, standardised")
        grid = torch.linspace(low, high, 400, dtype=torch.float64)
        ax.plot(grid.numpy(), (torch.exp(-grid**2 / 2) / (2 * torch.pi) ** 0.5).numpy(), "k-", lw=1.5,
                label="N(0, 1): a correct sampler")
    else:
        ax.text(0.5, 0.5, "no finite values came back", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("(x − expected mean) / expected std")
    if r.numel():
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()
