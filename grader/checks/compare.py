"""Comparing what came back with what was expected: types, shapes, dtypes, devices, values.

Every returned value is first converted in the grader's process into a plain
``torch.Tensor`` (:func:`as_tensor`): the worker already reduced it to plain
data, and here nothing but an exact ``torch.Tensor`` of a floating dtype and the
expected shape is accepted. Values are then compared in float64 on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from grader.checks.base import format_tensor
from grader.sandbox.wire import UNSUPPORTED

__all__ = ["DEFAULT_TOLERANCE", "Mismatch", "Tolerance", "as_tensor", "as_tuple", "compare", "compare_values", "show"]


class Mismatch(Exception):
    """The returned value is not what was expected; the message says how, for the student."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Tolerance:
    """|got − expected| ≤ atol + rtol·|expected|, per dtype of the student's output.

    ``why`` is the justification, shown in reports and required of every declaration.
    """

    rtol32: float
    atol32: float
    rtol64: float
    atol64: float
    why: str

    def for_dtype(self, dtype: torch.dtype) -> tuple[float, float]:
        if dtype == torch.float64:
            return self.rtol64, self.atol64
        return self.rtol32, self.atol32


#: For closed-form expressions of a few operations on O(1) values. float32's unit
#: round-off is u = 6e-8; such a formula, evaluated in any order, carries an
#: error of at most a few tens of u relative to the magnitude of its terms, so
#: 1e-4 relative (≈ 1700 u) plus 1e-5 absolute leaves a margin of ~50x for correct
#: code, while the bugs we catalogue change values by 1e-3 or more. float64 the same
#: with u = 1.1e-16: 1e-9 relative is ~10⁷ u.
DEFAULT_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=1e-5, rtol64=1e-9, atol64=1e-10,
    why="a few floating-point operations: ≤ ~50 units of round-off, with a 50x margin",
)


def as_tensor(value: Any, what: str, *, real: bool = True, shape: tuple | None = None,
              finite: bool = False) -> torch.Tensor:
    """The returned value as a plain tensor with values, or :class:`Mismatch` saying what it was instead.

    Refused, each with one clear sentence (never an internal error further on): anything
    but an exact ``torch.Tensor``; a tensor on PyTorch's ``meta`` device (it has a shape but
    no values); a sparse or other non-strided layout; a complex tensor where real values
    are expected (``real=True``, the default). With ``shape``, another shape is refused too;
    with ``finite``, NaN and infinite values, and the tensor comes back in float64 on the CPU.
    """
    if isinstance(value, dict) and UNSUPPORTED in value:
        raise Mismatch(f"{what} is {value[UNSUPPORTED]}; a plain torch.Tensor was expected")
    if type(value) is not torch.Tensor:
        kind = "None" if value is None else type(value).__name__
        raise Mismatch(f"{what} is {kind}, not a torch.Tensor")
    if value.layout != torch.strided:
        raise Mismatch(f"{what} is a {value.layout} tensor; a plain (dense, strided) torch.Tensor was expected")
    if value.device.type == "meta":
        raise Mismatch(f"{what} is a tensor on PyTorch's meta device, which holds no values; return it on the "
                       "inputs' device")
    if real and value.is_complex():
        raise Mismatch(f"{what} has the complex dtype {value.dtype}; real values were expected")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise Mismatch(f"{what} has shape {tuple(value.shape)}; expected {tuple(shape)}")
    if finite:
        value = value.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(value).all()):
            raise Mismatch(f"{what} contains NaN or infinite values")
    return value


def as_tuple(value: Any, names: tuple[str, ...], what: str) -> tuple:
    """A returned tuple (or list) of exactly ``len(names)`` items."""
    if isinstance(value, dict) and UNSUPPORTED in value:
        raise Mismatch(f"{what} is {value[UNSUPPORTED]}; a tuple ({', '.join(names)}) was expected")
    if not isinstance(value, (tuple, list)):
        kind = "None" if value is None else type(value).__name__
        raise Mismatch(f"{what} is {kind}; a tuple ({', '.join(names)}) was expected")
    if len(value) != len(names):
        raise Mismatch(f"{what} has {len(value)} items; expected {len(names)}: ({', '.join(names)})")
    return tuple(value)


def compare(
    got: Any,
    expected: torch.Tensor,
    tolerance: Tolerance,
    what: str = "the result",
    *,
    scale: torch.Tensor | None = None,
    scale_what: str = "",
    broadcast: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise :class:`Mismatch` unless |got − expected| ≤ atol + rtol·scale everywhere, with ``expected``'s shape.

    The one comparator of the library. ``scale`` is |expected| by default; a formula whose
    terms can be much larger than its value (DDIM's update divides by √ᾱ_t, a conversion
    x̂₀ = (x_t − √(1 − ᾱ)·ε)/√ᾱ cancels) passes the size of its terms, Σ|terms| (float64,
    broadcasting against ``expected``), named by ``scale_what`` in the message: round-off of
    a correct implementation is relative to that size, not to the result.

    Args:
        got: the student's value (checked with :func:`as_tensor`: a real floating tensor).
        expected: the reference's value (float64 is best).
        tolerance: rtol and atol per dtype.
        what: names the value in messages ("the result", "`x_mean` (item 1 of the result)").
        scale: the size the round-off is relative to; None: |expected|.
        scale_what: what ``scale`` is, for the message ("the size of the update's terms").
        broadcast: accept a ``got`` that broadcasts to ``expected``'s shape (a variance
            returned as ``(B, 1, 1)`` for data ``(B, C, H)``).
        dtype: the dtype of the *inputs*: float64's tolerance applies only when both the
            inputs and the result are float64 (a result in the wrong dtype loses its dtype
            test, not its value test as well). None: the result's dtype decides.

    Where ``expected`` is not finite (an infinite log-variance), ``got`` must equal it.
    """
    got = as_tensor(got, what)
    if not got.is_floating_point():
        raise Mismatch(f"{what} has dtype {got.dtype}; a floating-point tensor was expected")
    if tuple(got.shape) != tuple(expected.shape):
        if not (broadcast and _broadcasts_to(got.shape, expected.shape)):
            raise Mismatch(f"{what} has shape {tuple(got.shape)}; expected {tuple(expected.shape)}",
                           got=f"shape {tuple(got.shape)}", expected=f"shape {tuple(expected.shape)}")
        got = got.expand(expected.shape)
    both64 = got.dtype == torch.float64 and (dtype is None or dtype == torch.float64)
    rtol, atol = tolerance.for_dtype(torch.float64 if both64 else torch.float32)
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    size = e.abs() if scale is None else torch.as_tensor(scale).detach().to("cpu", torch.float64).expand(e.shape)
    finite = torch.isfinite(e)
    bad_nonfinite = (~torch.isfinite(g) & finite) | (~finite & ~(g == e) & ~(torch.isnan(g) & torch.isnan(e)))
    diff = (g - e).abs()
    allowed = atol + rtol * size
    bad = bad_nonfinite | (finite & ~(diff <= allowed))
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    excess = torch.where(finite, diff / allowed, torch.full_like(diff, float("inf")))
    excess = torch.where(bad, torch.nan_to_num(excess, nan=float("inf")), torch.full_like(excess, -float("inf")))
    flat_index = int(excess.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), e.shape)) if e.ndim else ()
    got_at, expected_at = g.flatten()[flat_index].item(), e.flatten()[flat_index].item()
    if not math.isfinite(got_at) and math.isfinite(expected_at):
        headline = f"{what} contains {got_at} where a finite value was expected"
    else:
        headline = f"{what} differs from the expected values"
    if scale is None:
        allowance = f"allowed |got − expected| ≤ {atol:g} + {rtol:g}·|expected|"
    else:
        allowance = (f"allowed |got − expected| ≤ {allowed.flatten()[flat_index].item():.3g} there, i.e. {atol:g} + "
                     f"{rtol:g}·({scale_what or 'the size of the terms'}, {size.flatten()[flat_index].item():.3g}), "
                     f"for {'float64' if both64 else 'float32'}")
    message = (
        f"{headline}: {count} of {e.numel()} entries are off; the worst is at index {list(index)}: "
        f"got {got_at:.8g}, expected {expected_at:.8g} ({allowance})"
    )
    raise Mismatch(message, got=show(g), expected=show(e))


def compare_values(got: Any, expected: torch.Tensor, tolerance: Tolerance, what: str = "the result", *,
                   broadcast: bool = False) -> None:
    """:func:`compare` relative to |expected| (kept for declarations written before :func:`compare`)."""
    compare(got, expected, tolerance, what, broadcast=broadcast)


def show(t: torch.Tensor, limit: int = 64) -> str:
    """Values for the report: all of them when few, else the first ``limit``, flattened."""
    t = t.detach()
    if t.numel() <= limit:
        return format_tensor(t)
    return f"{format_tensor(t.flatten()[:limit])[:-1]}, …] (first {limit} of {t.numel()} entries, flattened)"


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    if len(shape) > len(target):
        return False
    for a, b in zip(reversed(shape), reversed(target)):
        if a not in (1, b):
            return False
    return True
