"""Deterministic checks driven by hypothesis: properties, and agreement with the reference.

How a property check runs:

1. hypothesis draws the cases up front in the grader's process — explicit
   boundary examples first, then generated ones — seeded from the grading
   seed, with no database and no deadline (:func:`draw_cases`);
2. the student's function is called on all of them in one batch;
3. each test of the check judges every outcome here, in the grader's process;
4. when some cases pass and some fail, hypothesis shrinks towards the smallest
   failing case, calling the student live (a bounded number of single calls;
   the cases of step 1 are answered from the batch), so that the feedback shows
   the simplest input that exposes the bug;
5. where a test judges the output's device and grading runs on the CPU, the
   first case is also run on PyTorch's ``meta`` device (:func:`device_leak`),
   so that code that would fail on a GPU is caught on machines without one.

No statistical test ever runs here: with the noise injected, the student's
output is a deterministic function of the case.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, seed, settings
from hypothesis import strategies as st

from grader.checks.base import Check, Context, Inputs, Outcome, TestSpec, Verdict
from grader.checks.base import check_probe
from grader.checks.compare import DEFAULT_TOLERANCE, Mismatch, Tolerance, as_tensor, as_tuple, compare
from grader.sandbox.meta import lazy_dynamo_guards
from grader.sandbox.wire import SPEC

__all__ = ["Agreement", "Aspect", "Diagnosis", "Property", "device_leak", "draw_cases", "dtype_device_aspect",
           "output_aspect", "swapped"]

#: Live calls hypothesis may make while shrinking one failure (each is one round trip).
SHRINK_CALLS = 60


#: Cases drawn so far in this process, by (strategy, n, seed, examples): a draw is a pure function of
#: those, so :meth:`Property.prepare` draws ahead and :meth:`Property.run` finds them here.
_DRAWN: dict[tuple, tuple[st.SearchStrategy, list]] = {}
_DRAWN_MAX = 4096
#: Hypothesis runs one test at a time in this process: a draw ahead (in grade submit's background
#: thread) and the checks' own draws and shrinks never overlap.
HYPOTHESIS_LOCK = threading.RLock()


def draw_cases(strategy: st.SearchStrategy, n: int, seed_value: int, examples: Sequence[Any] = ()) -> list:
    """The explicit ``examples`` then up to ``n`` cases drawn by hypothesis, without duplicates.

    Drawn once per process for the same arguments (each caller gets its own copy of the cases).
    """
    key = (id(strategy), n, seed_value, repr(list(examples)))
    with HYPOTHESIS_LOCK:
        hit = _DRAWN.get(key)
        if hit is None or hit[0] is not strategy:
            hit = (strategy, _draw(strategy, n, seed_value, examples))
            if len(_DRAWN) < _DRAWN_MAX:
                _DRAWN[key] = hit
        return copy.deepcopy(hit[1])


def _draw(strategy: st.SearchStrategy, n: int, seed_value: int, examples: Sequence[Any]) -> list:
    drawn: list = []

    def record(case):
        drawn.append(case)

    test = record
    for item in reversed(list(examples)):
        test = example(item)(test)
    test = given(strategy)(test)
    test = settings(
        max_examples=max(1, n), database=None, deadline=None, derandomize=False,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )(test)
    seed(seed_value)(test)()
    unique, seen = [], set()
    for case in drawn:
        if repr(case) not in seen:
            seen.add(repr(case))
            unique.append(case)
    return unique


def warm_hypothesis() -> None:
    """Pay hypothesis' one-time start (its engine's lazy set-up: ~0.3 s idle, 2 s on the loaded cores) now.

    The first :func:`draw_cases` of a process costs that much more than the next ones, whatever the
    strategy; calling this while the kernel boots or runs the notebook takes it off the grading's
    critical path. It draws from its own fixed seed, so no later draw changes.
    """
    draw_cases(st.integers(0, 1), 1, 0)


@dataclass(frozen=True)
class Aspect:
    """One graded test of a property check: a name, points, and a judge of one outcome.

    ``judge(inputs, outcome)`` returns None when the outcome is right, or raises
    :class:`~grader.checks.compare.Mismatch`. It is only called on outcomes with a value.
    ``device=True`` marks a test of the output's device: where grading runs on the
    CPU, it also fails when the function would not run on a GPU (:func:`device_leak`).
    ``gated_by`` names aspects of the same check that judge the *values*: this one earns
    its points only when they passed (so ``torch.zeros_like(x)`` or a NaN tensor never earns
    the "dtype and device" point). Shape, dtype, device and finiteness aspects are gated.
    """

    name: str
    points: float
    judge: Callable[[Inputs, Outcome], None]
    shrink: bool = True
    device: bool = False
    gated_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    """A known mistake, recognised by what it produces; ``message`` is the hint a student reads.

    One mechanism for every kind of check:

    * in a :class:`Property` (and :class:`Agreement`), ``wrong`` is called like the
      function, on the inputs in float64, and the mistake is named when its values match
      the student's on *every* answered input (floating results within the check's
      ``diagnosis_tolerance``, integer results exactly);
    * in a :class:`~grader.checks.law.Law`, ``wrong(draw)`` returns the exact law each call
      would follow with the mistake, and it is named when every output fits that law.
    """

    wrong: Callable[..., Any]
    message: str


@dataclass(frozen=True)
class Property(Check):
    """Call ``function`` on hypothesis-drawn cases and judge every outcome, per aspect.

    Attributes:
        function: the curriculum name of the function under test.
        cases: a strategy of plain, printable case descriptions (dicts of ints, tuples, names).
        build: ``build(case, ctx) -> Inputs``, materialising a case on ``ctx.device``.
        aspects: the graded tests, each judging one property of every outcome.
        examples: explicit cases, run first: the boundaries (t = 0, T − 1, …).
        max_examples: cases drawn by hypothesis besides the examples.
        probe: a harness that drives the function (shipped as source to the student's process).
        public: whether ``check()`` in the notebook runs it.
        diagnoses: known mistakes to name when an aspect fails (:class:`Diagnosis`).
        tolerance: the grading tolerance of judges that compare values (:class:`Agreement`'s).
        diagnosis_tolerance: how closely a known mistake must reproduce the student's values to
            be named (a hint, never a grade); None: ``tolerance``.
    """

    function: str
    cases: st.SearchStrategy
    build: Callable[[Any, Context], Inputs]
    aspects: tuple[Aspect, ...]
    examples: tuple = ()
    max_examples: int = 25
    probe: Callable | None = None
    public: bool = True
    diagnoses: tuple[Diagnosis, ...] = ()
    kind: str = "property"
    tolerance: Tolerance = DEFAULT_TOLERANCE
    diagnosis_tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        if self.probe is not None:
            check_probe(self.probe)

    def tests(self) -> list[TestSpec]:
        return [TestSpec(f"{self.function}: {a.name}", a.points, self.kind) for a in self.aspects]

    def run(self, ctx: Context) -> list[Verdict]:
        stub = ctx.stub(self.function, self.probe)
        tag = self._tag()
        if stub is None and self.examples and self.function in ctx.stubs:
            # A probe drives a stub: its first example answers for every case (see Context.call), so
            # when it raised NotImplementedError no case is drawn; otherwise the full run follows.
            first = ctx.call(self.function, [self.build(self.examples[0], ctx)], self.probe, tag=tag)[0]
            stub = first if first.not_implemented else None
        if stub is not None:  # every case would fail alike: today's verdict, no case drawn, no call
            return [Verdict(False, f"{stub.explain(self.function)} (on every input)",
                            {"traceback": stub.traceback} if stub.traceback else {}) for _ in self.aspects]
        cases = self._cases(ctx, tag)
        inputs = [self.build(case, ctx) for case in cases]
        outcomes = ctx.call(self.function, inputs, self.probe, tag=tag)
        cache = {repr(c): (i, o) for c, i, o in zip(cases, inputs, outcomes)}
        verdicts = [self._judge_aspect(aspect, cases, cache, ctx, tag) for aspect in self.aspects]
        on_device = [i for i, a in enumerate(self.aspects) if a.device and verdicts[i].passed]
        if on_device and ctx.device.type == "cpu":
            leak = device_leak(self, cases[0], ctx, tag)
            for i in on_device if leak else ():
                verdicts[i] = leak
        return self._gate(verdicts)

    def _tag(self) -> str:
        return f"{self.function}:{self.aspects[0].name}"

    def _cases(self, ctx: Context, tag: str) -> list:
        n = max(1, math.ceil(self.max_examples * ctx.scale))
        return draw_cases(self.cases, n, ctx.seed_for("cases", tag) % 2**32, self.examples)

    def prepare(self, ctx: Context) -> None:
        """Draw the cases ahead (:func:`draw_cases` keeps them): they depend on the seed alone."""
        self._cases(ctx, self._tag())

    def _gate(self, verdicts: list[Verdict]) -> list[Verdict]:
        """A gated aspect that passed keeps its points only if the value aspects it depends on passed."""
        passed = {a.name: v.passed for a, v in zip(self.aspects, verdicts)}
        for i, aspect in enumerate(self.aspects):
            failed = [name for name in aspect.gated_by if not passed.get(name, True)]
            if verdicts[i].passed and failed:
                verdicts[i] = Verdict(False, f"not awarded while “{self.function}: {failed[0]}” fails: the form "
                                             "of the output earns its point only with right values")
        return verdicts

    def _failure(self, aspect: Aspect, inputs: Inputs, outcome: Outcome) -> Mismatch | None:
        if not outcome.ok:
            return Mismatch(outcome.explain(self.function), traceback=outcome.traceback)
        try:
            aspect.judge(inputs, outcome)
        except Mismatch as mismatch:
            return mismatch
        return None

    def _judge_aspect(self, aspect: Aspect, cases: list, cache: dict, ctx: Context, tag: str) -> Verdict:
        failures = []
        for case in cases:
            inputs, outcome = cache[repr(case)]
            mismatch = self._failure(aspect, inputs, outcome)
            if mismatch is not None:
                failures.append((case, inputs, outcome, mismatch))
        if not failures:
            return Verdict(True, f"passed on {len(cases)} inputs")
        first = failures[0]
        if not first[2].ok and all(_same_failure(first[2], f[2]) for f in failures):
            # Not implemented, missing, refused, …: the same on every input, so no input to show.
            everywhere = "on every input" if len(failures) == len(cases) else f"on {len(failures)} of {len(cases)} inputs"
            return Verdict(False, f"{first[2].explain(self.function)} ({everywhere})",
                           {"traceback": first[2].traceback} if first[2].traceback else {})
        if len(failures) < len(cases) and aspect.shrink and first[2].ok:
            first = self._shrink(aspect, cases, cache, ctx, tag) or first
        case, inputs, outcome, mismatch = first
        lines = [str(mismatch)]
        hint = self._diagnose(list(cache.values())) if outcome.ok else ""
        if hint:
            lines.append(f"Hint: {hint}")
        lines.append(f"Failed on {len(failures)} of {len(cases)} inputs. The smallest failing input found:")
        lines.append(f"{self.function}(\n{inputs.describe()}\n)")
        details = {"input": inputs.describe(), **{k: v for k, v in mismatch.details.items() if v}}
        if outcome.traceback:
            details["traceback"] = outcome.traceback
        return Verdict(False, "\n".join(lines), details)

    def _shrink(self, aspect: Aspect, cases: list, cache: dict, ctx: Context, tag: str):
        """Let hypothesis shrink the failure, answering known cases from the batch."""
        failing: list = []
        live = {"calls": 0}

        def outcome_for(case) -> tuple[Inputs, Outcome] | None:
            key = repr(case)
            if key not in cache:
                if live["calls"] >= SHRINK_CALLS:
                    return None
                live["calls"] += 1
                inputs = self.build(case, ctx)
                cache[key] = (inputs, ctx.call(self.function, [inputs], self.probe, tag=tag)[0])
            return cache[key]

        def test(case):
            found = outcome_for(case)
            if found is None:
                return
            inputs, outcome = found
            if not outcome.ok and outcome.status not in ("error",):
                return  # do not shrink towards timeouts and crashes
            mismatch = self._failure(aspect, inputs, outcome)
            if mismatch is not None:
                failing.append((case, inputs, outcome, mismatch))
                raise AssertionError("fails")

        test = given(self.cases)(test)
        test = settings(
            max_examples=len(cases), database=None, deadline=None, derandomize=False,
            phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False, verbosity=Verbosity.quiet,
        )(test)
        seed(ctx.seed_for("cases", tag) % 2**32)(test)
        try:
            with HYPOTHESIS_LOCK:
                test()
        except BaseException:  # noqa: BLE001 -- hypothesis re-raises the (shrunk) failure
            pass
        return failing[-1] if failing else None

    def _diagnose(self, answered: list[tuple[Inputs, Outcome]]) -> str:
        """The first known mistake that reproduces the student's values on every answered input.

        Matching every input, not only the failing one, keeps a diagnosis from naming the
        wrong mistake where two formulas happen to agree (e.g. at t = 0, where ᾱ ≈ 1).
        """
        answered = [(i, o) for i, o in answered if o.ok]
        tolerance = self.diagnosis_tolerance or self.tolerance
        for diagnosis in self.diagnoses:
            if answered and all(_matches(diagnosis, inputs, outcome, tolerance) for inputs, outcome in answered):
                return diagnosis.message
        return ""


def swapped(function: Callable) -> Callable:
    """``function`` with its two results in the other order: the wrong formula of a Diagnosis for a result returned
    as ``(b, a)`` where ``(a, b)`` belongs (``(x_mean, x)`` for ``(x, x_mean)``)."""

    def wrong(*args, **kwargs):
        first, second = function(*args, **kwargs)
        return second, first

    return wrong


def _matches(diagnosis: Diagnosis, inputs: Inputs, outcome: Outcome, tolerance: Tolerance) -> bool:
    try:
        wrong = inputs.call_reference(diagnosis.wrong)
        got = outcome.value
        if isinstance(wrong, tuple):
            pairs = list(zip(as_tuple(got, tuple(str(i) for i in range(len(wrong))), "the result"), wrong))
        else:
            pairs = [(got, wrong)]
        for g, w in pairs:
            if isinstance(w, torch.Tensor) and not w.is_floating_point():
                if not _equal_integers(as_tensor(g, "the result"), w):
                    return False
            else:
                compare(g, w, tolerance, "the result", broadcast=True)
    except Exception:  # noqa: BLE001 -- not comparable, or different: no match
        return False
    return True


def _equal_integers(got: torch.Tensor, wrong: torch.Tensor) -> bool:
    """An integer result (timesteps, indices) matches exactly, in any dtype holding the same integers."""
    values = got.detach().to("cpu").flatten().tolist()
    if got.is_floating_point() and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    return tuple(got.shape) == tuple(wrong.shape) and values == wrong.flatten().tolist()


def _same_failure(a: Outcome, b: Outcome) -> bool:
    return (a.status, a.error_type, a.message) == (b.status, b.error_type, b.message) or (
        a.status in ("missing", "timeout", "crashed", "skipped", "memory") and a.status == b.status
    ) or (a.not_implemented and b.not_implemented)


#: How PyTorch reports tensors on two devices meeting (CUDA and meta alike), or a device tensor sent to numpy.
_DEVICE_MIXING = re.compile(r"is not on the expected device|Expected all tensors to be on the same device|"
                            r"can't convert meta device type tensor to numpy")
META = torch.device("meta")


#: The runners (one per student process) whose process has had :func:`lazy_dynamo_guards`.
_GUARDED: "weakref.WeakSet" = weakref.WeakSet()


def _prepare_meta(ctx: Context, function: str) -> None:
    """Run :func:`lazy_dynamo_guards` in the student's process, once per runner, before the first meta call."""
    try:
        if ctx.runner in _GUARDED:
            return
        _GUARDED.add(ctx.runner)
    except TypeError:  # a runner that cannot be weakly referenced: prepared every time (0.1 s)
        pass
    ctx.call(function, [Inputs({})], lazy_dynamo_guards, tag="meta:prepare")  # its outcome changes no verdict


def device_leak(check: Property, case: Any, ctx: Context, tag: str) -> Verdict | None:
    """Run ``case`` with every input on PyTorch's ``meta`` device; a failed verdict if the code is not device-agnostic.

    A meta tensor has a shape, a dtype and a device but no data, and PyTorch applies
    CUDA's rules to it: an operation between a meta tensor and a CPU tensor that is
    not a 0-dim scalar raises, as it would between CUDA and CPU tensors. So a
    function that builds a tensor on the CPU (``torch.zeros(shape)``, ``torch.arange(T)``
    without ``device=``), calls ``.numpy()`` on an input, or returns its result on the
    CPU is caught on a machine without a GPU. Only those are counted: code that needs
    the data (``.item()``, ``.tolist()``, an ``if`` on a tensor) cannot run on meta
    but runs on a GPU, so anything else the meta run raises proves nothing and passes.
    """
    try:
        inputs = check.build(case, dataclasses.replace(ctx, device=META))
    except Exception:  # noqa: BLE001 -- inputs that need data cannot be built on meta: nothing to learn
        return None
    if any(isinstance(v, dict) and v.get(SPEC) == "generator" for v in inputs.arguments().values()):
        return None  # no generator lives on meta
    _prepare_meta(ctx, check.function)
    outcome = ctx.call(check.function, [inputs], check.probe, tag=f"{tag}:meta")[0]
    advice = ("Create new tensors on the inputs' device (device=x.device, torch.zeros_like(x), x.new_tensor(...)) "
              "and keep every step in torch.\nFound by calling it with every input on PyTorch's meta device, which "
              "checks devices as a GPU does:")
    call = f"{check.function}(\n{inputs.describe()}\n)"
    if outcome.status == "error" and _DEVICE_MIXING.search(outcome.message):
        how = ("it converts a tensor to numpy, which only holds CPU data" if "numpy" in outcome.message
               else "it mixes a tensor made on the CPU with the inputs' device")
        return Verdict(False, f"{check.function} would fail on a GPU: {how} ({outcome.message})\n{advice}\n{call}",
                       {"input": inputs.describe(), "traceback": outcome.traceback})
    if outcome.ok:
        stray = sorted({str(t.device) for t in _tensors(outcome.value) if t.device != META})
        if stray:
            return Verdict(False, f"{check.function} would return a tensor on the {stray[0]} for inputs on a GPU, "
                                  f"not on the inputs' device.\n{advice}\n{call}", {"input": inputs.describe()})
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _whole_result(value: Any) -> list[tuple[str, Any]]:
    return [("the result", value)]


def _fixed_or_argument(spec: Any, inputs: Inputs, attribute: str) -> Any:
    """``spec`` resolved for one call: an argument's name (its dtype, device, shape), a callable of the inputs, or a value."""
    if isinstance(spec, str):
        value = inputs.arguments()[spec]
        return tuple(value.shape) if attribute == "shape" else getattr(value, attribute)
    if callable(spec) and not isinstance(spec, torch.dtype):
        return spec(inputs)
    return spec


def output_aspect(name: str, points: float = 1, *, shape: Any = None, dtype: Any = None, device: Any = None,
                  finite: bool = False, items: Callable[[Any], list[tuple[str, Any]]] = _whole_result,
                  gated_by: tuple[str, ...] = (), dtype_source: str = "") -> Aspect:
    """The one judge of a result's form: every item a real tensor, with the expected shape, dtype, device, finite.

    Args:
        shape, dtype, device: each None (not judged), an argument's name (its shape, dtype or
            device), a callable ``f(inputs)``, or a fixed value (a ``torch.dtype``, a device).
        finite: whether NaN and infinite values fail.
        items: splits the result into labelled items (default: the whole result).
        gated_by: the value aspects this one depends on (:class:`Aspect`).
        dtype_source: says where the expected dtype comes from, in the message.

    Where the device comes from an argument the aspect is a device test, so that grading on
    the CPU also runs the function on the meta device (:func:`device_leak`).
    """

    def judge(inputs: Inputs, outcome: Outcome) -> None:
        want_shape = _fixed_or_argument(shape, inputs, "shape")
        want_dtype = _fixed_or_argument(dtype, inputs, "dtype")
        want_device = _fixed_or_argument(device, inputs, "device")
        for label, got in items(outcome.value):
            got = as_tensor(got, label)
            if want_shape is not None and tuple(got.shape) != tuple(want_shape):
                raise Mismatch(f"{label} has shape {tuple(got.shape)}; expected {tuple(want_shape)}")
            if want_dtype is not None and got.dtype != want_dtype:
                source = f" ({dtype_source or (f'the dtype of {dtype}' if isinstance(dtype, str) else 'the contract')})"
                raise Mismatch(f"{label} has dtype {got.dtype}; expected {want_dtype}{source}")
            if want_device is not None and got.device.type != torch.device(want_device).type:
                where = f" (where {device} is)" if isinstance(device, str) else ""
                raise Mismatch(f"{label} is on {got.device}; expected {want_device}{where}")
            if finite and not bool(torch.isfinite(got).all()):
                raise Mismatch(f"{label} contains NaN or infinite values")

    return Aspect(name, points, judge, shrink=False, device=isinstance(device, str), gated_by=tuple(gated_by))


def dtype_device_aspect(dtype_from: str | torch.dtype | None, device_from: str | None = None, points: float = 1,
                        name: str = "output dtype and device follow the input",
                        items: Callable[[Any], list[tuple[str, Any]]] = _whole_result,
                        gated_by: tuple[str, ...] = ()) -> Aspect:
    """A test that every item of the result is a tensor with the expected dtype, on the expected device.

    Args:
        dtype_from: the argument whose dtype the result must have, a fixed dtype, or None (the default dtype).
        device_from: the argument whose device the result must be on, or None (the CPU).
        items: splits the result into labelled items (default: the whole result).
        gated_by: the value aspects it depends on: pass the values test's name (issue 9: no
            point for the form of wrong values). :class:`Agreement` does this itself.

    An :func:`output_aspect` judging dtype and device only.
    """
    if isinstance(dtype_from, str):
        source = f"the dtype of {dtype_from}"
    else:
        source = "the default dtype" if dtype_from is None else "the contract"
    dtype = (lambda inputs: torch.get_default_dtype()) if dtype_from is None else dtype_from
    return output_aspect(name, points, dtype=dtype, device=device_from or torch.device("cpu"), items=items,
                         gated_by=gated_by, dtype_source=source)


@dataclass(frozen=True)
class Agreement(Property):
    """A :class:`Property` whose main test is agreement with the reference, plus dtype and device.

    Attributes (besides :class:`Property`'s):
        reference: the reference function, called on the inputs in float64; or a tuple of
            references, all correct conventions (improved-diffusion's tanh approximation of
            the normal CDF and the exact one): the values pass when they match any of them.
            A failure is reported against the first.
        tolerance: how close the values must be (the grading tolerance), with its justification;
            ``diagnosis_tolerance`` (:class:`Property`) is how close a known mistake must come.
        scale: ``scale(inputs_in_float64)``, the size the round-off is relative to (the formula's
            terms, :func:`~grader.checks.compare.compare`); None: |expected|. ``scale_what`` names it.
        value_dtype_from: the argument whose dtype, with the result's, picks the tolerance
            (float64's only when both are float64); None: the result's dtype alone.
        outputs: names of the items when the function returns a tuple, else None.
        broadcastable: names of tuple items that may come back broadcastable to the expected shape.
        dtype_from: the argument whose dtype the output must have, or a fixed dtype.
        device_from: the argument whose device the output must be on (None: the CPU).
        points: points for the values; ``dtype_points``: for dtype and device (0: no such test).
        what: the phrase naming the values test; ``dtype_what`` names the dtype-and-device test.
        extra_aspects: more tests of the same outputs, after those two (e.g. :class:`~grader.checks.calls.ModelCalls`).
    """

    aspects: tuple[Aspect, ...] = ()
    reference: Callable | tuple[Callable, ...] | None = None
    tolerance: Tolerance = DEFAULT_TOLERANCE
    scale: Callable[[Inputs], torch.Tensor] | None = None
    scale_what: str = ""
    value_dtype_from: str | None = None
    outputs: tuple[str, ...] | None = None
    broadcastable: frozenset = frozenset()
    dtype_from: Any = None
    device_from: str | None = None
    points: float = 1.0
    dtype_points: float = 0.0
    what: str = "matches the reference"
    dtype_what: str = "output dtype and device follow the input"
    extra_aspects: tuple[Aspect, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        aspects = [Aspect(self.what, self.points, self._judge_values)]
        if self.dtype_points:
            aspects.append(dtype_device_aspect(self.dtype_from, self.device_from, self.dtype_points, self.dtype_what,
                                               items=self._items, gated_by=(self.what,)))
        object.__setattr__(self, "aspects", tuple(aspects) + tuple(self.extra_aspects))

    def _items(self, value: Any) -> list[tuple[str, Any]]:
        if self.outputs is None:
            return [("the result", value)]
        items = as_tuple(value, self.outputs, "the result")
        return [(f"`{name}` (item {i} of the result)", item) for i, (name, item) in enumerate(zip(self.outputs, items))]

    def _judge_values(self, inputs: Inputs, outcome: Outcome) -> None:
        references = self.reference if isinstance(self.reference, tuple) else (self.reference,)
        first: Mismatch | None = None
        for reference in references:
            try:
                self._compare(inputs, outcome, reference)
                return
            except Mismatch as mismatch:
                first = first or mismatch
        raise first

    def _compare(self, inputs: Inputs, outcome: Outcome, reference: Callable) -> None:
        expected = inputs.call_reference(reference)
        expected_items = [expected] if self.outputs is None else list(expected)
        scale = self.scale(inputs.in_float64()) if self.scale is not None else None
        scales = [scale] * len(expected_items) if not isinstance(scale, (tuple, list)) else list(scale)
        dtype = inputs.arguments()[self.value_dtype_from].dtype if self.value_dtype_from else None
        for (label, got), exp, name, size in zip(self._items(outcome.value), expected_items, self.outputs or ("",),
                                                 scales):
            compare(got, exp, self.tolerance, label, broadcast=name in self.broadcastable, scale=size,
                    scale_what=self.scale_what, dtype=dtype)
