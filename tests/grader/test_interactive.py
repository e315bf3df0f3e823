"""check(fn) in a student's notebook: quick, right both ways, and silent while grading."""

from __future__ import annotations

import time

import torch

from grader import check
from reference import q_sampler as ref


def test_a_correct_function_passes_quickly(capsys):
    """Does the reference's q_sample pass its public checks in well under a second?"""
    check(ref.q_sample)  # warm the imports
    started = time.perf_counter()
    assert check(ref.q_sample) is True
    assert time.perf_counter() - started < 1.0
    assert "✓ q_sample: matches the reference" in capsys.readouterr().out


def test_a_bug_fails_with_its_input_and_a_hint(capsys):
    """Does a q_sample without square roots fail, show the smallest input and name the mistake?"""
    def q_sample(x0, t, alphas_cumprod, noise=None):
        a = alphas_cumprod[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return a * x0 + (1 - a) * noise

    assert check(q_sample) is False
    out = capsys.readouterr().out
    assert "✗ q_sample: matches the reference" in out
    assert "Hint: ᾱ_t and 1 − ᾱ_t are variances" in out
    assert "q_sample(\n" in out and "x0 = float" in out


def test_an_unknown_function(capsys):
    """Is a function no exercise grades reported, not crashed on?"""
    def my_helper(x):
        return x

    assert check(my_helper) is False
    assert "no exercise grades a function called 'my_helper'" in capsys.readouterr().out


def test_skipped_while_grading(monkeypatch, capsys):
    """Inside the grading sandbox, is check() a no-op that says so (no reference is imported there)?"""
    monkeypatch.setenv("GRADER_SANDBOX", "1")
    assert check(ref.q_sample) is None
    assert "skipped while grading" in capsys.readouterr().out
    assert torch.tensor(0.0) == 0  # nothing else disturbed
