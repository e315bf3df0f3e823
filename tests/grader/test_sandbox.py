"""The pieces that run in the student's process: the guard, the wire format, the worker."""

from __future__ import annotations

import subprocess
import sys
import math
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.sandbox import wire, worker
from grader.sandbox.wire import UNSUPPORTED


def _guarded(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter with the guard installed, forbidding ``tmp_path/secret``."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "answer.txt").write_text("42")
    (tmp_path / "work").mkdir()
    script = textwrap.dedent(f"""
        import os, sys
        from grader.sandbox import guard
        guard.install(guard.Policy(forbidden_dirs=[{str(tmp_path / 'secret')!r}],
                                   writable_dirs=[{str(tmp_path / 'work')!r}],
                                   forbidden_modules=["reference", "grader"], allowed_modules=["grader"]))
        os.chdir({str(tmp_path / 'work')!r})
        def attempt(label, fn):
            try:
                fn()
                print(label, "allowed")
            except PermissionError as exc:
                print(label, "refused:", exc)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_guard_refuses_what_it_should_and_allows_the_rest(tmp_path):
    """Does the audit hook refuse imports, reads, writes, processes and signals, and allow ordinary work?"""
    done = _guarded(tmp_path, f"""
        attempt("import reference", lambda: __import__("reference"))
        attempt("import grader.checks", lambda: __import__("grader.checks"))
        attempt("import json", lambda: __import__("json"))
        attempt("read secret", lambda: open({str(tmp_path / 'secret' / 'answer.txt')!r}).read())
        attempt("read via symlink", lambda: (os.symlink({str(tmp_path / 'secret')!r}, "link"), open("link/answer.txt").read()))
        attempt("write outside", lambda: open({str(tmp_path / 'outside.txt')!r}, "w"))
        attempt("os.open outside", lambda: os.open({str(tmp_path / 'outside2.txt')!r}, os.O_WRONLY | os.O_CREAT))
        attempt("write inside", lambda: open("inside.txt", "w").write("ok"))
        attempt("remove outside", lambda: os.remove({str(tmp_path / 'secret' / 'answer.txt')!r}))
        attempt("subprocess", lambda: __import__("subprocess").run(["true"]))
        attempt("os.system", lambda: os.system("true"))
        attempt("fork", lambda: os.fork())
        attempt("kill parent", lambda: os.kill(os.getppid(), 0))
        attempt("kill self", lambda: os.kill(os.getpid(), 0))
    """)
    verdicts = {}
    for line in done.stdout.splitlines():
        label, verdict = (line.removesuffix(" allowed"), "allowed") if line.endswith(" allowed") \
            else (line.split(" refused:")[0], "refused")
        verdicts[label] = verdict
    assert verdicts == {
        "import reference": "refused", "import grader.checks": "refused", "import json": "allowed",
        "read secret": "refused", "read via symlink": "refused", "write outside": "refused",
        "os.open outside": "refused", "write inside": "allowed", "remove outside": "refused",
        "subprocess": "refused", "os.system": "refused", "fork": "refused",
        "kill parent": "refused", "kill self": "allowed",
    }, done.stdout + done.stderr
    assert (tmp_path / "secret" / "answer.txt").exists()


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("value, expected", [
    (torch.ones(2), torch.ones(2)),
    (torch.nn.Parameter(torch.ones(2)), torch.ones(2)),
    (np.arange(3, dtype=np.float64), torch.arange(3, dtype=torch.float64)),
    (np.float64(2.5), 2.5),
    ((torch.zeros(1), [1, "a", None]), (torch.zeros(1), [1, "a", None])),
    ({"w": torch.ones(1)}, {"w": torch.ones(1)}),
])
def test_encode_keeps_plain_data(value, expected):
    """Are tensors, numbers, numpy values and containers sent back as plain data?"""
    encoded = wire.unpack_untrusted(wire.pack(wire.encode(value)))
    assert type(encoded) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert type(encoded) is torch.Tensor and torch.equal(encoded, expected)
    elif isinstance(expected, (tuple, dict)):
        assert repr(encoded) == repr(expected)
    else:
        assert encoded == expected


@pytest.mark.parametrize("value, needle", [
    (torch.ones(2).as_subclass(_Sub), "subclass"),
    (object(), "object of type"),
    (torch.nn.Linear(2, 2), "object of type"),
    ({1: torch.ones(1)}, "keys that are not strings"),
    ([[[[[[[[[[1]]]]]]]]]], "too deeply nested"),
])
def test_encode_marks_what_it_cannot_send(value, needle):
    """Is anything but plain data replaced by a marker the grader reports as a wrong type?"""
    encoded = wire.encode(value)
    text = repr(encoded)
    assert UNSUPPORTED in text and needle in text


_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool]


@st.composite
def _tensors(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    n = math.prod(shape)
    if dtype.is_floating_point:
        values = torch.tensor(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype=torch.float64).to(dtype)
    else:
        low, high = (0, 1) if dtype is torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
        values = torch.tensor(draw(st.lists(st.integers(low, high), min_size=n, max_size=n)), dtype=torch.int64)
        values = values.to(dtype)
    value = values.reshape(shape)
    layout = draw(st.sampled_from(["plain", "transposed", "expanded"]))
    if layout == "transposed" and value.dim() == 2:
        return value.t()
    if layout == "expanded" and n == 1:  # strides of 0, as torch.full(...).expand(...) or a broadcast give
        return value.reshape(()).expand(*shape, draw(st.integers(1, 3)))
    return value


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(), max_size=8) | _tensors(),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)


def _same(a, b) -> bool:
    """Equal with the types, tuple or list, float bits (NaN, -0.0) and tensor dtype and shape."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) or \
            a.dtype.is_floating_point and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    if isinstance(a, float):
        return math.isnan(a) and math.isnan(b) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(_PLAIN)
def test_pack_and_unpack_are_exact_on_plain_data(value):
    """Does every value encode can produce come back exactly: each type, tuple or list, dict order, float bits
    (NaN, infinities, -0.0), big integers, any text, and tensors of every dtype, shape and layout?"""
    assert _same(wire.unpack_untrusted(wire.pack(value)), value)


def test_a_view_is_sent_without_its_storage():
    """Does returning a small view of a huge tensor send only the view?"""
    big = torch.zeros(1_000_000)
    assert len(wire.pack(wire.encode(big[:3]))) < 1_000


def test_worker_outcomes():
    """Does the worker report values, errors with student frames only, missing functions and probes?"""
    def good(x):
        return x * 2

    def bad(x):
        raise ValueError("nope")

    def probe(ns, x):
        return ns.good(x) + 1

    import inspect

    request = {"calls": [{"function": "good", "args": [torch.ones(1)]}, {"function": "bad", "args": [1]},
                         {"function": "absent", "args": []},
                         {"function": "good", "args": [torch.ones(1)], "probe": textwrap.dedent(inspect.getsource(probe)),
                          "probe_name": "probe"}],
               "seeds": [0, 1, 2, 3], "call_timeout": None}
    outcomes = []
    worker.execute(request, {"good": good, "bad": bad}, lambda i, o: outcomes.append(o))
    assert [o["status"] for o in outcomes] == ["ok", "error", "missing", "ok"]
    assert torch.equal(outcomes[0]["value"], torch.full((1,), 2.0))
    assert outcomes[1]["message"] == "ValueError: nope" and "worker.py" not in outcomes[1]["traceback"]
    assert torch.equal(outcomes[3]["value"], torch.full((1,), 3.0))


def test_worker_alarm_stops_a_hanging_call_and_skips_the_rest():
    """Does a call that overruns its time limit time out, and the batch stop there?"""
    def hang():
        while True:
            pass

    request = {"calls": [{"function": "hang", "args": []}, {"function": "hang", "args": []}],
               "seeds": [0, 1], "call_timeout": 0.2}
    outcomes = []
    worker.execute(request, {"hang": hang}, lambda i, o: outcomes.append(o))
    assert [o["status"] for o in outcomes] == ["timeout", "skipped"]


def test_worker_seeds_global_generators_per_call():
    """Do two calls with the same seed draw the same noise (reproducible grades), and other seeds not?"""
    request = {"calls": [{"function": "draw", "args": []}] * 3, "seeds": [5, 5, 6], "call_timeout": None}
    outcomes = []
    worker.execute(request, {"draw": lambda: torch.randn(4)}, lambda i, o: outcomes.append(o))
    a, b, c = (o["value"] for o in outcomes)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    assert torch.equal(a, torch.randn(4)), "the call's draws are not torch.manual_seed's"


@pytest.mark.skipif(torch.accelerator.is_available(), reason="with an accelerator the worker calls torch.manual_seed")
def test_worker_seeds_without_formatting_a_stack_per_call(monkeypatch):
    """torch.manual_seed queues each absent accelerator's seeding with traceback.format_stack (3 ms a call at a
    kernel's depth, 0.7 s of a q_sampler grading): does the worker seed the CPU without it? Seen failing on
    torch.manual_seed."""
    import traceback

    def no_stack(*args, **kwargs):
        raise AssertionError("a stack was formatted to seed a call")

    monkeypatch.setattr(traceback, "format_stack", no_stack)
    request = {"calls": [{"function": "draw", "args": []}], "seeds": [5], "call_timeout": None}
    outcomes = []
    worker.execute(request, {"draw": lambda: torch.randn(4)}, lambda i, o: outcomes.append(o))
    assert outcomes[0]["status"] == "ok", outcomes[0]
