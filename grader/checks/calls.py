"""Judges of how a sampler uses its model and its generator: :class:`ModelCalls`, :class:`Reproducible`.

Both are aspects (:class:`~grader.checks.property.Aspect`) of a
:class:`~grader.checks.property.Property`, judged on every drawn case.

* :class:`ModelCalls` reads the calls a recorded model logged (``ctx.model_spec(...,
  record=True)``; ``Outcome.model_calls``): how many sample-evaluations at each level
  (a timestep t or a noise level σ), with the level passed as a ``(B,)`` tensor, in
  which order; optionally how many calls (``merge=False``), each row's timestep
  (``per_row``) and each row's condition.
* :class:`Traced` runs the function once through :func:`traced_run`, with its model
  wrapped so that every input the model is evaluated at comes back (the states of a
  chain, for tests of its transitions).
* :class:`Reproducible` runs the function several times through one probe,
  :func:`seeded_runs` — with generators seeded alike, and optionally one seeded
  otherwise — and judges that the same seed gives the same samples (and another seed
  others). Its :meth:`Reproducible.first` picks the first run's result for the
  output aspects of the same check.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch

from grader.checks.base import Context, Inputs, Outcome
from grader.checks.compare import Mismatch, as_tensor, as_tuple
from grader.checks.property import Aspect

__all__ = ["ModelCalls", "Reproducible", "Traced", "seeded_runs", "traced_run"]

#: One expected group of sample-evaluations: ``(level, rows)`` or ``(level, rows, cond)``. ``level`` is
#: None (a model that takes none), a number (every row at that t or σ) or, with ``per_row``, a
#: ``(rows,)`` tensor of each row's level; ``cond``, when given, the ``(rows,)`` conditions in order.
Block = tuple


def _same_level(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple) or isinstance(b, tuple):
        a, b = (x if isinstance(x, tuple) else (x,) for x in (a, b))
        return len(a) == len(b) and all(_same_level(x, y) for x, y in zip(a, b))
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))


def _same_cond(got: torch.Tensor | None, expected: torch.Tensor) -> bool:
    return (isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(expected.shape)
            and not got.is_floating_point() and torch.equal(got.long(), expected.long()))


def _listed(values, limit: int = 16) -> str:
    values = list(values)
    return "[" + ", ".join(f"{v:.5g}" if isinstance(v, float) else str(v) for v in values[:limit]) + (
        ", …]" if len(values) > limit else "]")


def _rows_levels(group) -> str:
    """Each row's level of a group, listed (or "none")."""
    if group.level is None:
        return "none"
    return _listed(list(group.level) if isinstance(group.level, tuple) else [group.level] * group.rows)


@dataclass
class _Group:
    """Consecutive sample-evaluations read from the log: the level (None, a number, or a tuple of each
    row's level), the rows, the conditions (or None) and what is wrong with the level ("" if nothing)."""

    level: Any
    rows: int
    cond: torch.Tensor | None = None
    problem: str = ""


@dataclass(frozen=True)
class ModelCalls:
    """The expected evaluations of a recorded model, and the judge of the logged ones.

    Attributes:
        expected: ``expected(inputs) -> [(level, rows), ...]`` or ``[(level, rows, cond), ...]``
            (see :data:`Block`): one run's evaluations in order (level None where the model takes
            none, e.g. a plain score). With a ``cond`` the model's conditions (``eps_model(x, t,
            cond)``, logged per call) must be those, row by row; without one they are not judged.
        level: ``"timestep"`` (t a LongTensor of shape (B,)) or ``"noise level"`` (σ a
            floating tensor of shape (B,), the same value for the whole batch unless ``per_row``).
        order: ``"blocks"``: the calls must be exactly the expected blocks, in order;
            ``"ends"``: each level gets its number of sample-evaluations, in any batching, and
            the first and last calls are at the first and last level (a loop over samples is
            accepted). ``merge``, ``per_row`` and conditions apply to ``"blocks"``.
        merge: ``"blocks"`` order: consecutive calls at one level are merged into one block, so
            any split of a batch is accepted (the default). False: every call is a block of its
            own, so the number of calls is judged ("one batched call", not two halves).
        per_row: the rows of one call may have different levels (cfg's one batched call on
            [uncond; cond] at a batch of per-row timesteps, t repeated): such a call is one block
            whose level is each row's, compared row by row (never merged with its neighbours).
            Without it, a call whose rows differ in level is refused.
        runs: how many runs of the function one outcome holds (a :class:`Reproducible` probe
            runs it several times).
        model: the model argument's name, for messages.
        what: ``what(inputs) -> str``, the sentence that says what was expected (blocks order),
            or names the walk ("ddim_timesteps(1000, 10, 'leading')", ends order).
    """

    expected: Callable[[Inputs], list[Block]]
    level: str = "timestep"
    order: str = "blocks"
    merge: bool = True
    per_row: bool = False
    runs: int = 1
    model: str = "the model"
    what: Callable[[Inputs], str] = lambda inputs: ""

    def aspect(self, name: str, points: float = 1) -> Aspect:
        return Aspect(name, points, self.judge, shrink=False)

    def judge(self, inputs: Inputs, outcome: Outcome) -> None:
        calls = outcome.model_calls[0] if outcome.model_calls else []
        if self.order == "ends":
            self._judge_ends(inputs, calls)
        else:
            self._judge_blocks(inputs, calls)

    # -- levels ------------------------------------------------------------------------------

    def _timestep(self, number: int, call: dict) -> torch.Tensor:
        level = call.get("level")
        if not isinstance(level, torch.Tensor) or level.dtype != torch.long or tuple(level.shape) != (call["batch"],):
            shown = "nothing" if level is None else (
                "a single number (not one timestep per sample)" if isinstance(level, torch.Tensor) and level.ndim == 0
                else f"a {str(level.dtype).replace('torch.', '')} tensor of shape {tuple(level.shape)}"
                if isinstance(level, torch.Tensor) else type(level).__name__)
            raise Mismatch(f"call {number} of {self.model} passed t as {shown} for a batch of {call['batch']}; "
                           "the model takes t as a LongTensor of shape (B,), one timestep per sample "
                           "(torch.full((B,), t, dtype=torch.long, device=x.device))")
        return level

    def _group(self, number: int, call: dict) -> _Group:
        """One logged call as a group: its level (checked), rows and conditions."""
        rows, level = int(call.get("batch", -1)), call.get("level")
        cond = call.get("cond") if isinstance(call.get("cond"), torch.Tensor) else None
        group = _Group(None, rows, cond)
        if level is None:
            return group
        if self.level == "timestep":
            try:
                t = self._timestep(number, call)
            except Mismatch as exc:
                group.problem = str(exc)
                return group
            values = t.tolist()
        else:
            level = torch.as_tensor(level).detach().to("cpu", torch.float64)
            if level.ndim != 1 or level.numel() != rows:
                group.problem = (f"{self.model} was called with sigma of shape {tuple(level.shape)} for a batch of "
                                 f"{rows}; the course's score models take σ as a float tensor of shape (B,)")
            values = level.flatten().tolist()
        # One level for the whole call: timesteps all equal, σ's equal to 1e-6 relative (a σ expanded
        # from one value is exact; the levels of a schedule differ by far more).
        if not values:
            group.level = None if self.level == "timestep" else float("nan")
        elif all(v == values[0] if self.level == "timestep" else abs(v - values[0]) <= 1e-6 * abs(values[0])
                 for v in values):
            group.level = values[0]
        elif self.per_row:
            group.level = tuple(values)
        else:
            group.level = values[0]
            group.problem = group.problem or (f"{self.model} was called with different timesteps within one batch"
                                              if self.level == "timestep"
                                              else f"{self.model} was called with different σ within one batch")
        return group

    def _merged(self, calls: list[dict]) -> list[_Group]:
        """The calls as groups; with ``merge``, consecutive calls at one level joined into one."""
        groups: list[_Group] = []
        for number, call in enumerate(calls, start=1):
            group = self._group(number, call)
            last = groups[-1] if groups else None
            if (self.merge and last is not None and not isinstance(group.level, tuple)
                    and not isinstance(last.level, tuple) and _same_level(last.level, group.level)):
                last.rows += group.rows
                last.cond = (torch.cat([last.cond, group.cond]) if last.cond is not None and group.cond is not None
                             else None)
                last.problem = last.problem or group.problem
            else:
                groups.append(group)
        return groups

    def _describe(self, groups: list[_Group]) -> str:
        parts = []
        for g in groups[:8]:
            name = "t" if self.level == "timestep" else "σ"
            where = "" if g.level is None else (f" at {name} = {_listed(g.level, 8)}" if isinstance(g.level, tuple)
                                                else f" at {name} = {g.level:.5g}")
            parts.append(f"{g.rows} rows{where}" + ("" if g.cond is None else f" (cond {_listed(g.cond.tolist(), 8)})"))
        more = f", … ({len(groups)} groups)" if len(groups) > 8 else ""
        return "[" + ", ".join(parts) + more + "]"

    def _as_calls(self, blocks: list[Block]) -> list[dict]:
        dtype = torch.long if self.level == "timestep" else torch.float64
        calls = []
        for level, rows, *cond in blocks:
            if rows <= 0:
                continue
            call = {"batch": rows}
            if level is not None:
                call["level"] = (torch.as_tensor(level).to("cpu", dtype).reshape(rows)
                                 if isinstance(level, torch.Tensor) else torch.full((rows,), level, dtype=dtype))
            if cond and cond[0] is not None:
                call["cond"] = torch.as_tensor(cond[0]).to("cpu").reshape(rows)
            calls.append(call)
        return calls

    # -- the two orders ----------------------------------------------------------------------

    def _judge_blocks(self, inputs: Inputs, calls: list[dict]) -> None:
        got = self._merged(calls)
        for group in got:
            if group.problem:
                raise Mismatch(group.problem)
        one_run = [block for block in self.expected(inputs) if block[1] > 0]
        expected = self._merged(self._as_calls(one_run * self.runs))
        if not self.merge:
            self._judge_each_call(inputs, got, expected)
            return
        ok = len(got) == len(expected) and all(
            g.rows == e.rows and _same_level(g.level, e.level) and (e.cond is None or _same_cond(g.cond, e.cond))
            for g, e in zip(got, expected))
        if not ok:
            half = self._describe(self._merged(self._as_calls(one_run)))
            runs = "Your two runs evaluated" if self.runs == 2 else (
                "Your runs evaluated" if self.runs > 2 else "Your function evaluated")
            raise Mismatch(f"{self.what(inputs)}\nExpected{' per run' if self.runs > 1 else ''}, in this order: "
                           f"{half}\n{runs}: {self._describe(got)}", expected=half, got=self._describe(got))

    def _judge_each_call(self, inputs: Inputs, got: list[_Group], expected: list[_Group]) -> None:
        """Unmerged blocks: the number of calls, then each call's rows, levels and conditions, first difference named."""
        what = self.what(inputs)
        why = f": {what}" if what else ""
        if len(got) != len(expected):
            times = lambda n: f"{n} time{'s' if n != 1 else ''}"  # noqa: E731
            wanted = (f"1 call of {expected[0].rows} rows" if len(expected) == 1 else
                      f"{len(expected)} calls (batches {_listed([e.rows for e in expected], 8)})")
            raise Mismatch(f"{self.model} was called {times(len(got))} (batches {_listed([g.rows for g in got], 8)}); "
                           f"expected {wanted}{why}",
                           expected=self._describe(expected), got=self._describe(got))
        levels = "timesteps" if self.level == "timestep" else "noise levels"
        for number, (g, e) in enumerate(zip(got, expected), start=1):
            call = self.model if len(expected) == 1 else f"call {number} of {self.model}"
            if g.rows != e.rows:
                raise Mismatch(f"{call} was called on {g.rows} rows; expected {e.rows}{why}")
            if not _same_level(g.level, e.level):
                raise Mismatch(f"{call} got the {levels} {_rows_levels(g)}; expected {_rows_levels(e)}{why}")
            if e.cond is not None and not _same_cond(g.cond, e.cond):
                shown_cond = _listed(g.cond.tolist()) if isinstance(g.cond, torch.Tensor) else "no conditions"
                raise Mismatch(f"{call} got the conditions {shown_cond}; expected {_listed(e.cond.tolist())}{why}")

    def _judge_ends(self, inputs: Inputs, calls: list[dict]) -> None:
        walk = [level for level, _ in self.expected(inputs)]
        rows = {level: n for level, n in self.expected(inputs)}
        where = self.what(inputs)
        if not calls:
            raise Mismatch(f"{self.model} was never called")
        counts: Counter = Counter()
        for number, call in enumerate(calls, start=1):
            counts.update(self._timestep(number, call).tolist())
        expected = Counter(rows)
        if counts != expected:
            extra = sorted(set(counts) - set(expected))
            missing = sorted(set(expected) - set(counts))
            detail = []
            if extra:
                detail.append(f"at timesteps that are not in {where}: {extra[:8]}")
            if missing:
                detail.append(f"never at {missing[:8]}")
            wrong = [t for t in walk if t in counts and counts[t] != rows[t]]
            if wrong:
                detail.append(f"{counts[wrong[0]]} sample-evaluations at t = {wrong[0]} instead of {rows[wrong[0]]}")
            batch = rows[walk[0]] if walk else 0
            raise Mismatch(f"{self.model} made {sum(counts.values())} sample-evaluations in {len(calls)} calls; "
                           f"expected {len(walk)} per sample ({sum(rows.values())} for a batch of {batch}), one at "
                           f"each of {where} = {walk[:12]}{' …' if len(walk) > 12 else ''}: " + "; ".join(detail))
        first, last = calls[0]["level"].tolist()[0], calls[-1]["level"].tolist()[0]
        if (first, last) != (walk[0], walk[-1]):
            down = walk[0] > walk[-1]
            raise Mismatch(f"the first model call is at t = {first} and the last at t = {last}; "
                           f"{'sampling' if down else 'inversion'} walks {where} "
                           f"{'down from' if down else 'up from'} t = {walk[0]} to t = {walk[-1]}")


def seeded_runs(ns, *args, _function, _generators, **kwargs):
    """Probe: ``function(*args, **kwargs, generator=g)`` once per generator; the results and the default dtype."""
    kwargs.pop("generator", None)
    function = getattr(ns, _function)
    return tuple(function(*args, **kwargs, generator=g) for g in _generators) + (str(torch.get_default_dtype()),)


@dataclass(frozen=True)
class Reproducible:
    """Same generator seed, same samples (and, with ``other_seed``, another seed, other samples).

    Use :meth:`build` to wrap a case builder whose inputs carry the student's generator in
    ``kwargs["generator"]`` (``ctx.generator_spec(seed=...)``), :data:`seeded_runs` as the
    check's probe, :meth:`aspect` for the test itself, and :meth:`first` as the ``items``
    of output aspects that judge the first run's result. The probe runs the function with
    that generator, a second one seeded alike and, with ``other_seed``, a third seeded
    ``seed + 1``; a recorded model logs every run (``ModelCalls(runs=...)``).

    Attributes:
        function: the function under test.
        other_seed: also require that another seed gives other samples (only where a correct
            sampler's output depends on its noise for every case drawn).
        advice: what to tell a student whose runs differ.
    """

    function: str
    other_seed: bool = False
    advice: str = ("draw every random number with `generator` (torch.randn(shape, generator=generator, ...)), "
                   "never with the global random state (torch.randn_like, torch.randn without generator)")

    @property
    def runs(self) -> int:
        return 3 if self.other_seed else 2

    probe = staticmethod(seeded_runs)

    def build(self, build: Callable[[Any, Context], Inputs]) -> Callable[[Any, Context], Inputs]:
        def wrapped(case: Any, ctx: Context) -> Inputs:
            inputs = build(case, ctx)
            spec = inputs.kwargs["generator"]
            generators = [spec, dict(spec)] + ([{**spec, "seed": spec["seed"] + 1}] if self.other_seed else [])
            inputs.hidden.update({"_function": self.function, "_generators": generators})
            return inputs

        return wrapped

    def results(self, outcome: Outcome) -> list[torch.Tensor]:
        names = ("first", "again", "other")[: self.runs] + ("default dtype",)
        items = as_tuple(outcome.value, names, "the probe's result")
        return [as_tensor(x, f"{self.function}'s result" + ("" if i == 0 else f" ({name} run)"))
                for i, (x, name) in enumerate(zip(items, names[:-1]))]

    def default_dtype(self, outcome: Outcome) -> str:
        return outcome.value[-1]

    def first(self, value: Any) -> list[tuple[str, Any]]:
        """``items`` for output aspects: the first run's result."""
        items = as_tuple(value, ("first",) * self.runs + ("default dtype",), "the probe's result")
        return [(f"{self.function}'s result", items[0])]

    def form_aspect(self, name: str, points: float = 1, *, shape: Callable[[Inputs], tuple] | None = None,
                    dtype: Callable[[Inputs], torch.dtype] | str | None = None,
                    device: Callable[[Inputs], Any] | str | None = None, finite: bool = False,
                    gated_by: tuple[str, ...] = (), why: str = "") -> Aspect:
        """The first run's shape, dtype, device (and finite values), like :func:`~grader.checks.output_aspect`.

        ``dtype="default"`` is the student's process's default dtype (where a sampler draws its
        start), ``device="generator"`` the generator's device; otherwise functions of the inputs.
        ``why`` follows a wrong dtype or device in the message.
        """

        def judge(inputs: Inputs, outcome: Outcome) -> None:
            first = self.results(outcome)[0]
            label = f"{self.function}'s result"
            if shape is not None and tuple(first.shape) != tuple(shape(inputs)):
                raise Mismatch(f"{label} has shape {tuple(first.shape)}; expected {tuple(shape(inputs))}")
            want = self.default_dtype(outcome) if dtype == "default" else (dtype(inputs) if dtype else None)
            if want is not None and str(first.dtype) != str(want):
                source = " (the default dtype)" if dtype == "default" else ""
                raise Mismatch(f"{label} has dtype {first.dtype}; expected {want}{source}{why}")
            where = torch.device(inputs.kwargs["generator"]["device"]) if device == "generator" else (
                device(inputs) if device else None)
            if where is not None and first.device.type != torch.device(where).type:
                source = " (the generator's device)" if device == "generator" else ""
                raise Mismatch(f"{label} is on {first.device}; expected {where}{source}{why}")
            if finite and not bool(torch.isfinite(first).all()):
                raise Mismatch(f"{label} contains NaN or infinite values")

        return Aspect(name, points, judge, shrink=False, gated_by=gated_by)

    def aspect(self, name: str, points: float = 1, *, shape: Callable[[Inputs], tuple] | None = None,
               finite: bool = False, gated_by: tuple[str, ...] = ()) -> Aspect:
        """The test; with ``shape`` (a function of the inputs) and ``finite`` it first requires the first
        run's result to have that shape and finite values (samples that can be compared at all)."""

        def judge(inputs: Inputs, outcome: Outcome) -> None:
            results = self.results(outcome)
            first, again = results[0], results[1]
            if shape is not None and tuple(first.shape) != tuple(shape(inputs)):
                raise Mismatch(f"{self.function}'s result has shape {tuple(first.shape)}; expected {tuple(shape(inputs))}")
            if finite and not bool(torch.isfinite(first).all()):
                raise Mismatch(f"{self.function}'s result contains NaN or infinite values")
            if first.shape != again.shape or not torch.equal(first.to("cpu"), again.to("cpu")):
                raise Mismatch(f"two runs with generators seeded alike gave different samples: {self.advice}")
            if self.other_seed and torch.equal(first.to("cpu"), results[2].to("cpu")):
                raise Mismatch(f"generators with different seeds gave the same samples: is {self.function} "
                               "reseeding, or ignoring `generator`?")

        return Aspect(name, points, judge, gated_by=gated_by)


def traced_run(ns, *args, _function, _model, **kwargs):
    """Probe: ``function(*args, **kwargs)`` with the model argument ``_model`` (a position or a name) wrapped to
    record every ``(x, level)`` it is evaluated at; the result, the states and the levels."""
    states, levels = [], []
    args = list(args)
    model = args[_model] if isinstance(_model, int) else kwargs[_model]

    def traced(x, level):
        states.append(x.detach().clone())
        levels.append(torch.as_tensor(level).detach().clone())
        return model(x, level)

    if isinstance(_model, int):
        args[_model] = traced
    else:
        kwargs[_model] = traced
    return getattr(ns, _function)(*args, **kwargs), states, levels


@dataclass(frozen=True)
class Traced:
    """The states a function's model was evaluated at, in order (see :func:`traced_run`).

    ``inputs(inputs)`` marks a call for the probe (``ctx.call(function, [...], Traced.probe)``);
    :meth:`states` joins the evaluations on parts of the batch into full-batch states.
    """

    function: str
    model: int | str = 0

    probe = staticmethod(traced_run)

    def inputs(self, inputs: Inputs) -> Inputs:
        inputs.hidden.update({"_function": self.function, "_model": self.model})
        return inputs

    def states(self, value: Any, batch: int, shape: tuple | None = None) -> tuple[Any, list[torch.Tensor], list[float]]:
        """The result, the full-batch states (float64, CPU) and the first level of each.

        A Mismatch if they cannot be read, do not add up to full batches, are not all finite, or
        (with ``shape``) the states do not have that shape.
        """
        out, states, levels = as_tuple(value, ("result", "states", "levels"), "the probe's result")
        if not isinstance(states, (list, tuple)) or not isinstance(levels, (list, tuple)):
            raise Mismatch(f"{self.function}'s model calls could not be recorded")
        joined, joined_levels, pending = [], [], []
        for x, level in zip(states, levels):
            pending.append(as_tensor(x, "a state passed to the model").detach().to("cpu", torch.float64))
            level = as_tensor(level, "a level passed to the model").detach().to("cpu", torch.float64).flatten()
            rows = sum(p.shape[0] for p in pending)
            if rows == batch:
                joined.append(torch.cat(pending))
                joined_levels.append(float(level[0]) if level.numel() else float("nan"))
                pending = []
            elif rows > batch:
                raise Mismatch(f"{self.function} evaluated its model on batches that do not add up to the sample batch")
        if pending:
            raise Mismatch(f"{self.function}'s last model evaluation did not cover the whole batch")
        if not all(bool(torch.isfinite(x).all()) for x in joined):
            raise Mismatch(f"{self.function}'s chain produced NaN or infinite values (seen in the inputs of its model)")
        if shape is not None and joined and tuple(joined[0].shape) != tuple(shape):
            raise Mismatch(f"{self.function}'s model was called with x of shape {tuple(joined[0].shape)}; expected "
                           f"{tuple(shape)}")
        return out, joined, joined_levels
