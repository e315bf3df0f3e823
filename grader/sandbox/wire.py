"""What crosses between the grader and the student's process, in both directions.

Requests (grader to kernel) travel as ``torch.save`` bytes, loaded in the kernel with
``torch.load(weights_only=True)``. Outcomes (kernel to grader) travel in a format of the
grader's own (:func:`pack`, :func:`unpack_untrusted`): a JSON tree of numbers, strings,
``None``, lists, tuples, string-keyed dicts and tensors, the tensors' bytes after it. Nothing
the student's process sent is ever unpickled, unzipped or parsed by torch on the grader's side:
the grader reads JSON and copies bytes into tensors whose dtype, shape and size it checked.

Arguments that are not plain data (a model, a generator, a module) travel as
*specs*: small dicts that the worker turns into the object (:func:`decode`),
e.g. ``generator_spec(3)`` becomes ``torch.Generator().manual_seed(3)``.

Return values are reduced to plain data by :func:`encode` in the student's
process; anything else (a tensor subclass, an object, a module) becomes an
``{"__unsupported__": ...}`` marker that the grader reports as a wrong type. The
grader then converts and validates every value itself (:func:`grader.checks.as_tensor`).
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any, Callable

import torch

from grader.sandbox import constants

__all__ = [
    "SPEC",
    "UNSUPPORTED",
    "decode",
    "dumps",
    "encode",
    "generator_spec",
    "loads",
    "pack",
    "unpack_untrusted",
    "model_spec",
    "module_spec",
    "outcome_from_kernel",
    "clean_text",
    "transfer_error",
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
        # Tensors that hold no values (meta), or values no check can compare (sparse, complex,
        # quantized), are named here, in a sentence, rather than failing in torch.save or in the grader.
        if value.is_sparse or value.layout != torch.strided:
            return _unsupported(f"a {value.layout} tensor (a dense one was expected)")
        if value.is_meta:
            return _unsupported("a tensor on the meta device, which holds no values")
        if value.is_complex():
            return _unsupported(f"a complex tensor ({value.dtype}); real values were expected")
        if value.is_quantized:
            return _unsupported(f"a quantized tensor ({value.dtype})")
        budget.elements += value.numel()
        if budget.elements > MAX_ELEMENTS:
            return _unsupported(f"tensors with more than {MAX_ELEMENTS:,} elements in total")
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


# -- The grader's side: everything that came back is untrusted --------------------------------------
#
# The kernel is the student's process: whatever the worker promises there (its caps, its
# statuses, its encoding) a submission can patch. So the grader checks again, in its own process,
# everything it reads back, before a check, results.json, the report or the terminal sees it.

#: Statuses an outcome may have: the worker's, and those the grader makes for calls the kernel
#: did not answer.
STATUSES = frozenset({"ok", "error", "missing", "timeout", "memory", "skipped", "crashed"})

#: Bytes one outcome may take in its packed form (see :mod:`grader.sandbox.constants`).
MAX_OUTCOME_BYTES = constants.MAX_OUTCOME_BYTES

#: Characters kept of each text an outcome carries: a message is one sentence (the worker cuts it at
#: 2,000), an exception type a name, a traceback the student's last frames (the worker keeps 2,000).
TEXT_LIMITS = {"message": 2_000, "error_type": 100, "traceback": 4_000}
#: Strings inside returned values (a function that returned a string: it is shown in the message).
VALUE_TEXT_LIMIT = 2_000
#: What the guard refused during one call: the first few say enough.
MAX_REFUSALS, REFUSAL_LIMIT = 5, 500
#: Model calls logged for one outcome: a sampler of T ≤ 1,000 steps, a few models, calls per step.
MAX_MODEL_CALLS = 100_000

# Terminal escape sequences: CSI (colours, cursor moves, erasing the screen), the string
# sequences OSC/DCS/SOS/PM/APC (window titles, hyperlinks, clipboard writes), and the short escapes.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
# Control characters but \t and \n (C0, DEL, C1), and the bidirectional overrides that make a
# line read other than it is.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class TransferRefused(Exception):
    """What came back from the kernel is not something the grader will load."""


def clean_text(value: Any, limit: int, *, keep: str = "head") -> str:
    """``value`` as safe text: decoded (invalid UTF-8 and lone surrogates replaced), without escape
    sequences or control characters but tab and newline, and at most ``limit`` characters plus a
    note (``keep="tail"`` keeps the end: a traceback's last lines say the most)."""
    window = 4 * limit + 64  # cut before cleaning, so that cleaning costs O(limit) whatever came back
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        value = (raw[:window] if keep == "head" else raw[-window:]).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = repr(value) if isinstance(value, (int, float, bool, type(None))) else f"<{type(value).__name__}>"
    text = value[:window] if keep == "head" else value[-window:]
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub("", _ESCAPE.sub("", text))
    if len(text) > limit:
        if keep == "head":
            text = text[:limit] + f" [... cut by the grader after {limit:,} characters]"
        else:
            text = f"[... cut by the grader: the last {limit:,} characters]\n" + text[-limit:]
    return text


def transfer_error(message: str) -> dict:
    """The outcome of a call whose result the grader could not, or would not, read back."""
    return {"status": "error", "error_type": "TransferError", "message": message, "traceback": "",
            "model_calls": [], "refusals": []}


# -- Outcomes' format --------------------------------------------------------------------------------
#
# MAGIC, the header's length (8 bytes, little-endian), the header (JSON, ASCII), the tensors' bytes.
# In the header a JSON object is always a tag of one key: {"t": [items]} a tuple, {"d": {key: item}}
# a dict (keys are strings; what is inside is tagged again, so a student's key can be anything),
# {"x": [dtype, shape, offset, nbytes, device]} a tensor whose bytes are body[offset:offset + nbytes].
# Lists, strings, numbers (NaN and infinities as JSON's NaN/Infinity), booleans and null are themselves.

MAGIC = b"GRW1"
#: Nesting the unpacker follows: an outcome (1), its model log (2), a value's own _MAX_DEPTH, and room.
_MAX_NESTING = _MAX_DEPTH + 8
#: Dimensions of one tensor, and the largest extent of one.
_MAX_DIMS, _MAX_EXTENT = 64, 1 << 48
#: Every dtype a packed tensor may have (the dense real ones :func:`encode` lets through), by name.
_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if isinstance(getattr(torch, name, None), torch.dtype)}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,3})?")


def pack(obj: Any) -> bytes:
    """An outcome (or any tree of plain data, as :func:`encode` makes) in the outcomes' format.

    Raises TypeError on anything else (an object, a dict with other keys, a tensor subclass, a tensor
    that holds no values or is not dense and real): the worker then sends a TransferError instead.
    """
    chunks: list[bytes] = []
    size = [0]

    def tensor(value: torch.Tensor) -> dict:
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"a subclass of torch.Tensor ({type(value).__qualname__})")
        if value.layout != torch.strided or value.is_meta or value.dtype not in _DTYPE_NAMES:
            raise TypeError(f"a {value.layout} tensor of {value.dtype} on {value.device}")
        device = str(value.device)
        flat = torch.empty(value.shape, dtype=value.dtype).copy_(value.detach())  # row-major strides, whatever it had
        data = flat.reshape(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        chunks.append(data)
        size[0] += len(data)
        return {"x": [_DTYPE_NAMES[value.dtype], list(value.shape), size[0] - len(data), len(data), device]}

    def node(value: Any, depth: int) -> Any:
        if depth > _MAX_NESTING:
            raise TypeError("a structure nested too deeply")
        kind = type(value)
        if value is None or kind in (bool, int, float, str):
            return value
        if kind is list:
            return [node(v, depth + 1) for v in value]
        if kind is tuple:
            return {"t": [node(v, depth + 1) for v in value]}
        if kind is dict:
            if not all(type(k) is str for k in value):
                raise TypeError("a dict with keys that are not strings")
            return {"d": {k: node(v, depth + 1) for k, v in value.items()}}
        if isinstance(value, torch.Tensor):
            return tensor(value)
        raise TypeError(f"an object of type {kind.__module__}.{kind.__qualname__}")

    header = json.dumps(node(obj, 0), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *chunks])


def unpack_untrusted(data: bytes, limit: int = MAX_OUTCOME_BYTES) -> Any:
    """What :func:`pack` made, from bytes the kernel sent: refused (:class:`TransferRefused`) unless well formed.

    At most ``limit`` bytes; a header that is JSON of tags as :func:`pack` writes them, nested at most
    :data:`_MAX_NESTING` deep; each tensor of a known dtype, its shape's size times the dtype's size
    equal to its byte count, its bytes inside the body, on a device this process has. Bytes are
    copied, never shared, and a bool tensor's are read as ``!= 0`` (a byte of 2 is not a bool).
    """
    if len(data) > limit:
        raise TransferRefused(f"it is larger than the grader's {limit // 1024**2} MiB limit")
    if len(data) < 12 or data[:4] != MAGIC:
        raise TransferRefused("it is not in the grader's transfer format")
    length = int.from_bytes(data[4:12], "little")
    if length > len(data) - 12:
        raise TransferRefused("it is not in the grader's transfer format (a cut header)")
    try:
        tree = json.loads(data[12:12 + length])
    except (ValueError, RecursionError):  # not JSON, not UTF-8, an integer too long, or nested past C's stack
        raise TransferRefused("it is not in the grader's transfer format (its header is not JSON)") from None
    body = memoryview(data)[12 + length:]

    def refuse(why: str):
        raise TransferRefused(f"it is not in the grader's transfer format ({why})")

    def tensor(spec: Any) -> torch.Tensor:
        if type(spec) is not list or len(spec) != 5:
            refuse("a malformed tensor")
        name, shape, offset, nbytes, device = spec
        dtype = _DTYPES.get(name) if type(name) is str else None
        if dtype is None:
            refuse("a tensor of an unknown dtype")
        if type(shape) is not list or len(shape) > _MAX_DIMS or \
                not all(type(d) is int and 0 <= d <= _MAX_EXTENT for d in shape):
            refuse("a tensor of a malformed shape")
        if type(offset) is not int or type(nbytes) is not int or not 0 <= offset <= offset + nbytes <= len(body):
            refuse("a tensor whose bytes are not in the message")
        if math.prod(shape) * dtype.itemsize != nbytes:
            refuse("a tensor whose size does not match its shape")
        if type(device) is not str or not _DEVICE.fullmatch(device):
            refuse("a tensor on an unknown device")
        if nbytes == 0:
            value = torch.empty(shape, dtype=dtype)
        elif dtype is torch.bool:
            value = torch.frombuffer(bytearray(body[offset:offset + nbytes]), dtype=torch.uint8).reshape(shape) != 0
        else:
            value = torch.frombuffer(bytearray(body[offset:offset + nbytes]), dtype=dtype).reshape(shape)
        if device != "cpu":
            try:
                value = value.to(device)
            except (RuntimeError, AssertionError, ValueError) as exc:  # no such device here
                raise TransferRefused(f"its tensor is on {device}, which the grader cannot use "
                                      f"({type(exc).__name__})") from None
        return value

    def node(item: Any, depth: int) -> Any:
        if depth > _MAX_NESTING:
            refuse("nested too deeply")
        kind = type(item)
        if item is None or kind in (bool, int, float, str):
            return item
        if kind is list:
            return [node(v, depth + 1) for v in item]
        if kind is dict and len(item) == 1:
            (tag, inner), = item.items()
            if tag == "t" and type(inner) is list:
                return tuple(node(v, depth + 1) for v in inner)
            if tag == "d" and type(inner) is dict:
                return {k: node(v, depth + 1) for k, v in inner.items()}
            if tag == "x":
                return tensor(inner)
        refuse("an object it does not know")

    return node(tree, 0)


def _clean_strings(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value, VALUE_TEXT_LIMIT)
    if isinstance(value, list):
        return [_clean_strings(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clean_strings(v) for v in value)
    if isinstance(value, dict):
        return {_clean_strings(k): _clean_strings(v) for k, v in value.items()}
    return value


def _model_calls(calls: Any) -> list | str | None:
    """The logs of recorded models (a list per model of dicts per call); None when malformed,
    ``"many"`` when longer than :data:`MAX_MODEL_CALLS`."""
    if not isinstance(calls, list) or not all(isinstance(log, list) for log in calls):
        return None
    if sum(len(log) for log in calls) > MAX_MODEL_CALLS:
        return "many"
    if not all(isinstance(entry, dict) for log in calls for entry in log):
        return None
    cleaned = [[_clean_strings(encode(entry)) for entry in log] for log in calls]  # each entry its own budget
    plain = (bool, int, float, torch.Tensor)  # what ModelLog records: a batch size, a level, a condition
    ok = all(isinstance(entry, dict) and UNSUPPORTED not in entry and all(isinstance(v, plain) for v in entry.values())
             for log in cleaned for entry in log)
    return cleaned if ok else None


def outcome_from_kernel(raw: Any) -> dict:
    """One outcome as the kernel sent it, checked and cleaned on the grader's side.

    A known status; texts decoded, stripped and capped (:data:`TEXT_LIMITS`); the value
    reduced again by :func:`encode` (so a meta, sparse or complex tensor that slipped past a patched
    worker is still a marker) with its strings cleaned; model logs and refusals well formed and
    bounded. Anything else is a ``TransferError`` outcome that says so.
    """
    if not isinstance(raw, dict) or type(raw.get("status")) is not str or raw["status"] not in STATUSES:
        return transfer_error("the result sent back was not understood")
    outcome: dict = {"status": raw["status"]}
    if "value" in raw:
        outcome["value"] = _clean_strings(encode(raw["value"]))
    elif raw["status"] == "ok":
        return transfer_error("the result sent back had no value")
    for key, limit in TEXT_LIMITS.items():
        if key in raw:
            outcome[key] = clean_text(raw[key], limit, keep="tail" if key == "traceback" else "head")
    calls = _model_calls(raw.get("model_calls", []))
    if calls == "many":
        return transfer_error(f"the model was called more than {MAX_MODEL_CALLS:,} times in one call")
    if calls is None:
        return transfer_error("the result sent back had a malformed log of model calls")
    outcome["model_calls"] = calls
    refusals = raw.get("refusals", [])
    if not isinstance(refusals, list):
        refusals = []
    outcome["refusals"] = [clean_text(r, REFUSAL_LIMIT) for r in refusals[:MAX_REFUSALS]]
    return outcome
