"""``grade release --out DIR``: what students get, without the reference or the solutions.

The release holds the generated notebooks (``exercises/NAME/NAME.ipynb``, made from
``solutions/`` here and now), the grader's package without its exercise declarations
(they import ``reference`` and hold the hidden checks), and, in their place, every
public check of every exercise, recorded:

* its **inputs**: the cases ``check(fn)`` draws (the same seed, the same number of
  examples), built here and saved as values;
* its **judging code**: the grader's own library (``grader.checks``), named, and, where
  a public check judges with code of its declaration (a judge, a probe, a helper they
  call), exactly that code, copied into ``grader/exercises/released/NAME.py``: the
  functions the public checks reach, nothing a hidden check alone uses;
* every **expected value**: whatever that code gets from the reference, the laws, the
  toy models or a declaration's lambda (anything not copied) is a :class:`Proxy`, and what
  it answered for the inputs it was called with is recorded, keyed by the callee and a
  digest of its arguments (:func:`digest`). In the release the proxy answers from the
  record: values, never code; a question it was never asked raises :class:`Unrecorded`.

Everything is saved with ``torch.save`` and loaded with ``weights_only=True``.

How it is recorded (:func:`record_exercise`): each public check is encoded
(:class:`Encoder`), decoded back with its proxies calling the real callees, and run
with the reference as the student, which records the answers. Then it is replayed from
the record alone, beside the original check, on the reference, on each function's
outputs perturbed (so a judge that asks the reference about the *student's* output is
found: its question has no recorded answer) and on the check's own known mistakes; a
test whose replayed verdict differs, or that asks an unrecorded question, is not
released (``Exercise.not_released`` names it, and ``check`` says so).

A toy model in the inputs (built in the student's process from ``reference.toy``, which a
release does not carry) travels as a table: the course's Gaussian toys are affine in x at
each level, so their slope and offset at every level a check can ask about are recorded
(and the affinity checked) and :func:`_affine_model` replays them; a model that is not
affine (a mixture) leaves its check unreleased.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import math
import shutil
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable

import torch
from hypothesis import strategies as st

from grader.checks import Aspect, Context, Inputs, Mismatch, Outcome, draw_cases

__all__ = ["Proxy", "Released", "Unrecorded", "digest", "load_released", "record_check", "record_exercise",
           "recorded_check", "write_release"]

#: Where the recorded checks live, inside the released package.
RELEASED = "released"


class Unencodable(Exception):
    """A value the release cannot carry as data (a strategy, an object of the reference)."""


class Unrecorded(Exception):
    """A question to the reference (or a law, a model) that was not asked at release time."""


class RecordedError(Exception):
    """What a recorded callee raised at release time, raised again."""


# ----------------------------------------------------------------------------------------- digests

def _feed(h: Any, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}{t.device.type == 'meta'};".encode())
        if t.device.type != "meta":
            t = t.to("cpu")
            if t.is_complex():
                t = torch.view_as_real(t)
            if t.dtype in (torch.bool, torch.bfloat16, torch.float16):
                t = t.to(torch.float32)
            h.update(t.contiguous().numpy().tobytes())
    elif v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        h.update(f"{type(v).__name__}:{v!r};".encode())
    elif isinstance(v, (tuple, list)):
        h.update(f"{type(v).__name__}[{len(v)};".encode())
        for x in v:
            _feed(h, x)
    elif isinstance(v, dict):
        h.update(f"dict[{len(v)};".encode())
        for k in sorted(v, key=repr):
            _feed(h, k)
            _feed(h, v[k])
    elif isinstance(v, (set, frozenset)):
        _feed(h, ("set", sorted(v, key=repr)))
    elif isinstance(v, Inputs):
        _feed(h, ("Inputs", v.args, v.kwargs, v.hidden))
        try:
            _feed(h, v.meta)
        except Unencodable:
            h.update(b"meta?")
    elif isinstance(v, Outcome):
        _feed(h, ("Outcome", v.status, v.value, v.model_calls))
    elif type(v).__module__ == "numpy" and hasattr(v, "tobytes"):
        h.update(f"np{v.dtype}{getattr(v, 'shape', ())};".encode() + v.tobytes())
    else:
        raise Unencodable(f"cannot digest a {type(v).__name__}")


def digest(value: Any) -> str:
    """A SHA-256 of a value made of tensors, numbers, strings, containers and :class:`Inputs`."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()[:32]


def _storable(value: Any) -> Any:
    """``value`` itself when ``torch.load(weights_only=True)`` can carry it, else :class:`Unencodable`."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.Size)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_storable(v) for v in value)
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {k: _storable(v) for k, v in value.items()}
    raise Unencodable(f"a {type(value).__name__} cannot be recorded as a value")


def _fresh(value: Any) -> Any:
    """A copy of a recorded value (a judge may modify what it gets)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------- proxies

class Table:
    """The recorded answers of one exercise's proxies: key -> {"value": ...} or {"raises": ..., "message": ...}."""

    def __init__(self, values: dict | None = None) -> None:
        self.values: dict = dict(values or {})
        self.recording = False
        self.targets: dict[str, Callable] = {}
        self.proxies: dict[str, Proxy] = {}

    def proxy(self, name: str) -> "Proxy":
        if name not in self.proxies:
            self.proxies[name] = Proxy(name, self)
        return self.proxies[name]


class Proxy:
    """Stands for a callee that computes expected values; answers from :class:`Table` (or records, at release time)."""

    def __init__(self, name: str, table: Table) -> None:
        self.name, self.table = name, table
        self.__name__ = name.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<recorded {self.name}>"

    def _answer(self, key: str, compute: Callable[[], Any]) -> Any:
        table = self.table
        if table.recording and self.name in table.targets:
            try:
                value = compute()
            except Exception as exc:  # noqa: BLE001 -- recorded, and raised again on replay
                table.values[key] = {"raises": type(exc).__name__, "message": str(exc)}
                raise
            table.values[key] = {"value": _storable(value)}
            return value
        found = table.values.get(key)
        if found is None:
            raise Unrecorded(f"{self.name} was not asked this at release time")
        if "raises" in found:
            raise RecordedError(f"{found['raises']}: {found['message']}")
        return _fresh(found["value"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            key = f"{self.name}({digest((args, kwargs))}"
        except Unencodable as exc:
            raise Unrecorded(f"{self.name} called with {exc}") from None
        return self._answer(key, lambda: self.table.targets[self.name](*args, **kwargs))

    def on_inputs(self, inputs: Inputs) -> Any:
        """``inputs.call_reference(self)``: keyed by the inputs (which carry model specs, not models)."""
        key = f"{self.name}@{digest(inputs)}"
        return self._answer(key, lambda: Inputs.call_reference(inputs, self.table.targets[self.name]))


class ProxyModule:
    """A module of the reference: each attribute is a :class:`Proxy`."""

    def __init__(self, name: str, table: Table) -> None:
        self.__name__, self._table = name, table

    def __getattr__(self, attribute: str) -> Proxy:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return self._table.proxy(f"{self.__name__}.{attribute}")


class RecordedInputs(Inputs):
    """Inputs rebuilt from the record: the reference is asked through its proxy, keyed by these inputs."""

    def call_reference(self, fn: Callable) -> Any:
        if isinstance(fn, Proxy):
            return fn.on_inputs(self)
        return super().call_reference(fn)

    def in_float64(self) -> "RecordedInputs":
        base = super().in_float64()
        return RecordedInputs(base.args, base.kwargs, base.notes, base.meta, base.hidden)


# ----------------------------------------------------------------------------------------- encoding

def _is_reference(module: str) -> bool:
    return module == "reference" or module.startswith("reference.")


def _is_declaration(module: str) -> bool:
    return module.startswith("grader.exercises.")


def _is_library(module: str) -> bool:
    """Code that ships as it is: the grader's own library, torch and the other installed libraries."""
    return not _is_reference(module) and not _is_declaration(module) and module not in ("__main__", "builtins") \
        and not module.startswith(("tests.", "solutions"))


def _resolve(module: str, qualname: str) -> Any:
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def _inner_code(code: types.CodeType, qualname: str) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_qualname == qualname:
                return const
            found = _inner_code(const, qualname)
            if found is not None:
                return found
    return None


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return list(dict.fromkeys(names))


class Encoder:
    """Turns a check into data: values as they are, library code by name, declaration code copied, the rest proxies.

    ``shipped`` is the declaration code the encoded checks need (qualname -> source),
    ``lines`` how the copied code's module binds its other globals, ``data`` the globals
    it binds to recorded values, ``proxies`` the callees whose answers are recorded.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.shipped: dict[str, str] = {}
        self.shipped_objects: dict[str, Any] = {}
        self.lines: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.late: set[str] = set()
        self.bound: dict[str, Any] = {}
        self.proxy_names: dict[int, str] = {}
        self.keep: list = []  # objects named by id stay alive while this encoder lives
        self.check: Any = None

    def snapshot(self) -> tuple:
        return tuple(dict(d) for d in (self.shipped, self.shipped_objects, self.lines, self.data, self.bound)) + (
            set(self.late),)

    def restore(self, state: tuple) -> None:
        self.shipped, self.shipped_objects, self.lines, self.data, self.bound, self.late = (
            dict(state[0]), dict(state[1]), dict(state[2]), dict(state[3]), dict(state[4]), set(state[5]))

    # -- callees whose answers are recorded ----------------------------------------------------

    def proxy(self, value: Any) -> str:
        if id(value) not in self.proxy_names:
            module = getattr(value, "__module__", None) or type(value).__module__
            qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
            name = f"{module}.{qualname}"
            if name in self.table.targets and self.table.targets[name] is not value:
                name = f"{name}#{sum(1 for n in self.table.targets if n.split('#')[0] == name)}"
            self.proxy_names[id(value)] = name
            self.keep.append(value)
            self.table.targets[name] = value
        return self.proxy_names[id(value)]

    def reference_module(self, module: types.ModuleType) -> dict:
        for name, value in vars(module).items():
            if callable(value) and not name.startswith("__"):
                self.table.targets.setdefault(f"{module.__name__}.{name}", value)
        return {"proxy_module": module.__name__}

    # -- values --------------------------------------------------------------------------------

    def encode(self, v: Any, ship: bool = False) -> Any:
        """``v`` as data; a declaration's function is copied as code only with ``ship`` (a judge, a probe),
        else it is a proxy: what it computes from the inputs is recorded."""
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, torch.Tensor):
            return {"tensor": v.detach().to("cpu").clone()}
        if isinstance(v, torch.dtype):
            return {"dtype": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"device": str(v)}
        if isinstance(v, (tuple, list)):
            return {type(v).__name__: [self.encode(x) for x in v]}
        if isinstance(v, dict):
            return {"dict": [[self.encode(k), self.encode(x)] for k, x in v.items()]}
        if isinstance(v, (set, frozenset)):
            return {"frozenset": [self.encode(x) for x in sorted(v, key=repr)]}
        if v is self.check and v is not None:
            return {"check": 0}
        if isinstance(v, types.ModuleType):
            if _is_reference(v.__name__):
                return self.reference_module(v)
            if _is_library(v.__name__):
                return {"module": v.__name__}
            raise Unencodable(f"module {v.__name__}")
        if isinstance(v, Proxy):
            return {"proxy": v.name}
        if inspect.ismethod(v):
            return {"method": v.__func__.__name__, "self": self.encode(v.__self__)}
        cls = type(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type) and _is_library(cls.__module__):
            return {"dataclass": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self.encode(getattr(v, f.name), ship=f.name in SHIPPED_FIELDS)
                               for f in dataclasses.fields(v)}}
        if isinstance(v, types.FunctionType):
            module, qualname = v.__module__, v.__qualname__
            if _is_library(module):
                if "<locals>" not in qualname:
                    return {"import": f"{module}:{qualname}"}
                return self.closure(v, f"{module}:{qualname}")
            if ship and _is_declaration(module) and v.__name__ == "<lambda>":
                return self.ship_lambda(v)
            if ship and _is_declaration(module) and v.__name__ != "<lambda>":
                if "<locals>" not in qualname:
                    self.ship(v)
                    return {"shipped": qualname}
                outer = _resolve(module, qualname.split(".<locals>.")[0])
                self.ship(outer)
                return self.closure(v, f"@shipped:{qualname}", ship=True)
        if isinstance(v, type) and _is_library(v.__module__) and "<locals>" not in v.__qualname__:
            return {"import": f"{v.__module__}:{v.__qualname__}"}
        if isinstance(v, st.SearchStrategy):
            raise Unencodable("a hypothesis strategy")
        if callable(v) and not isinstance(v, type):
            return {"proxy": self.proxy(v)}
        raise Unencodable(f"a {cls.__name__}")

    def closure(self, fn: types.FunctionType, where: str, ship: bool = False) -> dict:
        """A closure: where its code is and its cells (a copied closure's cells are like its globals)."""
        cells = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                cells.append(self.encode(cell.cell_contents, ship=ship or name in SHIPPED_FIELDS))
            except ValueError:
                raise Unencodable(f"an empty cell of {fn.__qualname__}") from None
        return {"closure": where, "cells": cells, "defaults": self.encode(fn.__defaults__),
                "kwdefaults": self.encode(fn.__kwdefaults__)}

    # -- declaration code, copied --------------------------------------------------------------

    def ship(self, fn: types.FunctionType) -> None:
        name = fn.__qualname__
        if name in self.shipped_objects:
            if self.shipped_objects[name] is not fn:
                raise Unencodable(f"two functions called {name}")
            return
        source = textwrap.dedent(inspect.getsource(fn))
        self.shipped_objects[name] = fn
        self.shipped[name] = source
        for global_name in _global_names(fn.__code__):
            if global_name in fn.__globals__:
                self.bind(global_name, fn.__globals__[global_name])

    def ship_lambda(self, fn: types.FunctionType) -> dict:
        """A declaration's lambda, copied as ``def _lambda_N(free variables): return (lambda ...)``."""
        source = inspect.getsource(sys.modules[fn.__module__])
        found = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Lambda) and node.lineno == fn.__code__.co_firstlineno:
                segment = ast.get_source_segment(source, node)
                free = fn.__code__.co_freevars
                text = f"def _factory({', '.join(free)}):\n    return ({segment})\n"
                inner = _inner_code(compile(text, "<lambda>", "exec").co_consts[0], "_factory.<locals>.<lambda>")
                if inner is not None and inner.co_code == fn.__code__.co_code and inner.co_names == fn.__code__.co_names:
                    found.append(text)
        if len(set(found)) != 1:
            raise Unencodable(f"the source of a lambda of {fn.__module__}")
        name = next((n for n, o in self.shipped_objects.items() if o is fn), f"_lambda_{len(self.shipped)}")
        if name not in self.shipped:
            self.shipped_objects[name] = fn
            self.shipped[name] = found[0].replace("def _factory(", f"def {name}(", 1)
            for global_name in _global_names(fn.__code__):
                if global_name in fn.__globals__:
                    self.bind(global_name, fn.__globals__[global_name])
        return self.closure(fn, f"@shipped:{name}.<locals>.<lambda>", ship=True)

    def bind(self, name: str, value: Any) -> None:
        if name in self.bound:
            if self.bound[name] is not value:
                raise Unencodable(f"two globals called {name}")
            return
        self.bound[name] = value
        if isinstance(value, types.ModuleType):
            if _is_reference(value.__name__):
                self.reference_module(value)
                self.lines[name] = f"{name} = _P.module({value.__name__!r})"
            elif _is_library(value.__name__):
                self.lines[name] = f"import {value.__name__} as {name}"
            else:
                raise Unencodable(f"module {value.__name__}")
            return
        module = getattr(value, "__module__", None) or ""
        qualname = getattr(value, "__qualname__", "") or ""
        if (isinstance(value, (types.FunctionType, type)) and _is_library(module) and "<locals>" not in qualname
                and "." not in qualname):
            self.lines[name] = f"from {module} import {qualname} as {name}"
            return
        if isinstance(value, types.FunctionType) and _is_declaration(module) and value.__name__ != "<lambda>" \
                and "<locals>" not in qualname:
            self.ship(value)
            if name != value.__name__:
                self.data[name] = {"shipped": value.__qualname__}
                self.late.add(name)
            return
        encoded = self.encode(value)
        self.data[name] = encoded
        if _mentions_shipped(encoded):
            self.late.add(name)

    def module_source(self, exercise: str) -> str:
        header = [f'"""The code of exercise {exercise}\'s public checks, copied by ``grade release``.',
                  "",
                  "Only the functions that public checks call (judges, probes, the helpers they use) are here;",
                  "whatever they ask of the reference, the laws or the toy models is answered from values",
                  "recorded at release time (``_P``, :mod:`grader.release`). No reference code, no hidden check.",
                  '"""', "", "from __future__ import annotations", "", "from grader.release import released as _released", "",
                  f"_P = _released({exercise!r})"]
        body = [*sorted(self.lines.values()), "", "_P.bind(globals(), late=False)", ""]
        for source in self.shipped.values():
            body.extend(["", source.rstrip(), ""])
        body.extend(["", "_P.bind(globals(), late=True)", ""])
        return "\n".join(header + [""] + body)


#: Fields that hold code run on the student's outcome (a judge) or in the student's process (a probe): copied.
SHIPPED_FIELDS = frozenset({"judge", "probe", "scenario"})


def _mentions_shipped(encoded: Any) -> bool:
    if isinstance(encoded, dict):
        if "shipped" in encoded or str(encoded.get("closure", "")).startswith("@shipped:") or "check" in encoded:
            return True
        return any(_mentions_shipped(v) for v in encoded.values())
    if isinstance(encoded, (list, tuple)):
        return any(_mentions_shipped(v) for v in encoded)
    return False


# ----------------------------------------------------------------------------------------- decoding

_RELEASED: dict[str, "Released"] = {}


def released(exercise: str) -> "Released":
    """The recorded values of ``exercise``, for the module of its copied code (which calls this first)."""
    return _RELEASED[exercise]


class Released:
    """One exercise's record: the proxies' table, the copied code's module, and how to decode values."""

    def __init__(self, exercise: str, data: dict, table: Table | None = None) -> None:
        self.exercise, self.data = exercise, data
        self.table = table or Table(data.get("table", {}))
        self.namespace: dict | None = None
        self.check: Any = None

    def module(self, name: str) -> ProxyModule:
        return ProxyModule(name, self.table)

    def bind(self, namespace: dict, late: bool) -> None:
        self.namespace = namespace
        for name, encoded in self.data.get("globals", {}).items():
            if (name in self.data.get("late", ())) == late:
                namespace[name] = self.decode(encoded)

    def decode(self, d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        (tag, value), *_ = d.items()
        if tag == "tensor":
            return value.clone()
        if tag == "dtype":
            return getattr(torch, value)
        if tag == "device":
            return torch.device(value)
        if tag == "tuple":
            return tuple(self.decode(x) for x in value)
        if tag == "list":
            return [self.decode(x) for x in value]
        if tag == "dict":
            return {self.decode(k): self.decode(x) for k, x in value}
        if tag == "frozenset":
            return frozenset(self.decode(x) for x in value)
        if tag == "check":
            return self.check
        if tag == "module":
            return importlib.import_module(value)
        if tag == "proxy_module":
            return ProxyModule(value, self.table)
        if tag == "proxy":
            return self.table.proxy(value)
        if tag == "method":
            return getattr(self.decode(d["self"]), value)
        if tag == "import":
            return _resolve(*value.split(":"))
        if tag == "shipped":
            return self._shipped(value)
        if tag == "dataclass":
            obj = object.__new__(_resolve(*value.split(":")))
            for name, encoded in d["fields"].items():
                object.__setattr__(obj, name, self.decode(encoded))
            return obj
        if tag == "closure":
            return self._closure(d)
        raise ValueError(f"unknown recorded value {tag!r}")

    def _shipped(self, qualname: str) -> Any:
        value: Any = self.namespace
        for i, part in enumerate(qualname.split(".")):
            value = value[part] if i == 0 else getattr(value, part)
        return value

    def _closure(self, d: dict) -> types.FunctionType:
        where = d["closure"]
        if where.startswith("@shipped:"):
            qualname = where.removeprefix("@shipped:")
            outer = self._shipped(qualname.split(".<locals>.")[0])
        else:
            module, qualname = where.split(":")
            outer = _resolve(module, qualname.split(".<locals>.")[0])
        code = _inner_code(outer.__code__, qualname)
        if code is None:
            raise ValueError(f"no function {qualname} in this grader")
        cells = tuple(types.CellType(self.decode(c)) for c in d["cells"])
        fn = types.FunctionType(code, outer.__globals__, code.co_name, self.decode(d["defaults"]), cells or None)
        fn.__kwdefaults__ = self.decode(d["kwdefaults"])
        fn.__qualname__ = qualname
        return fn


class RecordedBuild:
    """``build`` of a released check: case ``i`` is the ``i``-th recorded input, on the context's device."""

    def __init__(self, cases: list, env: Released) -> None:
        self.cases, self.env = cases, env

    def __call__(self, index: int, ctx: Context) -> RecordedInputs:
        fields = [_to_device(self.env.decode(part), ctx.device) for part in self.cases[index]]
        args, kwargs, notes, meta, hidden = fields
        return RecordedInputs(args, kwargs, notes, meta, hidden)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class _Guarded:
    """An aspect's judge that turns an unrecorded question into a failure saying so (and notes which aspect)."""

    def __init__(self, judge: Callable, name: str, log: set) -> None:
        self.judge, self.name, self.log = judge, name, log

    def __call__(self, inputs: Inputs, outcome: Outcome) -> None:
        try:
            return self.judge(inputs, outcome)
        except (Unrecorded, Unencodable, RecordedError) as exc:
            self.log.add(self.name)
            raise Mismatch(f"this student release cannot judge this input ({exc}); `grade submit` does") from None


def _not_released(inputs: Inputs, outcome: Outcome) -> None:
    """The judge of a test this release does not hold: nothing (check() does not report it)."""


def recorded_check(data: dict, env: Released, log: set | None = None) -> Any:
    """The public check ``data`` describes (see :func:`record_check`), on its recorded inputs and values.

    It is an object of the same class as the declared check, with the same fields; its
    cases are the recorded inputs, its judges the library's or the copied ones, and every
    expected value comes from the record. ``log`` collects the aspects that met an
    unrecorded question.
    """
    log = set() if log is None else log
    cls = _resolve(*data["class"].split(":"))
    check = object.__new__(cls)
    env.check = check
    dropped = set(data.get("dropped", ()))
    for name, encoded in data["fields"].items():
        object.__setattr__(check, name, env.decode(encoded))
    # A dropped aspect keeps its place (the first aspect's name seeds the check's calls) but judges nothing;
    # check() leaves it out of what it reports (Exercise.not_released names it).
    aspects = tuple(dataclasses.replace(a, judge=_Guarded(a.judge, a.name, log)) if a.name not in dropped else
                    dataclasses.replace(a, judge=_not_released, device=False, shrink=False, gated_by=())
                    for a in check.aspects)
    object.__setattr__(check, "aspects", aspects)
    n = len(data["cases"])
    object.__setattr__(check, "cases", st.sampled_from(range(n)))
    object.__setattr__(check, "examples", tuple(range(n)))
    object.__setattr__(check, "build", RecordedBuild(data["cases"], env))
    env.check = None
    return check


# ----------------------------------------------------------------------------------------- toy models

#: How each toy model of :data:`grader.sandbox.models.FACTORIES` is called: at a timestep t (an index), at a
#: noise level σ (a float: the levels tabulated are every float the inputs hold), at one fixed level, and
#: whether it takes a class label. A new kind of toy model is one entry here (a kind not listed: not released). The release tabulates a
#: model that is affine in x at each level (the course's Gaussian toys), as :func:`_affine_model` replays.
MODEL_LEVELS = {"gaussian_eps": ("timestep", False), "class_gaussian_eps": ("timestep", True),
                "gaussian_score_ve": ("noise level", False), "gaussian_score": ("none", False),
                "gaussian_score_vp": ("noise level", False)}  # its level is the SDE's time t, a float

#: A σ the student's code asks for matches a tabulated one within this relative distance: a level given in
#: float64 and passed on in float32 moves by ≤ 6e-8 relative; 1e-6 leaves a margin, far below the gaps between
#: the levels the checks use (≥ 1e-3 relative).
LEVEL_MATCH = 1e-6


def _affine_model(params: dict) -> Callable:
    """The model a release carries: ``slope[i] * x + offset[i]`` at level ``i`` (and class), in float64, cast."""
    levels, slope, offset = params["_levels"], params["_slope"], params["_offset"]
    kind, conditional, dtype = params["_level_kind"], params["_conditional"], getattr(torch, params["_dtype"])

    def index(level: Any, rows: int) -> torch.Tensor:
        if kind == "none":
            return torch.zeros(rows, dtype=torch.long)
        values = torch.as_tensor(level).detach().to("cpu").flatten()
        values = values.expand(rows) if values.numel() == 1 else values
        if kind == "timestep":
            return values.long()
        table = levels.to("cpu", torch.float64)
        found = []
        for value in values.double().tolist():
            near = (table - value).abs() <= LEVEL_MATCH * max(abs(value), 1e-12)
            if not bool(near.any()):
                raise ValueError(f"the student release recorded this toy model at the noise levels the course's "
                                 f"checks use, not at σ = {value:.6g}: `grade submit` tests the others")
            found.append(int(near.nonzero()[0]))
        return torch.tensor(found, dtype=torch.long)

    def model(x: torch.Tensor, level: Any = None, cond: Any = None) -> torch.Tensor:
        placed = [a.device.type for a in (x, level, cond) if isinstance(a, torch.Tensor)]
        if (conditional and len(set(placed)) > 1) or x.device.type != slope.device.type:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found x on {x.device} and "
                               f"the model on {slope.device}")
        out = torch.promote_types(x.dtype, dtype)
        if x.device.type == "meta":
            return torch.empty(x.shape, dtype=out, device=x.device)
        i = index(level, x.shape[0]).to(slope.device)
        if conditional:
            c = torch.as_tensor(cond).to(slope.device).long()
            a, b = slope[i, c], offset[i, c]
        else:
            a, b = slope[i], offset[i]
        return (a * x.double() + b).to(out)

    return model


def _level_values(value: Any) -> set[float]:
    """Every float the inputs hold (numbers, small tensors, in any container): the σ a sampler may ask about."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.ndim <= 1 and value.numel() <= 4096:
            return {float(v) for v in value.detach().to("cpu").double().flatten().tolist()}
        return set()
    if isinstance(value, float):
        return {value}
    if isinstance(value, dict):
        return {v for x in value.values() for v in _level_values(x)}
    if isinstance(value, (list, tuple)):
        return {v for x in value for v in _level_values(x)}
    return set()


def _observed_levels(function: str, inputs: Inputs, exercise: str) -> set[float]:
    """The levels the reference's ``function`` asks its model about on ``inputs`` (a time grid it makes itself)."""
    from grader.sandbox import models, wire
    from grader.sandbox.wire import SPEC

    fn = _reference_namespace(exercise).get(function)
    if fn is None or isinstance(fn, type):
        return set()
    logs: list = []

    def build(spec: dict) -> Any:
        return models.build({**spec, "record": True} if spec.get(SPEC) == "model" else spec, logs)

    try:
        built = inputs.in_float64()
        fn(*wire.decode(list(built.args.values()), build), **wire.decode(built.kwargs, build))
    except Exception:  # noqa: BLE001 -- the reference cannot run on these inputs alone: the inputs' levels only
        return set()
    return {float(v) for log in logs for call in log.calls if "level" in call
            for v in torch.as_tensor(call["level"]).double().flatten().tolist()}


def _tabulated(spec: dict, inputs: Inputs, observed: frozenset = frozenset()) -> dict:
    """A toy model's spec with its values tabulated at every level (``_affine_model``'s), or :class:`Unencodable`."""
    from grader.sandbox import models

    if spec["kind"] not in MODEL_LEVELS:
        raise Unencodable(f"the toy model {spec['kind']!r}")
    kind, conditional = MODEL_LEVELS[spec["kind"]]
    params = {k: v.detach().to("cpu", torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in spec["params"].items()}
    dtype = next((v.dtype for v in spec["params"].values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
                 torch.float64)
    model = models.FACTORIES[spec["kind"]](params)
    shape = tuple(params["means" if conditional else "mean"].shape[1 if conditional else 0:])
    if kind == "timestep":
        levels = torch.arange(len(params["alphas_cumprod"]), dtype=torch.float64)
    elif kind == "noise level":
        levels = torch.tensor(sorted(_level_values([inputs.args, inputs.kwargs, inputs.meta, inputs.hidden]) | observed),
                              dtype=torch.float64)
    else:
        levels = torch.zeros(1, dtype=torch.float64)
    classes = params["means"].shape[0] if conditional else 1
    rows = len(levels) * classes
    level = levels.long() if kind == "timestep" else levels
    level = level.repeat_interleave(classes)
    label = torch.arange(classes).repeat(len(levels))

    def f(x: torch.Tensor) -> torch.Tensor:
        if kind == "none":
            return model(x)
        return model(x, level, label) if conditional else model(x, level)

    zeros, ones = torch.zeros((rows, *shape), dtype=torch.float64), torch.ones((rows, *shape), dtype=torch.float64)
    offset = f(zeros)
    slope = f(ones) - offset
    x = torch.randn((rows, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    if not torch.allclose(f(x), slope * x + offset, rtol=1e-9, atol=1e-9):
        raise Unencodable(f"the toy model {spec['kind']!r} is not affine in x")
    table = (len(levels), classes, *shape) if conditional else (len(levels), *shape)
    place = next((v.device for v in spec["params"].values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    return {**spec, "kind": "recorded_affine",
            "params": {**spec["params"], "_levels": levels.to(place), "_slope": slope.reshape(table).to(place),
                       "_offset": offset.reshape(table).to(place), "_level_kind": kind,
                       "_conditional": conditional, "_dtype": str(dtype).removeprefix("torch.")}}


def _with_tabulated_models(value: Any, inputs: Inputs, observed: frozenset = frozenset()) -> Any:
    from grader.sandbox.wire import SPEC

    if isinstance(value, dict):
        if value.get(SPEC) == "model":
            return _tabulated(value, inputs, observed)
        return {k: _with_tabulated_models(v, inputs, observed) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_with_tabulated_models(v, inputs, observed) for v in value)
    return value


def _has_continuous_model(value: Any) -> bool:
    from grader.sandbox.wire import SPEC

    if isinstance(value, dict):
        if value.get(SPEC) == "model":
            return MODEL_LEVELS.get(value.get("kind"), ("",))[0] == "noise level"
        return any(_has_continuous_model(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_continuous_model(v) for v in value)
    return False


def _register_model() -> None:
    from grader.sandbox import models

    models.FACTORIES.setdefault("recorded_affine", _affine_model)


_register_model()


# ----------------------------------------------------------------------------------------- recording

#: Fields of a check that the release replaces: its cases are the recorded inputs.
_REPLACED = ("cases", "examples", "build")


def _context(namespace: dict, exercise: str, *, public_only: bool = True) -> Context:
    from grader.interactive import SCALE
    from grader.runner import InProcessRunner

    return Context(InProcessRunner(namespace), torch.device("cpu"), 0, exercise, scale=SCALE, public_only=public_only)


def _drawn_inputs(check: Any, ctx: Context) -> list[Inputs]:
    """The inputs ``check(fn)`` builds for ``check`` (the same draw as :meth:`Property.run`)."""
    n = max(1, math.ceil(check.max_examples * ctx.scale))
    tag = f"{check.function}:{check.aspects[0].name}"
    return [check.build(case, ctx) for case in draw_cases(check.cases, n, ctx.seed_for("cases", tag) % 2**32,
                                                          check.examples)]


def record_check(check: Any, exercise: str, encoder: Encoder | None = None) -> dict | None:
    """A public check as data: its class, its fields encoded, its recorded inputs; None if it cannot be.

    Not recorded: a check that is not public or not a :class:`~grader.checks.Property` (an
    agreement, a behaviour; a law or a statistical check needs fresh draws), and a check whose
    inputs cannot be carried (a toy model that is not affine in x). An aspect whose judge
    cannot be encoded is kept in place, judging nothing, and named in ``data["dropped"]``.
    """
    from grader.checks import Property

    if not check.public or not isinstance(check, Property):
        return None
    encoder = encoder or Encoder(Table())
    inputs = _drawn_inputs(check, _context({}, exercise))
    encoder.check = check
    try:
        cases = []
        for i in inputs:
            observed = frozenset(_observed_levels(check.function, i, exercise)) if _has_continuous_model(
                [i.args, i.kwargs]) else frozenset()
            cases.append([encoder.encode(_with_tabulated_models(part, i, observed))
                          for part in (i.args, i.kwargs, i.notes, i.meta, i.hidden)])
    except Unencodable:
        return None
    fields, dropped = {}, []
    for field_ in dataclasses.fields(check):
        if field_.name in _REPLACED:
            continue
        value = getattr(check, field_.name)
        if field_.name == "aspects":
            kept = []
            for aspect in value:
                state = encoder.snapshot()
                try:
                    kept.append(encoder.encode(aspect))
                except (Unencodable, OSError, TypeError):
                    encoder.restore(state)
                    dropped.append(aspect.name)
                    kept.append(encoder.encode(dataclasses.replace(aspect, judge=_not_released, gated_by=())))
            fields["aspects"] = {"tuple": kept}
            continue
        if field_.name == "diagnoses":
            kept = []
            for diagnosis in value:
                state = encoder.snapshot()
                try:
                    kept.append(encoder.encode(diagnosis))
                except (Unencodable, OSError, TypeError):
                    encoder.restore(state)
            fields["diagnoses"] = {"tuple": kept}
            continue
        state = encoder.snapshot()
        try:
            fields[field_.name] = encoder.encode(value, ship=field_.name in SHIPPED_FIELDS)
        except (Unencodable, OSError, TypeError) as exc:
            encoder.restore(state)
            if field_.name in ("function", "public", "kind", "max_examples"):
                return None
            fields[field_.name] = {"proxy": f"unrecordable {field_.name}: {exc}"}  # asked, it is Unrecorded
    encoder.check = None
    return {"class": f"{type(check).__module__}:{type(check).__qualname__}", "function": check.function,
            "fields": fields, "cases": cases, "dropped": _with_gated(check, dropped),
            "tests": [spec.name for spec in check.tests()]}


def _with_gated(check: Any, dropped: list[str]) -> list[str]:
    """``dropped`` and every aspect gated by one of them (its point would otherwise stand without its gate)."""
    out = list(dropped)
    changed = True
    while changed:
        changed = False
        for aspect in check.aspects:
            if aspect.name not in out and any(g in out for g in aspect.gated_by):
                out.append(aspect.name)
                changed = True
    return out


def _perturbed(fn: Callable) -> Callable:
    """``fn`` with every value of its result moved a little: a student whose outputs are not the reference's."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value * 1.01 + 0.01 if value.is_floating_point() else value + 1
        if isinstance(value, float):
            return value * 1.01 + 0.01
        if isinstance(value, (tuple, list)):
            return type(value)(move(v) for v in value)
        return value

    def perturbed(*args: Any, **kwargs: Any) -> Any:
        return move(fn(*args, **kwargs))

    perturbed.__name__ = getattr(fn, "__name__", "perturbed")
    return perturbed


def _students(check: Any, reference: dict, diagnoses: int = 1) -> list[tuple[str, dict]]:
    """The namespaces a released check is validated on: the reference, its function perturbed, its known mistakes."""
    students = [("the reference", reference)]
    fn = reference.get(check.function)
    if callable(fn) and not isinstance(fn, type):
        students.append(("perturbed outputs", {**reference, check.function: _perturbed(fn)}))
        if check.probe is None:
            for diagnosis in check.diagnoses[:diagnoses]:
                if callable(diagnosis.wrong) and not isinstance(diagnosis.wrong, Proxy):
                    students.append((diagnosis.message[:40], {**reference, check.function: diagnosis.wrong}))
    return students


def _verdicts(check: Any, namespace: dict, exercise: str) -> dict[str, bool]:
    ctx = _context(dict(namespace), exercise)
    return {spec.name: verdict.passed for spec, verdict in zip(check.tests(), check.run(ctx))}


def _reference_namespace(exercise: str) -> dict:
    try:
        module = importlib.import_module(f"reference.{exercise}")
    except ImportError:
        return {}
    return {name: getattr(module, name) for name in getattr(module, "__all__", ())}


def _load_module(exercise: str, path: Path) -> dict:
    name = f"grader.exercises.{RELEASED}.{exercise}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return vars(module)


def _aspect_of(test: str, function: str) -> str:
    return test.removeprefix(f"{function}: ")


def record_exercise(name: str, folder: Path) -> dict:
    """Record exercise ``name``'s public checks into ``folder`` (``NAME.py``, the copied code); the data to save."""
    from grader.exercises import load_exercise

    exercise = load_exercise(name)
    table = Table()
    encoder = Encoder(table)
    records, left = [], []
    for check in exercise.checks:
        if not check.public:
            continue
        data = record_check(check, name, encoder)
        if data is None:
            left.extend(spec.name for spec in check.tests())
        else:
            records.append((check, data))
    (folder / f"{name}.py").write_text(encoder.module_source(name), encoding="utf-8")
    env = Released(name, {"globals": encoder.data, "late": sorted(encoder.late)}, table)
    _RELEASED[name] = env
    _load_module(name, folder / f"{name}.py")
    reference = _reference_namespace(name)
    checks = []
    for check, data in records:
        bad = set(data["dropped"])
        if not reference:
            bad |= {a.name for a in check.aspects}
        else:
            bad |= _validate(check, data, env, reference, name)
        data["dropped"] = _with_gated(check, sorted(bad))
        held = [t for t in data["tests"] if _aspect_of(t, check.function) not in data["dropped"]]
        left.extend(t for t in data["tests"] if t not in held)
        if held:
            data["tests"] = held
            checks.append(data)
    return {"name": name, "title": exercise.title, "functions": [[f, list(args)] for f, args in exercise.functions],
            "checks": checks, "not_released": left, "globals": encoder.data, "late": sorted(encoder.late),
            "table": table.values}


def _validate(check: Any, data: dict, env: Released, reference: dict, exercise: str) -> set[str]:
    """Record ``check``'s answers with the reference as the student; the aspects whose replay is not the check's."""
    names = [a.name for a in check.aspects]
    log: set = set()
    env.table.recording = True
    try:
        replay = recorded_check(data, env, log)
        ctx = _context(dict(reference), exercise)
        for index in range(len(data["cases"])):
            inputs = replay.build(index, ctx)
            # Asked only on a failure: every reference (the second where the first disagrees), the scale, and
            # each known mistake (a hint names one by its values on every input).
            asked = [d.wrong for d in replay.diagnoses]
            references = getattr(replay, "reference", None)
            asked += list(references) if isinstance(references, tuple) else [references] if references else []
            for callee in asked:
                try:
                    inputs.call_reference(callee)
                except Exception:  # noqa: BLE001 -- no value here: recorded as raising
                    pass
            if getattr(replay, "scale", None) is not None:
                try:
                    replay.scale(inputs.in_float64())
                except Exception:  # noqa: BLE001
                    pass
        replay.run(ctx)
    except Exception:  # noqa: BLE001 -- a check that cannot even run on the reference is not released
        return set(names)
    finally:
        env.table.recording = False
    bad = set(log)
    for _, namespace in _students(check, reference):
        log = set()
        try:
            mine = _verdicts(recorded_check(data, env, log), namespace, exercise)
        except Exception:  # noqa: BLE001
            return set(names)
        theirs = _verdicts(check, namespace, exercise)
        bad |= log | {_aspect_of(t, check.function) for t, passed in mine.items() if theirs.get(t) != passed}
    return bad


def load_released(folder: Path, name: str, *, from_file: bool = False) -> tuple[dict, tuple]:
    """A student release's exercise ``name`` (in ``folder``, its ``released/``): its data and its checks.

    In a release the copied code is imported as ``grader.exercises.released.NAME``; with
    ``from_file`` it is loaded from ``folder`` by path (a release read from the course's grader,
    in tests).
    """
    data = torch.load(folder / f"{name}.pt", weights_only=True)
    env = Released(name, data)
    _RELEASED[name] = env
    if from_file:
        _load_module(name, folder / f"{name}.py")
    else:
        importlib.import_module(f"grader.exercises.{RELEASED}.{name}")
    return data, tuple(recorded_check(c, env) for c in data["checks"])


# ----------------------------------------------------------------------------------------- the bundle

EXERCISES_INIT = '''"""The exercises of this student release: their public checks, as values recorded by ``grade release``.

Each ``released/NAME.pt`` holds an exercise's functions and, for each public
check, its inputs and every value it compares against, recorded from the course's
reference; it is loaded with ``weights_only=True`` (data, never code).
``released/NAME.py`` holds the code of those public checks that is not the grader's
library (their judges and probes), with every call to the reference answered from
the record. No reference implementation and no hidden check is part of this
release: ``grade submit`` on the course's grader runs those.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from grader.checks import Check, Signatures
from grader.errors import UnknownExercise
from grader.release import load_released

__all__ = ["Exercise", "exercise_names", "find_exercise_of", "load_exercise"]

DATA = Path(__file__).resolve().parent / "released"


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    functions: tuple
    checks: tuple
    not_released: tuple = ()

    def all_checks(self) -> tuple:
        return (Signatures(self.functions), *self.checks)

    @property
    def function_names(self) -> tuple:
        return tuple(name for name, _ in self.functions)


def exercise_names() -> list:
    return sorted(p.stem for p in DATA.glob("*.pt"))


@lru_cache(maxsize=None)
def load_exercise(name: str) -> Exercise:
    if name not in exercise_names():
        raise UnknownExercise(f"unknown exercise {name!r}; this release holds: {', '.join(exercise_names())}")
    data, checks = load_released(DATA, name)
    return Exercise(data["name"], data["title"], tuple((f, tuple(args)) for f, args in data["functions"]),
                    checks, tuple(data["not_released"]))


def find_exercise_of(function_name: str):
    for name in exercise_names():
        exercise = load_exercise(name)
        if function_name in exercise.function_names:
            return exercise
    return None
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "diffusion-course-student"
version = "{version}"
description = "The diffusion-models course's exercises, with the public checks (check(fn) in a notebook)"
requires-python = ">=3.10"
dependencies = ["torch>=2.1", "numpy>=1.24", "scipy>=1.10", "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.25",
                "jupyter_client>=8", "hypothesis>=6.90", "jinja2>=3.1", "matplotlib>=3.7"]

[project.optional-dependencies]
notebook = ["jupyterlab>=4"]

[project.scripts]
grade = "grader.cli:main"

[tool.setuptools.packages.find]
include = ["grader*"]

[tool.setuptools.package-data]
grader = ["templates/*.j2", "py.typed", "exercises/released/*.pt", "exercises/released/*.py"]
'''

README = """# Diffusion models: the exercises

    python3 -m venv .venv && .venv/bin/pip install -e '.[notebook]' && .venv/bin/jupyter lab exercises/q_sampler/q_sampler.ipynb

Fill in each function, then run its check cell: `check(q_sample)` compares your function with
values recorded from the course's reference on the same inputs the course's grader starts with,
and says what differs. Your grade comes from the course's grader, which runs many more checks.
"""

#: Parts of the grader package a release leaves out: the declarations (replaced by values)
#: and the instructors' tools that need the reference or the solutions.
LEFT_OUT = ("exercises", "export", "generate.py")


def _copy_package(source: Path, target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in LEFT_OUT or path.name == "__pycache__":
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, ignore=ignore)
        else:
            shutil.copy2(path, target / path.name)


def write_release(root: Path, out: Path) -> str:
    """Write the student release of the course at ``root`` into ``out``; a one-paragraph summary."""
    import nbformat

    from grader._version import __version__
    from grader.errors import UsageError
    from grader.exercises import exercise_names
    from grader.generate import student_notebook

    solutions = root / "solutions"
    if not solutions.is_dir():
        raise UsageError(f"{solutions} does not exist: run grade release from the course repository's root")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new folder, so that nothing of an older release stays in it")
    names = [n for n in exercise_names() if (solutions / n / f"{n}.ipynb").is_file()]
    package = Path(__file__).resolve().parent
    _copy_package(package, out / "grader")
    released = out / "grader" / "exercises" / RELEASED
    released.mkdir(parents=True)
    (released / "__init__.py").write_text('"""The recorded public checks (NAME.pt) and their code (NAME.py)."""\n',
                                          encoding="utf-8")
    (out / "grader" / "exercises" / "__init__.py").write_text(EXERCISES_INIT, encoding="utf-8")
    lines = []
    for name in names:
        solution = nbformat.read(solutions / name / f"{name}.ipynb", as_version=4)
        target = out / "exercises" / name / f"{name}.ipynb"
        target.parent.mkdir(parents=True)
        target.write_text(nbformat.writes(student_notebook(solution, name)) + "\n", encoding="utf-8")
        data = record_exercise(name, released)
        torch.save(data, released / f"{name}.pt")
        recorded = sum(len(c["tests"]) for c in data["checks"])
        lines.append(f"  {name}: {recorded} of {recorded + len(data['not_released'])} public tests held "
                     f"({len(data['checks'])} checks)" + (f"; left to grade submit: {'; '.join(data['not_released'])}"
                                                           if data["not_released"] else ""))
    (out / "pyproject.toml").write_text(PYPROJECT.format(version=__version__), encoding="utf-8")
    (out / "README.md").write_text(README, encoding="utf-8")
    return "\n".join([f"{out}: the student release ({len(names)} exercises; no reference, no solutions)", *lines])


def is_release() -> bool:
    """Whether this grader is a student release (its exercises are recorded values)."""
    return (Path(__file__).resolve().parent / "exercises" / RELEASED).is_dir()

