"""What crosses between the grader and the student's process, in both directions.

Both directions use ``torch.save`` / ``torch.load(weights_only=True)``: tensors,
numbers, strings, ``None`` and lists, tuples and dicts of them. Nothing that can
run code is ever unpickled on the grader's side.

Arguments that are not plain data (a model, a generator, a module) travel as
*specs*: small dicts that the worker turns into the object (:func:`decode`),
e.g. ``generator_spec(3)`` becomes ``torch.Generator().manual_seed(3)``.

Return values are reduced to plain data by :func:`encode` in the student's
process; anything else (a tensor subclass, an object, a module) becomes an
``{"__unsupported__": ...}`` marker that the grader reports as a wrong type. The
grader then converts and validates every value itself (:mod:`grader.convert`).
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import torch

__all__ = [
    "SPEC",
    "UNSUPPORTED",
    "decode",
    "dumps",
    "encode",
    "generator_spec",
    "loads",
    "model_spec",
    "module_spec",
]

SPEC = "__spec__"
UNSUPPORTED = "__unsupported__"
_MAX_DEPTH = 8
_MAX_ITEMS = 10_000
#: Return values above this many tensor elements in total are refused (≈ 400 MB in float32).
MAX_ELEMENTS = 100_000_000


def generator_spec(seed: int, device: str = "cpu") -> dict:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return {SPEC: "generator", "seed": int(seed), "device": str(device)}


def model_spec(kind: str, *, record: bool = False, **params: Any) -> dict:
    """A callable model built in the worker by :data:`grader.sandbox.models.FACTORIES` ``[kind]``.

    With ``record=True`` the worker logs every call's timestep or noise level and
    returns the log beside the value (``Outcome.model_calls``).
    """
    return {SPEC: "model", "kind": kind, "record": bool(record), "params": params}


def module_spec(kind: str, **params: Any) -> dict:
    """An ``nn.Module`` built in the worker (e.g. an ``nn.Linear`` with given weights)."""
    return {SPEC: "module", "kind": kind, "params": params}


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def loads(data: bytes, map_location: Any = None) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)


def decode(obj: Any, build: Callable[[dict], Any]) -> Any:
    """Replace every spec inside ``obj`` by ``build(spec)``."""
    if isinstance(obj, dict):
        if SPEC in obj:
            return build(obj)
        return {k: decode(v, build) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, build) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v, build) for v in obj)
    return obj


class _Budget:
    def __init__(self) -> None:
        self.items = 0
        self.elements = 0


def encode(value: Any) -> Any:
    """Reduce a value returned by student code to plain, loadable data."""
    return _encode(value, 0, _Budget())


def _unsupported(what: str) -> dict:
    return {UNSUPPORTED: what}


def _encode(value: Any, depth: int, budget: _Budget) -> Any:
    budget.items += 1
    if budget.items > _MAX_ITEMS or depth > _MAX_DEPTH:
        return _unsupported("a structure too large or too deeply nested")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else float(value)
    if isinstance(value, torch.Tensor):
        if kind is torch.nn.Parameter:
            value = value.detach()
        elif kind is not torch.Tensor:
            return _unsupported(f"a subclass of torch.Tensor ({kind.__qualname__})")
        budget.elements += value.numel()
        if budget.elements > MAX_ELEMENTS:
            return _unsupported(f"tensors with more than {MAX_ELEMENTS:,} elements in total")
        if value.is_sparse or value.layout != torch.strided:
            return _unsupported(f"a {value.layout} tensor")
        # A view would save its whole storage: clone into a compact tensor.
        return value.detach().clone(memory_format=torch.contiguous_format)
    if kind in (list, tuple):
        items = [_encode(v, depth + 1, budget) for v in value]
        return items if kind is list else tuple(items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return tuple(_encode(v, depth + 1, budget) for v in tuple.__iter__(value))
    if isinstance(value, dict) and kind.__module__ in ("builtins", "collections"):
        out = {}
        for k in dict.keys(value):
            if type(k) is not str:
                return _unsupported("a dict with keys that are not strings")
            out[k] = _encode(dict.__getitem__(value, k), depth + 1, budget)
        return out
    numpy_value = _from_numpy(value)
    if numpy_value is not None:
        return _encode(numpy_value, depth, budget)
    return _unsupported(f"an object of type {kind.__module__}.{kind.__qualname__}")


def _from_numpy(value: Any) -> Any:
    """numpy arrays and scalars (allowed in the fid exercise) as tensors and Python numbers."""
    kind = type(value)
    if kind.__module__ != "numpy":
        return None
    import numpy as np

    if kind is np.ndarray:
        if value.dtype.kind not in "biuf":
            return None
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    return None
