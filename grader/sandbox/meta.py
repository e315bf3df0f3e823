"""PyTorch's meta device, made cheap to reach: the lazy dynamo guards, and a warm-up of the meta machinery.

The grader judges device-agnosticism by calling the student's function on ``meta`` tensors
(:func:`grader.checks.property.device_leak`). A process's first meta operation imports torch's
meta registrations and symbolic-shape machinery (sympy with them, ~0.5 s), and through
``torch._disable_dynamo`` wrappers torch._dynamo too (another 0.6-3 s) unless
:func:`lazy_dynamo_guards` ran first. Here because both the grader (its warmer) and the student's
process use them: in the student's process the guards are shipped as a probe before the first meta
call, and a ``grade batch`` slot's zygote runs :func:`warm` once for every kernel it forks
(:func:`grader.sandbox.launch.preimport`). Imports torch only.
"""

from __future__ import annotations

__all__ = ["lazy_dynamo_guards", "warm", "warm_in_background"]


def lazy_dynamo_guards(ns):  # no annotations: shipped as source to a process without typing
    """A probe, run once in the student's process before its first call on meta: no torch._dynamo import for it.

    PyTorch computes most meta results in Python (``torch._refs``), each wrapped by
    ``torch._disable_dynamo``, whose first call imports torch._dynamo only to build the guard: 2.5-3.7 s
    on the loaded 2 cores (5-8 s in ``check()``), the bulk of the meta probe's cost. Here every such
    wrapper gets its cached guard now: a function that calls the wrapped one directly while torch._dynamo
    is not imported — then nothing can be compiling, so the guard has nothing to disable and the call is the
    same — and that hands over to the real guard, for good, once torch._dynamo is imported (torch.compile,
    torch.optim). Only wrappers without a guard yet are touched. Returns how many were given one (0 when
    this torch's wrapper has another shape: nothing changed, the probe is only slower). ~0.1 s.
    """
    import gc
    import sys
    import types

    import torch._compile

    code = torch._compile._disable_dynamo(lambda: None).__code__
    if not {"fn", "recursive"} <= set(code.co_freevars):
        return 0
    seeded = 0
    for obj in gc.get_objects():
        if type(obj) is not types.FunctionType or obj.__code__ is not code:
            continue
        cells = dict(zip(code.co_freevars, (cell.cell_contents for cell in obj.__closure__)))
        fn, recursive = cells["fn"], cells["recursive"]
        if getattr(fn, "__dynamo_disable", None) is not None:
            continue

        def guard(*args, _fn=fn, _recursive=recursive, **kwargs):
            dynamo = sys.modules.get("torch._dynamo")
            if dynamo is None:
                return _fn(*args, **kwargs)
            real = dynamo.disable(_fn, _recursive, wrapping=False)
            _fn.__dynamo_disable = real
            return real(*args, **kwargs)

        fn.__dynamo_disable = guard
        seeded += 1
    return seeded


_WARMED: list[bool] = []


def warm() -> None:
    """This process's first meta-device operations, done now: the guards, then a few everyday operations
    (creation, arithmetic with broadcasting, a reduction, concatenation), which import what any later
    meta call needs. Once per process (a kernel forked from a warm zygote has it done)."""
    if _WARMED:
        return
    _WARMED.append(True)
    import torch

    lazy_dynamo_guards(None)
    meta = torch.device("meta")
    x = torch.randn(3, 2, device=meta)
    (torch.cat([x, torch.zeros_like(x)]) * torch.arange(2, device=meta)).sum(0).sqrt()


def warm_in_background() -> None:
    """:func:`warm` in a daemon thread. The grader asks a kernel for it just before the notebook's first cell
    (:meth:`grader.sandbox.kernel.SandboxKernel.warm_meta`), so that the meta machinery loads while the
    notebook runs (mostly in torch, which releases the GIL) rather than at the grader's first device check,
    when the grader waits for it. Nothing depends on it: the grader's own probe (:func:`lazy_dynamo_guards`)
    and first meta call come later as before, only cheaper; a failure here leaves them to do the work."""
    import threading

    def run() -> None:
        try:
            warm()
        except Exception:  # noqa: BLE001 -- see the docstring
            pass

    threading.Thread(target=run, name="grader-meta-warm", daemon=True).start()
