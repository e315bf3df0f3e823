"""Ways to call the student's functions: in a sandboxed kernel, or in this process.

Both speak the worker's protocol (:mod:`grader.sandbox.worker`) and round-trip
requests and outcomes through the same serialisation, so a check behaves the
same whichever runs it. :class:`KernelRunner` is how ``grade submit`` grades;
:class:`InProcessRunner` serves ``check()`` inside a student's own notebook and
the project's tests, where the code under test is trusted.
"""

from __future__ import annotations

import time

from grader.sandbox import wire, worker
from grader.sandbox.kernel import SandboxKernel

__all__ = ["InProcessRunner", "KernelRunner"]


class InProcessRunner:
    """Calls functions of ``namespace`` (a dict: a notebook's globals, a module's ``vars()``) directly."""

    def __init__(self, namespace: dict, call_timeout: float | None = None) -> None:
        self.namespace = namespace
        self.call_timeout = call_timeout

    def run(self, calls: list[dict], seeds: list[int]) -> list[dict]:
        request = wire.loads(wire.dumps({"calls": calls, "seeds": seeds, "call_timeout": self.call_timeout}))
        outcomes: list[dict] = []
        # The same round trip as from a kernel, and the same checks on the way back: a check behaves
        # the same in a notebook's check() as under `grade submit`.
        worker.execute(request, self.namespace, lambda index, outcome: outcomes.append(
            wire.outcome_from_kernel(wire.unpack_untrusted(wire.pack(outcome)))))
        return outcomes


class KernelRunner:
    """Calls functions defined in a :class:`SandboxKernel`, within a submission-wide deadline."""

    def __init__(self, kernel: SandboxKernel, deadline: float) -> None:
        self.kernel = kernel
        self.deadline = deadline

    def run(self, calls: list[dict], seeds: list[int]) -> list[dict]:
        if time.monotonic() >= self.deadline:
            return [{"status": "timeout", "message": "was not called: the submission's time budget was spent"}
                    for _ in calls]
        request = {"calls": calls, "seeds": seeds, "call_timeout": self.kernel.limits.call_timeout}
        return self.kernel.call(request, self.deadline)
