"""The meta-device probe: code that would fail on a GPU is caught when grading on the CPU.

See :func:`grader.checks.property.device_leak`. Each test grades a one-function
namespace with an :class:`Agreement` check, in-process, and looks at the verdict of
its "output dtype and device" test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from grader.checks import Agreement, Context, Inputs
from grader.runner import InProcessRunner
from grader.sandbox.wire import generator_spec

CASES = st.fixed_dictionaries({"batch": st.integers(1, 3), "dtype": st.sampled_from(["float32", "float64"])})


def _build(case, ctx, with_generator=False):
    dtype = getattr(torch, case["dtype"])
    x = torch.linspace(-1, 1, case["batch"] * 4, dtype=dtype).reshape(case["batch"], 4)
    kwargs = {"generator": generator_spec(0, str(ctx.device))} if with_generator else {}
    return Inputs({"x": x.to(ctx.device), "scale": torch.tensor([2.0, 3.0, 4.0, 5.0], dtype=torch.float64).to(ctx.device)},
                  kwargs)


def _reference(x, scale, generator=None):
    return (x * scale).to(x.dtype)


def _grade(impl, with_generator=False):
    check = Agreement(function="f", cases=CASES, build=lambda c, ctx: _build(c, ctx, with_generator),
                      reference=_reference, dtype_from="x", device_from="x", points=1, dtype_points=1, max_examples=3)
    ctx = Context(InProcessRunner({"f": impl}), torch.device("cpu"), 0, "probe")
    values, device = check.run(ctx)
    return values, device


def test_device_agnostic_code_passes():
    values, device = _grade(lambda x, scale, generator=None: (x * scale.to(x.dtype)))
    assert values.passed and device.passed, device.output


def test_a_tensor_made_on_the_cpu_is_caught_with_the_line_that_uses_it():
    def f(x, scale, generator=None):
        offset = torch.zeros(x.shape[-1], dtype=x.dtype)  # on the CPU, whatever x's device
        return x * scale.to(x.dtype) + offset

    values, device = _grade(f)
    assert values.passed  # right values on the CPU ...
    assert not device.passed  # ... but not device-agnostic
    assert "would fail on a GPU" in device.output and "mixes a tensor made on the CPU" in device.output
    assert "return x * scale.to(x.dtype) + offset" in device.details["traceback"]  # the student's line
    assert "site-packages" not in device.details["traceback"]  # not torch's internals


def test_numpy_inside_is_caught():
    def f(x, scale, generator=None):
        return torch.from_numpy(np.asarray(x.numpy() * scale.numpy(), dtype=x.numpy().dtype))

    values, device = _grade(f)
    assert values.passed and not device.passed
    assert "numpy" in device.output


def test_a_result_returned_on_the_cpu_is_caught():
    """A result made on the CPU from the inputs' shape alone runs on meta, and is on the wrong device there."""
    values, device = _grade(lambda x, scale, generator=None: torch.ones(x.shape, dtype=x.dtype))
    assert not values.passed and not device.passed
    assert "would return a tensor on the cpu" in device.output


@pytest.mark.parametrize("uses_data", [
    lambda x, scale, generator=None: x * scale.to(x.dtype) if bool((x.abs() < 10).all()) else x,
    lambda x, scale, generator=None: x * torch.tensor(scale.tolist(), dtype=x.dtype, device=x.device),
    lambda x, scale, generator=None: x * scale.to(x.dtype) * torch.tensor(1.0),  # a 0-dim CPU scalar is allowed
])
def test_code_that_runs_on_a_gpu_but_needs_data_is_not_penalised(uses_data):
    """.item(), .tolist(), an `if` on a tensor: impossible on meta, fine on a GPU, so inconclusive: passes."""
    values, device = _grade(uses_data)
    assert values.passed and device.passed, device.output


def test_cases_with_a_generator_are_not_probed():
    """No generator lives on meta, so such a case proves nothing either way."""
    def f(x, scale, generator=None):
        return x * scale.to(x.dtype) + torch.zeros(4, dtype=x.dtype)  # would be caught without the generator

    values, device = _grade(f, with_generator=True)
    assert values.passed and device.passed


@pytest.mark.slow  # a fresh interpreter importing torch: 3-20 s on the loaded 2 cores
def test_the_meta_probe_does_not_import_dynamo_and_hands_over_to_it():
    """After lazy_dynamo_guards, do meta calls raise the same device errors without importing torch._dynamo
    (2.5-8 s), and does torch.compile still work, the real guards taking over, once it is imported?

    Seen failing without the probe: the first meta multiplication imports torch._dynamo.
    """
    import json
    import subprocess
    import sys

    code = """
import json, sys, torch
from grader.checks.property import lazy_dynamo_guards
seeded = lazy_dynamo_guards(None)
x = torch.empty(3, 4, device="meta")
y = ((x * 2 + 1).sqrt() @ x.T).cumsum(0)
try:
    x + torch.ones(3, 4)
    mixing = ""
except RuntimeError as exc:
    mixing = str(exc)
before = "torch._dynamo" in sys.modules
compiled = torch.compile(lambda a: (a * 2).sin(), backend="eager")(torch.ones(2)).tolist()
z = (x * 3).shape
print(json.dumps({"seeded": seeded, "dynamo_before": before, "mixing": mixing, "compiled": compiled, "z": list(z),
                  "dynamo_after": "torch._dynamo" in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["seeded"] > 100 and not seen["dynamo_before"], seen
    assert "is not on the expected device" in seen["mixing"]
    assert seen["compiled"] == pytest.approx([0.9093] * 2, abs=1e-4) and seen["z"] == [3, 4] and seen["dynamo_after"]


def test_the_meta_probe_prepares_each_process_once():
    """Is lazy_dynamo_guards run once per runner (student process), before its first meta call?"""
    from grader.checks.property import lazy_dynamo_guards

    calls = []

    class Counting(InProcessRunner):
        def run(self, calls_, seeds):
            calls.extend(c.get("probe_name", c["function"]) for c in calls_)
            return super().run(calls_, seeds)

    ns = {"f": lambda x, scale, generator=None: x * scale.to(x.dtype)}
    check = Agreement(function="f", cases=CASES, build=lambda c, ctx: _build(c, ctx), reference=_reference,
                      dtype_from="x", device_from="x", points=1, dtype_points=1, max_examples=3)
    ctx = Context(Counting(ns), torch.device("cpu"), 0, "probe")
    for _ in range(2):
        values, device = check.run(ctx)
        assert values.passed and device.passed
    assert calls.count(lazy_dynamo_guards.__name__) == 1
    assert calls.index(lazy_dynamo_guards.__name__) < len(calls) - 1  # before the meta call that followed


def test_warming_hypothesis_changes_no_draw():
    """Are the cases drawn after warm_hypothesis() the ones drawn without it (its draw has its own seed)?"""
    from grader.checks.property import draw_cases, warm_hypothesis

    before = draw_cases(CASES, 8, 1234, [{"batch": 1, "dtype": "float32"}])
    warm_hypothesis()
    assert draw_cases(CASES, 8, 1234, [{"batch": 1, "dtype": "float32"}]) == before
