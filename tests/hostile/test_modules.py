"""Hostile module code: classes that hang, lie about their type or attributes, leak devices, or drift.

Each attack is a LoRALinear graded by the lora exercise's checks (the class-based
checks of grader.checks.modules). For each: grading finishes, no check raises, the
attacked tests fail with a message a student can act on, and no point is earned that
the honest parts of the class do not deserve. The in-process runner is the sandbox's
worker code (alarm, encoding, outcomes); one test runs an attack through the real kernel.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from grader.runner import InProcessRunner
from grader.checks import Context
from grader.exercises import load_exercise
from grader.submit import run_checks
from reference import lora as ref
from tests.catalogue import lora as catalogue

ROOT = Path(__file__).resolve().parents[2]


def _grade(impl, call_timeout: float | None = None, functions=("LoRALinear",)) -> dict:
    """Test name → (passed, points, output) for the LoRALinear checks, with ``impl`` as the class."""
    ex = load_exercise("lora")
    checks = tuple(c for c in ex.checks if c.function in functions)
    namespace = {**catalogue.CORRECT, "LoRALinear": impl}
    ctx = Context(InProcessRunner(namespace, call_timeout=call_timeout), torch.device("cpu"), 0, "lora", scale=0.2)
    return {spec.name: (verdict.passed, spec.points, verdict.output) for _, spec, verdict in run_checks(checks, ctx)}


def _earned(graded: dict) -> float:
    return sum(points for passed, points, _ in graded.values() if passed)


class Hangs(ref.LoRALinear):
    def forward(self, x):
        while True:
            pass


@pytest.mark.slow  # every call waits for its 1 s alarm
def test_a_forward_that_hangs_times_out_with_a_clear_message():
    started = time.monotonic()
    graded = _grade(Hangs, call_timeout=1.0)
    assert time.monotonic() - started < 120
    # Every test that needs a forward fails and says it timed out; the initialisation law needs none.
    failed = {name: output for name, (passed, _, output) in graded.items() if not passed}
    assert "LoRALinear: lora_A is Kaiming-uniform with a = √5: U(−1/√in, 1/√in)" not in failed
    assert all("timed out" in output or "not run" in output or "not awarded" in output for output in failed.values())
    assert _earned(graded) == 2  # the init law only: Hangs' __init__ is the reference's


class ReturnsList(ref.LoRALinear):
    def forward(self, x):
        return super().forward(x).tolist()


class ReturnsSelf(ref.LoRALinear):
    def forward(self, x):
        return self  # a module cannot come back: it is a wrong type, said in a sentence


@pytest.mark.parametrize("impl, needle", [(ReturnsList, "list, not a torch.Tensor"),
                                          (ReturnsSelf, "LoRALinear")])
def test_a_forward_returning_the_wrong_type_is_a_clear_failure(impl, needle):
    graded = _grade(impl)
    values = graded["LoRALinear: forward is base(x) + (α/r)·x Aᵀ Bᵀ"]
    assert not values[0] and needle in values[2], values[2]
    fresh = graded["LoRALinear: a fresh adapter leaves the output unchanged (B = 0)"]
    assert not fresh[0]
    assert not graded["LoRALinear: output dtype and device follow the input"][0]


class CpuParameters(ref.LoRALinear):
    """Parameters made with torch.zeros/empty without device=: fine on a CPU, broken on a GPU."""

    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


def test_parameters_created_on_the_cpu_fail_the_device_test_on_the_meta_device():
    """matmul and F.linear do not check devices on meta, so the scenario sends every parameter back.

    Seen failing: without the "parameters" entry of the fresh record this class got the device point.
    """
    graded = _grade(CpuParameters)
    passed, _, output = graded["LoRALinear: output dtype and device follow the input"]
    assert not passed and "on a GPU" in output and "meta device" in output, output
    assert graded["LoRALinear: a fresh adapter leaves the output unchanged (B = 0)"][0]  # its values are right


class FakesAttributes(nn.Module):
    """A base layer with __getattr__ answering lora_A, lora_B, scaling and merge without any adapter."""

    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__()
        self.base, self._shape = base, (r, base.in_features, base.out_features)

    def __getattr__(self, name):
        if name in ("base", "_shape") or name.startswith("_"):
            return super().__getattr__(name)
        r, n_in, n_out = self._shape
        fakes = {"lora_A": torch.zeros(r, n_in), "lora_B": torch.zeros(n_out, r), "scaling": 1.0,
                 "merge": lambda: None, "unmerge": lambda: None}
        if name in fakes:
            return fakes[name]
        return super().__getattr__(name)

    def forward(self, x):
        return self.base(x)


def test_faked_attributes_earn_nothing():
    graded = _grade(FakesAttributes)
    assert _earned(graded) == 0, {k: v for k, v in graded.items() if v[0]}
    output = graded["LoRALinear: forward is base(x) + (α/r)·x Aᵀ Bᵀ"][2]
    assert "no registered parameter lora_A" in output, output


class Drifts(ref.LoRALinear):
    """Each forward nudges the weights: the first answer is right, the next ones are not."""

    def forward(self, x):
        out = super().forward(x)
        with torch.no_grad():
            self.base.weight.add_(0.01)
        return out


def test_a_module_that_changes_its_weights_between_calls_fails():
    graded = _grade(Drifts)
    for name in ("LoRALinear: a fresh adapter leaves the output unchanged (B = 0)",
                 "LoRALinear: forward is base(x) + (α/r)·x Aᵀ Bᵀ",
                 "LoRALinear: merge() folds (α/r)·BA into the base weight, the output is unchanged, unmerge() restores W₀",
                 "LoRALinear: Adam steps on a rank-2 regression lower the loss; the base stays bit-identical"):
        passed, _, output = graded[name]
        assert not passed, name
    assert "out_again" in graded["LoRALinear: forward is base(x) + (α/r)·x Aᵀ Bᵀ"][2]


def test_a_stub_class_gets_nothing_and_says_so():
    class Stub(nn.Module):
        def __init__(self, base, r, alpha=1.0, dropout=0.0):
            raise NotImplementedError()

    graded = _grade(Stub)
    assert _earned(graded) == 0
    assert all("not implemented yet" in output or "not awarded" in output for _, _, output in graded.values())


@pytest.mark.slow
def test_a_hanging_forward_through_the_real_sandbox(tmp_path):
    """The solution notebook's definitions with a forward that loops: grading ends, the rest is still graded."""
    from grader.sandbox.kernel import GiB, Limits
    from grader.submit import SubmitOptions, grade_submission

    nb = nbformat.read(ROOT / "solutions" / "lora" / "lora.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and (c.get("id") == "setup" or
                                                                       c.source.lstrip().startswith(("class ", "def ")))]
    cells.append("LoRALinear.forward = lambda self, x: [None for _ in iter(int, 1)]")
    folder = tmp_path / "lora"
    folder.mkdir()
    student = nbformat.v4.new_notebook()
    student.metadata["grader"] = {"exercise": "lora"}
    student.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(student, folder / "lora.ipynb")
    limits = Limits(cell_timeout=20, call_timeout=3, batch_timeout=30, memory_bytes=2 * GiB, startup_timeout=60)
    started = time.monotonic()
    result, _ = grade_submission(folder, SubmitOptions(timeout=300, limits=limits, out=folder / "feedback"))
    assert time.monotonic() - started < 300
    tests = {t.name: t for t in result.tests}
    forward = tests["LoRALinear: forward is base(x) + (α/r)·x Aᵀ Bᵀ"]
    assert forward.score == 0 and "timed out" in forward.output, forward.output
    assert tests["inject_lora: returns the replaced names, sorted"].passed
