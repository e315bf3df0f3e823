"""The kinds of checks an exercise declares, and the pieces they are made of.

A declaration (``grader/exercises/NAME.py``) imports only this package, ``grader.exercises``
(and its ``_common`` vocabulary) and ``reference``.

Checks (each a frozen dataclass; ``tests()`` announces the graded tests, ``run(ctx)`` judges them):

* :class:`Agreement` — agreement with the reference on hypothesis-drawn inputs (the inputs
  in float64 for the reference), plus an optional "dtype and device" point. ``reference``
  may be a tuple of references, all correct conventions: the values pass when they match any.
  ``tolerance`` is the grading tolerance, ``diagnosis_tolerance`` the one for hints; ``scale``
  makes the tolerance relative to the formula's terms rather than to |expected|.
* :class:`Property` — any judges (:class:`Aspect`) of each output on hypothesis-drawn inputs,
  with :class:`Diagnosis` hints (:func:`swapped`: a tuple returned in the wrong order), shrinking to the smallest failing input, and the meta-device
  probe of device aspects.
* :class:`Law` — a sampler against the exact law of its output (``reference.laws``): a
  ``draw(ctx)`` gives the calls and their laws (:class:`LawDraw` of :class:`Sample`), the
  outputs are standardised (:func:`standardise`), a :class:`Battery` of tests runs at the
  check's level ``alpha`` (Bonferroni), and known mistakes are named by the law they follow
  (``mistakes``: :class:`Diagnosis` whose ``wrong(draw)`` returns the laws).
* :class:`Statistical` — a hand-written statistical procedure ``procedure(ctx, alpha) ->
  StatReport`` (mode weights of a mixture, noises recovered from a chain) for what is not a law.
* :class:`Behaviour` (:mod:`grader.checks.modules`) — a class graded through a *scenario*: a
  probe that builds the student's ``nn.Module`` with inputs the grader chose, calls its
  methods, trains it, and records plain values; the same scenario played by the reference
  classes here gives the expected record (an :class:`Agreement` of the record's tensors),
  ``extra`` aspects judge the rest (:func:`field`, :func:`tensor_field`; :func:`linear_spec`
  builds an ``nn.Linear`` argument, :func:`scenario_inputs` adds the step to hand-made inputs).
* :class:`Signatures` — each function defined with the curriculum's signature (added by
  ``Exercise.all_checks``).

Aspects (tests of a :class:`Property`), one judge each:

* :func:`output_aspect` — the form of the result: shape, dtype, device, finite values;
  :func:`dtype_device_aspect` — dtype and device only. Both take ``gated_by``: the value
  aspects they depend on, so that the form of wrong values (``torch.zeros_like(x)``, NaN)
  earns nothing; :class:`Agreement` gates its own dtype point.
* :class:`ModelCalls` — a recorded model's calls: count, batch sizes, the level (t or σ) as a
  ``(B,)`` tensor, in order (``order="blocks"``) or per level with the ends fixed (``"ends"``).
  In blocks order an expected block may carry the model's conditions (``(level, rows, cond)``,
  judged row by row); ``merge=False`` keeps every call a block of its own (one batched call is
  not two halves), and ``per_row=True`` accepts a ``(B,)`` t whose rows differ, compared row by
  row (cfg's one call on [uncond; cond] at t repeated).
* :class:`Reproducible` — the same generator seed gives the same samples (and another seed
  others): its probe :func:`seeded_runs` runs the function several times.
* :class:`Traced` — the states a function's model was evaluated at (probe :func:`traced_run`),
  for tests of a chain's transitions.

Comparing and inputs:

* :func:`compare` — the one comparator, |got − expected| ≤ atol + rtol·scale with the scale
  |expected| or the size of the formula's terms; :func:`show` formats values for reports;
  :func:`as_tensor` refuses anything but a real, dense tensor with values (meta, sparse and
  complex results are clear failures); :class:`Tolerance` carries its required ``why``.
* :class:`Inputs` (``args``, ``kwargs``, ``notes``, ``meta``, ``hidden`` probe-only arguments)
  and :class:`Context`, whose ``ctx.generator(*tags)`` draws inputs, and ``ctx.generator_spec``
  and ``ctx.model_spec`` build the student's generator and model arguments on the grading
  device. The course's vocabulary (dtypes, seeds, schedules, Gaussian toy draws) is in
  :mod:`grader.exercises._common`.
* Probes (harnesses shipped as source to the student's process) see only their arguments,
  ``torch`` and the builtins; a probe that uses any other name fails when it is declared
  (:class:`ProbeError`).
"""

from grader.checks.base import (
    Check,
    Context,
    Inputs,
    Outcome,
    ProbeError,
    TestSpec,
    Verdict,
    check_probe,
    describe_value,
    stable_seed,
)
from grader.checks.compare import (
    DEFAULT_TOLERANCE,
    Mismatch,
    Tolerance,
    as_tensor,
    as_tuple,
    compare,
    compare_values,
    show,
)
from grader.checks.property import (
    Agreement,
    Aspect,
    Diagnosis,
    Property,
    draw_cases,
    dtype_device_aspect,
    output_aspect,
    swapped,
)
from grader.checks.statistical import StatReport, Statistical, Unanswered, value_of
from grader.checks.calls import ModelCalls, Reproducible, Traced, seeded_runs, traced_run
from grader.checks.law import Battery, Law, LawDraw, Sample, standardise
from grader.checks.modules import Behaviour, ReferenceNamespace, field, linear_spec, scenario_inputs, tensor_field
from grader.checks.structure import Signatures

__all__ = [
    "Agreement",
    "Aspect",
    "Battery",
    "Behaviour",
    "Check",
    "Context",
    "DEFAULT_TOLERANCE",
    "Diagnosis",
    "Inputs",
    "Law",
    "LawDraw",
    "Mismatch",
    "ModelCalls",
    "Outcome",
    "ProbeError",
    "ReferenceNamespace",
    "Property",
    "Reproducible",
    "Sample",
    "Signatures",
    "StatReport",
    "Statistical",
    "TestSpec",
    "Tolerance",
    "Traced",
    "Unanswered",
    "Verdict",
    "as_tensor",
    "as_tuple",
    "check_probe",
    "compare",
    "compare_values",
    "describe_value",
    "draw_cases",
    "dtype_device_aspect",
    "field",
    "linear_spec",
    "output_aspect",
    "scenario_inputs",
    "seeded_runs",
    "show",
    "stable_seed",
    "swapped",
    "standardise",
    "traced_run",
    "tensor_field",
    "value_of",
]
