"""What a kernel must not spend per submission: the costs a profile of ``grade batch`` found there.

One sandboxed kernel (cold; a zygote's forks run the same :func:`grader.sandbox.launch.preimport`):
- ipykernel imports debugpy, and pydevd, for every kernel it starts; pydevd walks every loaded module
  (torch's thousands), 0.3-0.4 s a kernel, for a debugger the grader never attaches;
- a call's request rode inside the execute_request's code as base64, and IPython tokenises,
  transforms and hashes (murmur2, in Python) all of a cell's text: for q_sampler's checks that cost
  more than the calls themselves. It now travels as the message's binary frame.

Both assertions were seen failing on the code before (debugpy in ``sys.modules``; no call sent a frame).
"""

from __future__ import annotations

import time

import nbformat
import torch

from grader.sandbox.kernel import Limits, SandboxKernel


def test_the_kernel_loads_no_debugger_and_a_calls_request_is_not_code(tmp_path, monkeypatch):
    sent: list[tuple[str, list | None]] = []
    original = SandboxKernel._aexecute_source

    async def spy(self, source, timeout, sink=None, buffers=None):
        sent.append((source, buffers))
        return await original(self, source, timeout, sink, buffers)

    monkeypatch.setattr(SandboxKernel, "_aexecute_source", spy)
    big = torch.arange(300_000, dtype=torch.float64)  # 2.4 MB: 3.2 MB of base64 inside the code, before
    with SandboxKernel(tmp_path, Limits(), []) as kernel:
        cell = nbformat.v4.new_code_cell(
            "import sys\n"
            "def total(x):\n    return float(x.sum())\n"
            "print([m for m in sys.modules if (m.startswith(('debugpy', 'pydevd', '_pydevd')) and sys.modules[m])])\n")
        nb = nbformat.v4.new_notebook(cells=[cell])
        deadline = time.monotonic() + 120
        assert [r.status for r in kernel.run_notebook(nb, deadline)] == ["ok"]
        printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("name") == "stdout")
        outcomes = kernel.call({"calls": [{"function": "total", "args": [big]}, {"function": "total", "args": [big[:3]]}],
                                "seeds": [0, 1], "call_timeout": 30}, deadline)
    assert printed.strip() == "[]", printed
    assert [o.get("value") for o in outcomes] == [float(big.sum()), 3.0], outcomes
    framed = [(code, buffers) for code, buffers in sent if buffers]
    assert len(framed) == 1, [len(code) for code, _ in sent]
    code, buffers = framed[0]
    assert len(code) < 200 and sum(len(b) for b in buffers) > big.numel() * 8
