"""A function left as its stub is recognised once and fails every test at once, with today's verdicts.

The kernel tells from a function's bytecode whether it is exactly its stub (an optional docstring
and ``raise NotImplementedError(...)``; a class: its own ``__init__``), in one query before the
checks (:func:`grader.sandbox.worker.stub_outcomes`, :meth:`grader.checks.base.Context.find_stubs`);
then no case is drawn and no call made for its direct tests. These tests pin that the verdicts are
the ones the full run gives (every exercise's stub, a partial implementation), that a stub costs no
call per test, and what counts as a stub.
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import pytest
import torch
from torch import nn

import reference.q_sampler as ref
from grader.checks import base
from grader.runner import InProcessRunner
from grader.sandbox.worker import is_stub
from tests.helpers import ROOT, grade_namespace, grade_notebook_in_process

EXERCISES = sorted(p.name for p in (ROOT / "exercises").iterdir() if (p / f"{p.name}.ipynb").exists())


def _stub(x, t):
    """A docstring is allowed."""
    raise NotImplementedError()


def _bare(x):
    raise NotImplementedError


def _with_message(x):
    raise NotImplementedError("write me", 2)


def _partial(x):
    if x.dtype == torch.float64:
        raise NotImplementedError()
    return x


def _message_from_argument(x):
    raise NotImplementedError(f"{x}")


def _generator(x):
    raise NotImplementedError()
    yield x


def _wrapped(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class _StubModule(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0):
        super().__init__()
        raise NotImplementedError()

    def forward(self, x):
        raise NotImplementedError()


class _StudentParent(nn.Module):
    def __init__(self):
        super().__init__()
        self.ready = True


class _StubOnStudentParent(_StudentParent):
    def __init__(self):
        super().__init__()  # the student's own parent runs first: not provably a stub
        raise NotImplementedError()


class _BuildsThenRaises(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        raise NotImplementedError()


def test_what_counts_as_a_stub():
    assert [is_stub(f) for f in (_stub, _bare, _with_message, _StubModule)] == [True] * 4
    not_stubs = (_partial, _message_from_argument, _generator, _wrapped(_stub), _StubOnStudentParent,
                 _BuildsThenRaises, ref.q_sample, 3, None, print)
    assert [is_stub(f) for f in not_stubs] == [False] * len(not_stubs)
    shadowed: dict = {"NotImplementedError": ValueError}
    exec("def f(x):\n    raise NotImplementedError()", shadowed)  # noqa: S102 -- a fixed string
    assert not is_stub(shadowed["f"])


def _counting(monkeypatch) -> collections.Counter:
    count: collections.Counter = collections.Counter()
    run = InProcessRunner.run

    def counted(self, calls, seeds):
        for call in calls:
            count["stub query" if "stubs" in call else "probe" if call.get("probe") else "direct"] += 1
        return run(self, calls, seeds)

    monkeypatch.setattr(InProcessRunner, "run", counted)
    return count


def _stub_namespace() -> dict:
    names = ("linear_beta_schedule", "cosine_beta_schedule", "compute_alphas_cumprod", "q_sample", "q_step",
             "q_posterior")
    namespace: dict = {"torch": torch}
    for name in names:
        exec(f"def {name}(*args, **kwargs):\n    raise NotImplementedError()", namespace)  # noqa: S102
    return namespace


def test_a_stub_costs_no_call_per_test(monkeypatch):
    count = _counting(monkeypatch)
    graded = grade_namespace("q_sampler", _stub_namespace())
    assert [g.name for g in graded if g.passed and g.points] == []
    for g in graded:
        if g.function:
            assert f"{g.function} is not implemented yet" in g.output, (g.name, g.output)
    # One query and one call of the one probe check (q_step iterated: its first input answers for
    # all); no direct call at all (the full run makes 264).
    assert count == {"stub query": 1, "probe": 1}, count


def _without_fast_path(monkeypatch) -> None:
    monkeypatch.setattr(base.Context, "find_stubs", lambda self, names: self.stubs)


@pytest.mark.slow
def test_a_partial_implementation_is_graded_as_before(monkeypatch):
    def q_sample(x0, t, alphas_cumprod, noise=None):
        if x0.dtype == torch.float64:
            raise NotImplementedError("float64 comes later")
        return ref.q_sample(x0, t, alphas_cumprod, noise)

    namespace = {**vars(ref), "q_sample": q_sample}
    count = _counting(monkeypatch)
    fast = grade_namespace("q_sampler", namespace, functions={"q_sample"})
    assert count["direct"] > 1, count  # not taken for a stub: its cases were all called
    with monkeypatch.context() as m:
        _without_fast_path(m)
        full = grade_namespace("q_sampler", namespace, functions={"q_sample"})
    assert [(g.name, g.passed, g.output) for g in fast] == [(g.name, g.passed, g.output) for g in full]
    earned = {g.name for g in fast if g.passed and g.points}
    assert "q_sample: with noise=None, the output follows N(√ᾱ_t·x₀, (1 − ᾱ_t)·I)" in earned, earned
    assert not all(g.passed for g in fast)


def _verdicts(exercise: str, tmp_path: Path) -> list[tuple]:
    workdir = tmp_path / f"work-{len(list(tmp_path.iterdir()))}"
    workdir.mkdir()
    result = grade_notebook_in_process(ROOT / "exercises" / exercise / f"{exercise}.ipynb", exercise, workdir)
    return [(t.name, t.function, t.max_score, t.score, t.passed, t.output,
             {k: v for k, v in t.details.items() if k != "plot"}) for t in result.tests]


@pytest.mark.slow
@pytest.mark.parametrize("exercise", EXERCISES)
def test_each_stub_gets_the_full_runs_verdicts(exercise, tmp_path, monkeypatch):
    fast = _verdicts(exercise, tmp_path)
    with monkeypatch.context() as m:
        _without_fast_path(m)
        full = _verdicts(exercise, tmp_path)
    assert len(fast) == len(full) > 1
    for a, b in zip(fast, full):
        assert a == b, (a, b)
