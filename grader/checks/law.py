"""Law checks: a sampler's output against the exact law it must follow, at a stated level.

Every sampler check of the course has one shape, and :class:`Law` is it:

1. ``draw(ctx)`` builds the calls (:class:`LawDraw`: one :class:`Sample` per call, each
   with its inputs and the exact law ``(mean, var)`` its output must follow, from
   :mod:`reference.laws`);
2. the student's function (or a ``probe`` driving it) is called once per sample, with
   its noise left to its own draws;
3. each output is standardised, ``(x − mean)/√var`` (:func:`standardise`): i.i.d. N(0, 1)
   for a correct sampler, whatever order it draws its noise in;
4. the :class:`Battery` of tests of :mod:`grader.stats` runs on the residuals, splitting
   the level ``alpha`` evenly between its tests (Bonferroni);
5. when a test fails, the known mistakes (``mistakes``: :class:`~grader.checks.property.Diagnosis`
   whose ``wrong(draw)`` returns the law each call would follow with that mistake) are
   tried in order, and the first whose laws every output fits (the battery's mean and
   variance tests, at the battery's own level) is named as a hint.

The verdict carries every statistic, its threshold, the derivation of the level and, on
failure, a histogram of the residuals against N(0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from grader.checks.base import Context, Inputs, Verdict, check_probe
from grader.checks.compare import Mismatch, as_tensor
from grader.checks.property import Diagnosis
from grader.checks.statistical import Statistical, StatReport, stat_verdict, value_of
from grader.stats import Statistic, mean_z, product_z, variance_chi2

__all__ = ["Battery", "Law", "LawDraw", "Sample", "standardise"]

LawPair = tuple[torch.Tensor, torch.Tensor]


def standardise(value: Any, law: LawPair, what: str, shape: tuple | None = None) -> torch.Tensor:
    """``(x − mean)/√var`` in float64 on the CPU; a wrong type, dtype or shape is a :class:`Mismatch`.

    ``shape`` is the output's expected shape (default: the law's, mean and var broadcast).
    """
    mean, var = law
    expected = tuple(shape) if shape is not None else tuple(torch.broadcast_shapes(mean.shape, var.shape))
    x = as_tensor(value, what)
    if tuple(x.shape) != expected:
        raise Mismatch(f"{what} has shape {tuple(x.shape)}; expected {expected}")
    if not x.is_floating_point():
        raise Mismatch(f"{what} has dtype {x.dtype}; a floating-point tensor was expected")
    return (x.detach().to("cpu", torch.float64) - mean.to("cpu", torch.float64)) / var.to("cpu", torch.float64).sqrt()


@dataclass
class Sample:
    """One call of a law check and the law its output must follow.

    Attributes:
        inputs: the call's arguments.
        law: ``(mean, var)`` in float64, broadcasting to the output's shape.
        label: names the call in the statistics ("η = 0.5", "5 steps"); "" for none.
        what: names the output in messages; default "<function>'s result".
        shape: the output's expected shape; default the law's.
    """

    inputs: Inputs
    law: LawPair
    label: str = ""
    what: str = ""
    shape: tuple | None = None


@dataclass
class LawDraw:
    """What a law check calls: its samples, a note for the report, and anything its mistakes need (``meta``)."""

    samples: list[Sample]
    note: str = ""
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Battery:
    """The tests of a law check on the residuals ``(B, D)`` of its calls, each at ``alpha / size``.

    Attributes:
        per_call: run on each call's residuals, in this order: ``"mean"`` (pooled z, exactly
            N(0, 1)), ``"variance"`` (Σr² ~ χ²(n), two-sided), ``"coordinate means"`` (the D
            per-coordinate mean z's, Σz_d² ~ χ²(D): a bias in a few coordinates).
        on_calls: the calls that get the per-call tests (None: all).
        between_calls: the correlation between the first two calls' residuals.
        batch: the correlation between the two halves of the batch, of call ``i`` or of
            ``"joint"`` (every call's residuals side by side); None: not run.
        coordinates: the correlation between even and odd coordinates, likewise.

    The correlation tests use the Chernoff bound of :func:`grader.stats.product_z`.
    """

    per_call: tuple[str, ...] = ("mean", "variance")
    on_calls: tuple[int, ...] | None = None
    between_calls: bool = False
    batch: int | str | None = None
    coordinates: int | str | None = None

    def size(self, calls: int) -> int:
        """How many tests run on ``calls`` calls (the Bonferroni divisor)."""
        per = len(self.per_call) * (calls if self.on_calls is None else len(self.on_calls))
        return per + int(self.between_calls) + int(self.batch is not None) + int(self.coordinates is not None)

    def level(self, alpha: float, calls: int) -> float:
        return alpha / self.size(calls)

    def run(self, residuals: list[torch.Tensor], alpha: float, labels: list[str]) -> list[Statistic]:
        a = self.level(alpha, len(residuals))
        out: list[Statistic] = []
        for i in range(len(residuals)) if self.on_calls is None else self.on_calls:
            r, suffix = residuals[i], _suffix(labels[i])
            for test in self.per_call:
                if test == "mean":
                    out.append(mean_z(r, a, f"z of the mean{suffix}"))
                elif test == "variance":
                    out.append(variance_chi2(r, a, f"mean of squared residuals{suffix}"))
                elif test == "coordinate means":
                    per_coordinate = r.sum(0) / math.sqrt(r.shape[0])  # (D,), exactly N(0, 1) each
                    out.append(variance_chi2(per_coordinate, a, f"mean square of the {per_coordinate.numel()} "
                                                                f"per-coordinate mean z's{suffix}"))
                else:
                    raise ValueError(f"unknown per-call test {test!r}")
        if self.between_calls:
            out.append(product_z(residuals[0], residuals[1], a, "correlation between the two calls"))
        if self.batch is not None:
            r, suffix = self._select(residuals, labels, self.batch)
            half = r.shape[0] // 2
            out.append(product_z(r[:half], r[half: 2 * half], a, f"correlation between batch elements{suffix}"))
        if self.coordinates is not None:
            r, suffix = self._select(residuals, labels, self.coordinates)
            out.append(product_z(r[:, 0::2], r[:, 1::2], a, f"correlation between coordinates{suffix}"))
        return out

    @staticmethod
    def _select(residuals: list[torch.Tensor], labels: list[str], which: int | str) -> tuple[torch.Tensor, str]:
        if which == "joint":
            return torch.cat(residuals, 1), ""
        return residuals[which], _suffix(labels[which]) if len(residuals) > 1 else ""


def _suffix(label: str) -> str:
    return f" ({label})" if label else ""


@dataclass(frozen=True)
class Law(Statistical):
    """A sampler against its exact law (module docstring); a :class:`Statistical` check whose procedure is this pattern.

    Attributes:
        function: the function under test.
        name: what is tested ("with η = 1 and x_T drawn, the samples follow the exact law").
        draw: ``draw(ctx) -> LawDraw``: the calls and their laws.
        battery: the tests on the residuals.
        alpha: the false-failure probability of the whole check for a correct implementation.
        derivation: how ``alpha`` is guaranteed (shown to students and instructors).
        points: points of the test.
        tag: seeds the student's process for these calls (``Context.call``); default ``name``.
        probe: a harness that drives the function (its result is the output).
        mistakes: known mistakes, each ``Diagnosis(wrong=lambda draw: [law per sample], message)``.
    """

    draw: Callable[[Context], LawDraw] | None = None
    battery: Battery | None = None
    tag: str = ""
    probe: Callable | None = None
    mistakes: tuple[Diagnosis, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.draw is None or self.battery is None:
            raise TypeError(f"Law of {self.function}: give its draw and its battery")
        if self.probe is not None:
            check_probe(self.probe)

    def run(self, ctx: Context) -> list[Verdict]:
        stub = ctx.stub(self.function, self.probe)
        if stub is not None:  # stat_verdict's verdict for an unanswered call, without drawing the samples
            return [Verdict(False, stub.explain(self.function), {"traceback": stub.traceback})]
        return [stat_verdict(self, lambda: self.measure(ctx))]

    def measure(self, ctx: Context) -> StatReport:
        """Call, standardise and test; raises ``Unanswered`` or ``Mismatch`` when there is nothing to test."""
        draw = self.draw(ctx)
        outcomes = ctx.call(self.function, [s.inputs for s in draw.samples], self.probe, tag=self.tag or self.name)
        values = [value_of(o) for o in outcomes]
        residuals = [standardise(v, s.law, s.what or f"{self.function}'s result", s.shape)
                     for v, s in zip(values, draw.samples)]
        statistics = self.battery.run(residuals, self.alpha, [s.label for s in draw.samples])
        note = draw.note
        if self.mistakes and not all(s.passed for s in statistics):
            hint = self._hint(draw, values)
            note = f"{note}\n{hint}".strip() if hint else note
        return StatReport(statistics, torch.cat([r.flatten() for r in residuals]), draw.samples[0].inputs, note=note)

    def _hint(self, draw: LawDraw, values: list) -> str:
        level = self.battery.level(self.alpha, len(draw.samples))
        for mistake in self.mistakes:
            laws = mistake.wrong(draw)
            if all(_fits(v, law, s, level) for v, law, s in zip(values, laws, draw.samples)):
                return "Hint: your samples follow exactly the law of a sampler in which " + mistake.message
        return ""


def _fits(value: Any, law: LawPair, sample: Sample, level: float) -> bool:
    """Does ``value`` pass the mean and variance tests at ``level`` against ``law``?"""
    try:
        r = standardise(value, law, "x", sample.shape)
    except Mismatch:
        return False
    if not bool(torch.isfinite(r).all()):
        return False
    return mean_z(r, level).passed and variance_chi2(r, level).passed
