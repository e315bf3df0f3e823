"""Answers the grader's batched calls inside the student's process.

A request is a list of calls; each names a notebook function (or ships a small
*probe*: harness code that drives the student's functions, e.g. iterating
``q_step``) with its arguments. Each call runs with the global RNGs seeded from
the request, under a wall-clock alarm, and its outcome is published on IOPub as
soon as it is known (:func:`serve`), so that a call that hangs or kills the
process still leaves the earlier outcomes behind.

An outcome is a dict: ``status`` ("ok", "error", "missing", "timeout"), and
``value`` (encoded by :func:`grader.sandbox.wire.encode`), or ``error_type``,
``message`` and ``traceback`` (student frames only); plus ``model_calls`` (the
logs of recorded models) and ``refusals`` (what the guard refused meanwhile).
"""

from __future__ import annotations

import base64
import dis
import inspect
import linecache
import os
import random
import signal
import sys
import traceback
from typing import Any, Callable

import torch

from grader.sandbox import constants, guard, models, wire

__all__ = ["CallTimeout", "StudentNamespace", "execute", "is_stub", "reply", "serve", "stub_outcomes"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_MAX_MESSAGE = 2_000


class CallTimeout(BaseException):
    """Raised by the alarm when one call runs past its time limit."""


class MissingFunction(Exception):
    """A probe asked the namespace for a function the notebook does not define."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class StudentNamespace:
    """Attribute access to the notebook's functions, for probes: ``ns.q_step``."""

    def __init__(self, namespace: dict) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._namespace:
            raise MissingFunction(name)
        return self._namespace[name]


def _seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)``, without its cost where no accelerator can ever be used in this process.

    torch.manual_seed also seeds CUDA, XPU and MTIA, and for each one not yet initialised it queues the
    seeding with a formatted stack (``traceback.format_stack``, source lines read): about 3 ms a call at
    the depth of a kernel's stack, 0.7 s of the kernel's 1.7 s of checks in a q_sampler grading. Where
    ``torch.accelerator`` finds none available none can be initialised later, and the CPU generator is
    all that torch.manual_seed would have seeded that any code can draw from.
    """
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def _seed_everything(seed: int) -> None:
    _seed_torch(seed)
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)


def _student_traceback(exc: BaseException) -> str:
    """The student's frames of ``exc`` (not the grader's, nor torch's internals), and the exception."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((_HERE, _TORCH))]
    lines = traceback.format_list(frames[-6:])
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)[-_MAX_MESSAGE:]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "allocate memory" in str(exc) or "out of memory" in str(exc)


def _memory_message() -> str:
    limit = os.environ.get("GRADER_MEMORY_LIMIT")
    if limit and limit.isdigit():
        return f"exceeded the {int(limit) / 1024**3:g} GiB memory limit"
    return "ran out of memory"


def _on_alarm(signum, frame):
    raise CallTimeout()


def _resolve(call: dict, namespace: dict) -> Callable:
    if call.get("probe"):
        scope: dict = {"torch": torch, "__name__": "grader_probe"}
        exec(compile(call["probe"], f"<probe {call['probe_name']}>", "exec"), scope)
        probe = scope[call["probe_name"]]
        student = StudentNamespace(namespace)
        return lambda *args, **kwargs: probe(student, *args, **kwargs)
    name = call["function"]
    if name not in namespace:
        raise MissingFunction(name)
    return namespace[name]


def _run_one(call: dict, namespace: dict, seed: int, timeout: float | None) -> dict:
    logs: list[models.ModelLog] = []
    guard.refusals.clear()
    outcome: dict
    try:
        args = wire.decode(call.get("args", []), lambda spec: models.build(spec, logs))
        kwargs = wire.decode(call.get("kwargs", {}), lambda spec: models.build(spec, logs))
        target = _resolve(call, namespace)
        if not callable(target):
            raise TypeError(f"{call['function']} is a {type(target).__name__}, not a function")
        _seed_everything(seed)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            value = target(*args, **kwargs)
        finally:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
        outcome = {"status": "ok", "value": wire.encode(value)}
    except MissingFunction as exc:
        outcome = {"status": "missing", "message": exc.name}
    except CallTimeout:
        outcome = {"status": "timeout", "message": f"timed out after {timeout:g} s"}
    except BaseException as exc:  # noqa: BLE001 -- everything a submission raises is an outcome
        message = f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE]
        if _out_of_memory(exc):
            outcome = {"status": "memory", "message": _memory_message(), "error_type": type(exc).__name__,
                       "traceback": _student_traceback(exc)}
        else:
            outcome = {
                "status": "error",
                "error_type": type(exc).__name__,
                "message": message,
                "traceback": _student_traceback(exc),
            }
    outcome["model_calls"] = [log.calls for log in logs]
    outcome["refusals"] = list(guard.refusals)
    return outcome


#: Opcodes that do nothing a stub could differ by (interpreter bookkeeping across Python 3.11-3.13).
_NEUTRAL = frozenset({"RESUME", "NOP", "CACHE", "PUSH_NULL", "PRECALL", "EXTENDED_ARG", "KW_NAMES"})
_LAZY = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


#: ``super().__init__()`` as it compiles (3.11; 3.12+), the one statement a class's stub ``__init__`` may
#: hold before its raise (a torch or object parent's ``__init__`` without arguments cannot fail).
_SUPER_INIT = (
    [("LOAD_GLOBAL", "super"), ("CALL", 0), ("LOAD_METHOD", "__init__"), ("CALL", 0), ("POP_TOP", None)],
    [("LOAD_GLOBAL", "super"), ("LOAD_DEREF", "__class__"), ("LOAD_FAST", "self"),
     ("LOAD_SUPER_ATTR", "__init__"), ("CALL", 0), ("POP_TOP", None)],
)


def _is_stub_function(fn: Any, allow_super_init: bool = False) -> bool:
    """``fn`` is a plain function whose body is an optional docstring and ``raise NotImplementedError(<constants>)``.

    Decided from its bytecode (a notebook cell's source is not always at hand): load the builtin
    ``NotImplementedError``, optionally call it on constants, raise. A generator (which raises
    only when iterated), a wrapper, a shadowed ``NotImplementedError`` or any other statement is
    not a stub.
    """
    if not inspect.isfunction(fn) or fn.__code__.co_flags & _LAZY:
        return False
    if "NotImplementedError" in fn.__globals__ or \
            getattr(fn, "__builtins__", {}).get("NotImplementedError") is not NotImplementedError:
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(fn) if i.opname not in _NEUTRAL | {"COPY_FREE_VARS"}]
    if allow_super_init and "super" not in fn.__globals__ and fn.__builtins__.get("super") is super:
        for prefix in _SUPER_INIT:
            if ops[:len(prefix)] == prefix:
                ops = ops[len(prefix):]
                break
    if not ops or ops[0] != ("LOAD_GLOBAL", "NotImplementedError") or ops[-1] != ("RAISE_VARARGS", 1):
        return False
    middle = ops[1:-1]
    constants = [op for op in middle if op[0] in ("LOAD_CONST", "RETURN_CONST")]
    calls = [op for op in middle if op[0] == "CALL"]
    if len(constants) + len(calls) != len(middle) or len(calls) > 1:
        return False
    return (not calls and not constants) or (len(calls) == 1 and middle[-1] == ("CALL", len(constants)))


def is_stub(target: Any) -> bool:
    """A function left as its stub, or a class whose own ``__init__`` is one (it cannot be built)."""
    if inspect.isclass(target):
        init = target.__dict__.get("__init__")
        parent = next((c for c in target.__mro__[1:] if "__init__" in c.__dict__), object)
        trusted_parent = parent is object or (parent.__module__ or "").split(".")[0] == "torch"
        return (type(target) is type and target.__new__ is object.__new__
                and _is_stub_function(init, allow_super_init=trusted_parent))
    return _is_stub_function(target)


def _placeholders(target: Any) -> tuple[list, dict] | None:
    """``None`` for every parameter without a default: a stub raises before it reads any."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    args, kwargs = [], {}
    for p in parameters:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = None
        else:
            args.append(None)
    return args, kwargs


def stub_outcomes(names: list, namespace: dict, seed: int, timeout: float | None) -> dict:
    """For each of ``names`` that is exactly its stub (:func:`is_stub`), the outcome of calling it.

    One query before the checks: the grader then answers every direct call of such a function
    with this outcome (the same status, message and traceback a real call gives: the stub is
    called here once, its parameters ``None``, which its body never reads) instead of calling
    it again per test. The answer comes from the student's process and is untrusted, but a lie
    can only lose the student points: a function reported as a stub fails all its tests, and
    anything not reported is graded as before.
    """
    found: dict = {}
    for name in names if isinstance(names, list) else []:
        target = namespace.get(name) if isinstance(name, str) else None
        if not is_stub(target):
            continue
        placeholders = _placeholders(target)
        if placeholders is None:
            continue
        outcome = _run_one({"function": name, "args": placeholders[0], "kwargs": placeholders[1]},
                           namespace, seed, timeout)
        if outcome.get("error_type") == "NotImplementedError":
            found[name] = outcome
    return found


def execute(request: dict, namespace: dict, emit: Callable[[int, dict], None]) -> None:
    """Run every call of ``request`` against ``namespace``; ``emit(index, outcome)`` after each."""
    timeout = request.get("call_timeout")
    use_alarm = bool(timeout) and hasattr(signal, "setitimer") and _main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    try:
        timed_out = False
        for index, call in enumerate(request["calls"]):
            if timed_out:  # one hang is verdict enough; do not spend the rest of the budget
                emit(index, {"status": "skipped", "message": "not run: an earlier call of this batch timed out",
                             "model_calls": [], "refusals": []})
                continue
            seed = request["seeds"][index]
            if "stubs" in call:  # the one query of which graded names are stubs (stub_outcomes)
                outcome = {"status": "ok", "model_calls": [], "refusals": [], "value": wire.encode(
                    stub_outcomes(call["stubs"], namespace, seed, timeout if use_alarm else None))}
                emit(index, outcome)
                continue
            outcome = _run_one(call, namespace, seed, timeout if use_alarm else None)
            timed_out = outcome["status"] == "timeout"
            emit(index, outcome)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous)
        linecache.checkcache()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


#: The private mimetype of an outcome on IOPub: base64 of its bytes (:func:`grader.sandbox.wire.pack`).
OUTCOME_MIME = constants.OUTCOME_MIME
#: Base64 characters of outcomes the execute_reply carries again (see :func:`reply`): the shell
#: channel drops nothing, so these arrive even when a thread floods IOPub. Larger outcomes travel
#: on IOPub only; the bound keeps the reply far below the grader's message cap.
REPLY_CHARS = 16 * 1024**2
_replies: dict[str, list[str]] = {}


def _publisher() -> Callable[[dict, dict], None]:
    """Publish a display_data message on the kernel's IOPub channel and wait until it has left.

    ipykernel sends IOPub messages from a thread of its own; waiting until that thread has
    handed this one to ZeroMQ means a call that kills the process right after still leaves the
    earlier outcomes with the grader.

    The message goes straight to the display publisher's session and socket, not through its
    ``publish``: that first flushes ``sys.stdout`` and ``sys.stderr`` (two more waits on that
    thread, or whatever the notebook put there: a log that syncs on each flush made every outcome
    as slow) and runs the display hooks the notebook may have registered. The grader ignores the
    streams of a call, so their order against the outcomes is nothing to keep. One outcome cost
    the kernel 0.28-0.45 ms of CPU that way, 0.12-0.14 ms this way, measured in a plain ipykernel.
    """
    import threading

    from IPython import get_ipython

    shell = get_ipython()
    io_thread = getattr(getattr(shell, "kernel", None), "iopub_thread", None)
    display = shell.display_pub
    session, socket = getattr(display, "session", None), getattr(display, "pub_socket", None)

    def publish(data: dict, metadata: dict) -> None:
        if session is None or socket is None:  # not ipykernel's publisher: its own way
            display.publish(data=data, metadata=metadata)
        else:
            content = {"data": data, "metadata": metadata, "transient": {}}
            session.send(socket, session.msg("display_data", content, parent=display.parent_header),
                         ident=display.topic)
        if io_thread is not None and getattr(io_thread, "thread", None) is not None and io_thread.thread.is_alive():
            sent = threading.Event()
            io_thread.schedule(sent.set)
            sent.wait(5.0)

    return publish


def _request_frame() -> bytes:
    """The binary frame of the execute_request being run: the batch's request (its torch.save bytes)."""
    from IPython import get_ipython

    parent = get_ipython().kernel.get_parent("shell")
    return bytes(parent["buffers"][0])


def serve(token: str, namespace: dict) -> None:
    """The kernel-side entry point: decode the request, publish one outcome per call on IOPub.

    The request travels as the execute_request's binary frame and each
    outcome leaves as a display_data message of mimetype :data:`OUTCOME_MIME`, tagged with the
    batch's ``token`` and the call's index, as soon as it is known: nothing of the channel is a
    file that the submission could create, replace or link. The grader checks and caps every
    outcome again on its side (:func:`grader.sandbox.wire.outcome_from_kernel`).
    """
    request = wire.loads(_request_frame())
    publish = _publisher()
    _replies.clear()  # a batch that was interrupted before its reply leaves nothing behind
    again = _replies.setdefault(token, [])
    room = [REPLY_CHARS]

    def emit(index: int, outcome: dict) -> None:
        try:
            data = wire.pack(outcome)
        except Exception as exc:  # noqa: BLE001 -- an unsaveable value is the submission's failure
            data = wire.pack({"status": "error", "error_type": "TransferError",
                              "message": f"the returned value could not be sent back: {exc}"[:_MAX_MESSAGE],
                              "traceback": "", "model_calls": [], "refusals": []})
        payload = base64.b64encode(data).decode("ascii")
        publish({OUTCOME_MIME: payload}, {OUTCOME_MIME: {"token": token, "index": index}})
        if len(payload) <= room[0]:
            room[0] -= len(payload)
            again.append(f"{index}:{payload}")

    execute(request, namespace, emit)


def reply(token: str) -> str:
    """The batch's outcomes again, for the execute_reply's ``user_expressions``: ``index:base64;...``.

    IOPub may drop messages when a thread floods it; the shell reply does not. The grader takes
    each call's outcome from whichever arrives first, with the same checks.
    """
    return ";".join(_replies.pop(token, []))
