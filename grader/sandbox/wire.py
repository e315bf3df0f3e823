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
grader then converts and validates every value itself (:func:`grader.checks.as_tensor`).
"""

from __future__ import annotations

import io
import math
import re
import zipfile
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
    "loads_untrusted",
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

#: Bytes one outcome may take in torch.save form (see :mod:`grader.sandbox.constants`).
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


def loads_untrusted(data: bytes, limit: int = MAX_OUTCOME_BYTES) -> Any:
    """``torch.load(weights_only=True)`` of bytes from the kernel, after checking that they are a
    plain torch.save archive of at most ``limit`` bytes once unpacked (no compressed members: a
    small deflated archive could unpack to gigabytes in the grader)."""
    if len(data) > limit:
        raise TransferRefused(f"it is larger than the grader's {limit // 1024**2} MiB limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise TransferRefused("it is not in torch.save's format") from None
    if len(members) > _MAX_ITEMS + 16 or any(m.compress_type != zipfile.ZIP_STORED for m in members) \
            or sum(m.file_size for m in members) > limit:
        raise TransferRefused("it is not a plain torch.save archive within the grader's size limit")
    return torch.load(io.BytesIO(data), weights_only=True)


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
