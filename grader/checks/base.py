"""What every check is made of: inputs, outcomes, verdicts, the context, the check protocol."""

from __future__ import annotations

import builtins
import functools
import hashlib
import inspect
import symtable
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from grader.sandbox import models, wire
from grader.sandbox.wire import SPEC

__all__ = [
    "Check",
    "Context",
    "Inputs",
    "Outcome",
    "ProbeError",
    "Runner",
    "TestSpec",
    "Verdict",
    "check_probe",
    "describe_value",
    "stable_seed",
]

KINDS = ("execution", "property", "statistical", "structure")


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts; the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class TestSpec:
    """One graded test, as a check announces it before running."""

    name: str
    points: float
    kind: str


@dataclass
class Verdict:
    """What a check concluded for one of its tests.

    Attributes:
        passed: whether the test passed.
        output: the feedback text a student reads (plain text).
        details: structured material for the HTML report: ``input`` (str), ``expected``
            and ``got`` (str), ``statistics`` (list of dicts), ``plot`` (base64 PNG),
            ``traceback`` (str).
    """

    passed: bool
    output: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What one call into the student's process produced (see :mod:`grader.sandbox.worker`)."""

    status: str
    value: Any = None
    message: str = ""
    error_type: str = ""
    traceback: str = ""
    model_calls: list = field(default_factory=list)
    refusals: list = field(default_factory=list)

    @classmethod
    def from_wire(cls, raw: dict) -> "Outcome":
        keep = {k: raw[k] for k in ("status", "value", "message", "error_type", "traceback",
                                     "model_calls", "refusals") if k in raw}
        return cls(**keep)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def not_implemented(self) -> bool:
        return self.status == "error" and self.error_type == "NotImplementedError"

    def explain(self, function: str) -> str:
        """One sentence on why there is no value, naming ``function``."""
        if self.refusals:
            return f"{function} was refused: {self.refusals[0]}"
        if self.status == "missing":
            return f"{self.message or function} is not defined in the notebook (was its cell deleted, renamed or failing?)"
        if self.not_implemented:
            return f"{function} is not implemented yet (it raises NotImplementedError)"
        if self.status == "error":
            return f"{function} raised {self.message}"
        if self.status == "memory":
            return f"{function} {self.message}"
        if self.status == "timeout":
            return f"{function} {self.message}"
        if self.status == "crashed":
            return f"calling {function}: {self.message}"
        if self.status == "skipped":
            return f"{function} was {self.message}"
        return f"{function}: {self.status} {self.message}".strip()


class Runner(Protocol):
    """Calls into the student's code: a batch of wire calls in, one raw outcome dict per call out."""

    def run(self, calls: list[dict], seeds: list[int]) -> list[dict]: ...


@dataclass
class Inputs:
    """The arguments of one call, named, with notes that say what they are.

    ``args`` are passed positionally in order, ``kwargs`` by name; both appear in
    :meth:`describe`. ``notes`` override the description of an argument (e.g. the
    schedule a tensor came from); ``meta`` carries anything the verifier needs;
    ``hidden`` are keyword arguments for a probe only (sent, never shown to the student
    nor passed to the reference).
    """

    args: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    hidden: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict:
        return {"args": list(self.args.values()), "kwargs": {**self.kwargs, **self.hidden}}

    def arguments(self) -> dict[str, Any]:
        return {**self.args, **self.kwargs}

    def in_float64(self) -> "Inputs":
        """The same inputs with every floating tensor in float64: what the reference sees."""
        return Inputs(
            {k: _float64(v) for k, v in self.args.items()},
            {k: _float64(v) for k, v in self.kwargs.items()},
            self.notes,
            self.meta,
            self.hidden,
        )

    def call_reference(self, fn: Callable) -> Any:
        logs: list = []
        built = self.in_float64()
        args = wire.decode(list(built.args.values()), lambda s: models.build(s, logs))
        kwargs = wire.decode(built.kwargs, lambda s: models.build(s, logs))
        return fn(*args, **kwargs)

    def describe(self) -> str:
        lines = []
        for name, value in self.arguments().items():
            lines.append(f"  {name} = {self.notes.get(name) or describe_value(value)}")
        return "\n".join(lines)


def _float64(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.float64)
    if isinstance(value, dict) and SPEC in value:
        return {**value, "params": {k: _float64(v) for k, v in value.get("params", {}).items()}}
    if isinstance(value, (list, tuple)):
        return type(value)(_float64(v) for v in value)
    return value


def describe_value(value: Any, max_elements: int = 12) -> str:
    """A short readable description: dtype, shape, device and, when small, the values."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        where = "" if value.device.type == "cpu" else f" on {value.device}"
        head = f"{dtype} tensor of shape {tuple(value.shape)}{where}"
        if value.numel() <= max_elements and value.device.type != "meta":  # a meta tensor has no values
            return f"{head}: {format_tensor(value)}"
        return head
    if isinstance(value, dict) and SPEC in value:
        return {"generator": f"torch.Generator seeded {value.get('seed')}",
                "model": f"a model ({value.get('kind')})",
                "module": f"an nn.Module ({value.get('kind')})"}.get(value[SPEC], "an object")
    return repr(value)


def format_tensor(value: torch.Tensor, precision: int = 6) -> str:
    flat = value.detach().to("cpu")
    if flat.is_floating_point():
        flat = flat.double()
    text = repr(flat.tolist())
    if flat.is_floating_point():
        import re

        text = re.sub(r"-?\d+\.\d+(e[-+]?\d+)?", lambda m: f"{float(m.group()):.{precision}g}", text)
    return text


#: What a probe finds in the student's process besides its arguments (grader.sandbox.worker's scope).
PROBE_SCOPE = frozenset({"torch"}) | frozenset(dir(builtins))


class ProbeError(TypeError):
    """A probe uses a name it will not find in the student's process."""


@functools.lru_cache(maxsize=None)
def probe_source(probe: Callable) -> str:
    """The source of a probe, read once per process (so a file edited mid-run cannot ship a mismatch)."""
    source = textwrap.dedent(inspect.getsource(probe))
    check_probe(probe, source)
    return source


def check_probe(probe: Callable, source: str | None = None) -> None:
    """Raise :class:`ProbeError` if ``probe`` reads a global name that is not in :data:`PROBE_SCOPE`.

    A probe is shipped as source and run in the student's process with only ``torch`` and
    the builtins in scope, so a helper or module of the declaration it refers to (``math``,
    ``ref``, a constant) would raise NameError there, far from its cause. Checked when a
    declaration is built, so the mistake fails the import of the exercise.
    """
    source = source or textwrap.dedent(inspect.getsource(probe))
    missing: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if (symbol.is_global() or symbol.is_declared_global()) and symbol.is_referenced() \
                    and symbol.get_name() not in PROBE_SCOPE:
                missing.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    top = symtable.symtable(source, "<probe>", "exec")
    for child in top.get_children():
        visit(child)
    if missing:
        raise ProbeError(f"probe {probe.__name__} uses {', '.join(sorted(missing))}, which the student's process "
                         "does not give it (a probe sees only its arguments, torch and the builtins)")


@dataclass
class Context:
    """What a check needs to run: where to call, where tensors live, which seed.

    Attributes:
        runner: calls into the student's code.
        device: where inputs (and the reference) live.
        seed: the grading seed; every draw derives from it and the check's name.
        exercise: the exercise's name, part of every derived seed.
        scale: multiplies the number of examples (``check()`` in a notebook uses fewer).
        public_only: run only public checks (``check()`` in a notebook).
    """

    runner: Runner
    device: torch.device
    seed: int
    exercise: str
    scale: float = 1.0
    public_only: bool = False
    #: Functions (and classes) the student's process reported as exactly their stub, each with the
    #: outcome of calling it (:meth:`find_stubs`); their direct calls are answered from here.
    stubs: dict[str, Outcome] = field(default_factory=dict)

    def find_stubs(self, names: Sequence[str]) -> dict[str, Outcome]:
        """Ask the student's process, in one call, which of ``names`` are left as their stub.

        Every direct call (no probe) of a reported name is then answered with its one outcome,
        which is what every such call returns (:func:`grader.sandbox.worker.stub_outcomes`), and
        the checks that see it skip drawing cases. The answer is untrusted; a false "stub" only
        fails that function's tests, so it can cost the student points, never earn them. An
        answer that is not understood is ignored: everything is graded as before.
        """
        from grader.sandbox import wire as _wire

        names = sorted(set(names))
        if not names:
            return self.stubs
        raw = self.runner.run([{"function": "", "stubs": names}], [self.seed_for("stubs") % 2**63])[0]
        found = raw.get("value") if raw.get("status") == "ok" else None
        for name, answer in (found.items() if isinstance(found, dict) else ()):
            if name in names:
                outcome = Outcome.from_wire(_wire.outcome_from_kernel(answer))
                if outcome.not_implemented:
                    self.stubs[name] = outcome
        return self.stubs

    def stub(self, function: str | None, probe: Callable | None = None) -> Outcome | None:
        """The outcome every call of ``function`` gets if it is a stub and is called directly; else None."""
        return self.stubs.get(function) if probe is None and function is not None else None

    def seed_for(self, *tags: Any) -> int:
        return stable_seed(self.seed, self.exercise, *tags)

    def generator(self, *tags: Any) -> torch.Generator:
        """A CPU generator (inputs are drawn on the CPU then moved, so grades do not depend on the device)."""
        return torch.Generator().manual_seed(self.seed_for(*tags) % 2**63)

    def generator_spec(self, *tags: Any, seed: int | None = None) -> dict:
        """A ``torch.Generator`` argument for the student, on the grading device.

        Seeded ``seed`` when given (a case's own seed), else from the grading seed and ``tags``.
        """
        return wire.generator_spec(self.seed_for(*tags) % 2**63 if seed is None else seed, str(self.device))

    def model_spec(self, kind: str, *, record: bool = False, dtype: torch.dtype | None = None, **params: Any) -> dict:
        """A model argument (``grader.sandbox.models.FACTORIES[kind]``) whose tensor parameters are cast to
        ``dtype`` (when given) and moved to the grading device; ``record`` logs its calls (``Outcome.model_calls``)."""

        def place(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return (value.to(dtype) if dtype is not None else value).to(self.device)
            return value

        return wire.model_spec(kind, record=record, **{k: place(v) for k, v in params.items()})

    def call(
        self, function: str, inputs: Sequence[Inputs], probe: Callable | None = None, tag: str = ""
    ) -> list[Outcome]:
        """Call ``function`` (or ``probe``, a harness that drives it) once per element of ``inputs``."""
        stub = self.stub(function, probe)
        if stub is not None:  # what the stub answers to any arguments, known since find_stubs
            return [Outcome.from_wire(vars(stub).copy()) for _ in inputs]
        if probe is not None and function in self.stubs and len(inputs) > 1:
            # A probe drives a stub: it reaches the stub the same way on every input of one call
            # (every probe of grader/exercises does; the verdicts of each exercise's stub are
            # compared with the full run's in tests/grader/test_stub_fast_path.py), so the first
            # input answers for all when it raised NotImplementedError; otherwise all are called.
            first = self._call(function, inputs[:1], probe, tag, 0)[0]
            if first.not_implemented:
                return [first] + [Outcome.from_wire(vars(first).copy()) for _ in inputs[1:]]
            if first.status == "timeout":  # as one batch would: the rest is skipped (worker.execute)
                return [first] + [Outcome("skipped", message="not run: an earlier call of this batch timed out")
                                  for _ in inputs[1:]]
            return [first] + self._call(function, inputs[1:], probe, tag, 1)
        return self._call(function, inputs, probe, tag, 0)

    def _call(self, function: str, inputs: Sequence[Inputs], probe: Callable | None, tag: str,
              start: int) -> list[Outcome]:
        calls = []
        for item in inputs:
            call = {"function": function, **item.wire()}
            if probe is not None:
                call["probe"] = probe_source(probe)
                call["probe_name"] = probe.__name__
            calls.append(call)
        seeds = [self.seed_for("call", function, tag, i) % 2**63 for i in range(start, start + len(calls))]
        return [Outcome.from_wire(raw) for raw in self.runner.run(calls, seeds)]


class Check:
    """A declared check: which function, which graded tests, how to run them.

    Subclasses are frozen dataclasses; :meth:`tests` announces the graded tests
    (names, points, kinds) and :meth:`run` returns one :class:`Verdict` per test.
    """

    function: str | None  # every subclass defines these two as dataclass fields
    public: bool

    def tests(self) -> list[TestSpec]:
        raise NotImplementedError

    def run(self, ctx: Context) -> list[Verdict]:
        raise NotImplementedError

    def prepare(self, ctx: Context) -> None:
        """Do ahead what :meth:`run` will need that depends on neither the student nor the kernel
        (``ctx.runner`` may be None here): ``grade submit`` calls it in the background while the
        kernel runs the notebook. :meth:`run` must give the same verdicts whether or not it was called."""
