"""Checks of classes: build the student's ``nn.Module`` in its own process, drive it, judge the values.

An object cannot cross from the student's process to the grader's (only plain data
does, :mod:`grader.sandbox.wire`), so a class is graded through a *scenario*: one
function per exercise, shipped as source like every probe, that receives the student's
namespace and a ``step`` name and plays one story — construct ``ns.LoRALinear(base, r,
alpha)`` with a base layer the grader chose (a module spec), set its weights to values
the grader chose, call its methods, train it a few steps — and returns a dict of plain
values: tensors, numbers, names, lists and dicts of them. Never the module.

The same scenario runs in the grader's process against the reference namespace (the
exercise's ``reference`` module), on the inputs in float64: that is the expected
record. So a :class:`Behaviour` is an :class:`~grader.checks.property.Agreement` whose
function is a class, whose probe is the scenario and whose reference is the scenario
played by the reference classes; it inherits hypothesis' cases and shrinking, the
dtype-and-device test and its meta-device run (a class that creates its parameters on
the CPU fails on the meta device as it would on a GPU), the gating of form on values,
and diagnoses. ``extra`` aspects judge what has no reference value (names, flags,
bit-identity of weights). Statistical checks of a class (its initialisation law) call
the scenario through :meth:`Behaviour.call`-like ``ctx.call(..., probe=scenario)`` with
the step as a hidden argument (:func:`scenario_inputs`).

What a scenario must do to resist hostile classes: find parameters through
``named_parameters()`` and set them with ``copy_`` (a faked attribute then changes
nothing the forward sees, and the forward's values disagree with the grader's), read
weights from the module object the grader passed in, and return only tensors it
computed, so that every verdict rests on values recomputed here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from grader.checks.base import Inputs, Outcome
from grader.checks.compare import Mismatch, as_tensor
from grader.checks.property import Agreement, Aspect
from grader.sandbox import wire

__all__ = ["Behaviour", "ReferenceNamespace", "field", "linear_spec", "scenario_inputs", "tensor_field"]


class ReferenceNamespace:
    """The reference's classes and functions under the curriculum's names, read like the student's namespace."""

    def __init__(self, source: Any) -> None:
        self._names = dict(source) if isinstance(source, dict) else {k: getattr(source, k) for k in source.__all__}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(name) from None


def linear_spec(weight: torch.Tensor, bias: torch.Tensor | None = None) -> dict:
    """An ``nn.Linear`` with these weights, built in the student's process (a module spec)."""
    return wire.module_spec("linear", weight=weight, bias=bias) if bias is not None else \
        wire.module_spec("linear", weight=weight)


def scenario_inputs(step: str, inputs: Inputs) -> Inputs:
    """``inputs`` with the scenario's ``step`` as a hidden keyword (sent, never shown, not given to references)."""
    return Inputs(inputs.args, inputs.kwargs, inputs.notes, inputs.meta, {**inputs.hidden, "step": step})


def field(outcome: Outcome | Any, key: str) -> Any:
    """One entry of a scenario's record (its dict of values), or :class:`Mismatch` saying what came back."""
    value = outcome.value if isinstance(outcome, Outcome) else outcome
    if isinstance(value, dict) and wire.UNSUPPORTED in value:
        raise Mismatch(f"the scenario's record is {value[wire.UNSUPPORTED]}")
    if not isinstance(value, dict) or key not in value:
        raise Mismatch(f"the scenario recorded no {key!r} (a method returned nothing usable)")
    return value[key]


def tensor_field(outcome: Outcome | Any, key: str, what: str) -> torch.Tensor:
    """A record entry that must be a plain tensor (:func:`~grader.checks.compare.as_tensor`)."""
    return as_tensor(field(outcome, key), what)


class _Staged:
    """``build`` of a :class:`Behaviour`: the declared builder, plus the scenario's step."""

    def __init__(self, step: str, build: Callable[[Any, Any], Inputs]) -> None:
        self.step, self.build = step, build

    def __call__(self, case: Any, ctx: Any) -> Inputs:
        return scenario_inputs(self.step, self.build(case, ctx))


class _Played:
    """The scenario played by the reference namespace: the expected items, in ``outputs``' order."""

    def __init__(self, scenario: Callable, namespace: ReferenceNamespace, step: str, outputs: tuple[str, ...]) -> None:
        self.scenario, self.namespace, self.step, self.outputs = scenario, namespace, step, outputs

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        record = self.scenario(self.namespace, *args, step=self.step, **kwargs)
        return tuple(record[key] for key in self.outputs)


@dataclass(frozen=True)
class Behaviour(Agreement):
    """A class (or a function of modules) played through a scenario; its record agrees with the reference's.

    Attributes (besides :class:`~grader.checks.property.Agreement`'s; ``reference`` and ``probe``
    are derived):
        scenario: ``scenario(ns, *args, step=..., **kwargs) -> dict``, run in the student's process
            with ``ns`` the notebook's namespace, and here with the reference's.
        step: which story of the scenario this check plays.
        namespace: the reference module (or a dict of its names) the scenario is played by here.
        outputs: the record's tensor entries compared with the reference's (``points`` for all of
            them); empty when only ``extra`` aspects judge.
        extra: further aspects judging the record (names, flags, bit-identical weights, laws of
            dropout masks) — each gated by the values test when it is a form test.
    """

    scenario: Callable | None = None
    step: str = ""
    namespace: Any = None
    extra: tuple[Aspect, ...] = ()

    def __post_init__(self) -> None:
        if self.scenario is None or not self.step:
            raise TypeError(f"Behaviour of {self.function} needs a scenario and a step")
        object.__setattr__(self, "probe", self.scenario)
        if not isinstance(self.build, _Staged):
            object.__setattr__(self, "build", _Staged(self.step, self.build))
        outputs = tuple(self.outputs or ())
        if outputs:
            played = _Played(self.scenario, ReferenceNamespace(self.namespace), self.step, outputs)
            object.__setattr__(self, "reference", played)
        super().__post_init__()
        aspects = tuple(self.aspects) if outputs else ()
        object.__setattr__(self, "aspects", aspects + tuple(self.extra))
        if not self.aspects:
            raise TypeError(f"Behaviour of {self.function} ({self.step}) judges nothing: give outputs or extra")

    def _items(self, value: Any) -> list[tuple[str, Any]]:
        return [(f"`{key}`", field(value, key)) for key in self.outputs or ()]

    def _diagnose(self, answered: list[tuple[Inputs, Outcome]]) -> str:
        """Diagnoses return the compared entries as a tuple in ``outputs``' order: match them against the record's."""
        keys = tuple(self.outputs or ())
        as_items = [(i, dataclasses.replace(o, value=tuple(o.value[k] for k in keys)))
                    for i, o in answered if o.ok and isinstance(o.value, dict) and all(k in o.value for k in keys)]
        return super()._diagnose(as_items) if keys else ""
