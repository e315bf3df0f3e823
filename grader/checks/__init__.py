"""The kinds of checks an exercise declares.

* :class:`Agreement` — agreement with the reference (plus dtype and device) on hypothesis-drawn inputs;
* :class:`Property` — any property of each output, on hypothesis-drawn inputs;
* :class:`Statistical` — the law of a sampler's output, at a stated false-failure probability;
* :class:`Signatures` — each function defined with the curriculum's signature.

Shared pieces: :class:`Inputs`, :class:`Context`, :class:`Tolerance`, :class:`Mismatch`.
"""

from grader.checks.base import Check, Context, Inputs, Outcome, TestSpec, Verdict, describe_value, stable_seed
from grader.checks.compare import DEFAULT_TOLERANCE, Mismatch, Tolerance, as_tensor, as_tuple, compare_values
from grader.checks.property import Agreement, Aspect, Diagnosis, Property, draw_cases, dtype_device_aspect
from grader.checks.statistical import StatReport, Statistical, Unanswered, value_of
from grader.checks.structure import Signatures

__all__ = [
    "Agreement",
    "Aspect",
    "Check",
    "Context",
    "DEFAULT_TOLERANCE",
    "Diagnosis",
    "Inputs",
    "Mismatch",
    "Outcome",
    "Property",
    "Signatures",
    "StatReport",
    "Statistical",
    "TestSpec",
    "Tolerance",
    "Unanswered",
    "Verdict",
    "as_tensor",
    "as_tuple",
    "compare_values",
    "describe_value",
    "draw_cases",
    "dtype_device_aspect",
    "stable_seed",
    "value_of",
]
