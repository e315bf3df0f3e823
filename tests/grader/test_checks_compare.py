"""grader.checks.compare: the one comparator, its pluggable scale, and the refusal of unreadable results."""

from __future__ import annotations

import pytest
import torch

from grader.checks import DEFAULT_TOLERANCE, Mismatch, Tolerance, as_tensor, compare, show

TIGHT = Tolerance(rtol32=1e-4, atol32=0.0, rtol64=1e-9, atol64=0.0, why="test")


def test_relative_to_expected_by_default():
    """Is |got − expected| ≤ atol + rtol·|expected| the default, per the result's dtype?"""
    expected = torch.tensor([1.0, 100.0], dtype=torch.float64)
    compare(expected.float() * (1 + 5e-5), expected, TIGHT)  # 5e-5 relative < 1e-4 (float32)
    with pytest.raises(Mismatch, match=r"1 of 2 entries are off; the worst is at index \[1\]"):
        compare(torch.tensor([1.0, 100.02], dtype=torch.float32), expected, TIGHT)
    with pytest.raises(Mismatch, match="differs"):  # the same values in float64 are held to 1e-9
        compare(expected * (1 + 5e-5), expected, TIGHT)


def test_a_scale_makes_the_tolerance_relative_to_the_terms():
    """A cancelling formula (1e4 − 1e4 + 1e-3): an error of 1e-2 fails relative to |expected|, passes relative to its terms."""
    expected = torch.tensor([1e-3], dtype=torch.float64)
    got = torch.tensor([1e-3 + 1e-2], dtype=torch.float32)
    with pytest.raises(Mismatch):
        compare(got, expected, TIGHT)
    compare(got, expected, TIGHT, scale=torch.tensor([2e4 + 1e-3], dtype=torch.float64))
    with pytest.raises(Mismatch, match=r"0.0001·\(the size of the update.s terms, 10\)"):
        compare(got, expected, TIGHT, scale=torch.tensor([10.0]), scale_what="the size of the update's terms")


def test_float64_tolerance_only_when_the_inputs_are_float64_too():
    """With dtype=float32 inputs, a float64 result is held to float32's tolerance (its dtype test fails anyway)."""
    expected = torch.tensor([1.0], dtype=torch.float64)
    got = torch.tensor([1.0 + 5e-5], dtype=torch.float64)
    compare(got, expected, TIGHT, dtype=torch.float32)
    with pytest.raises(Mismatch):
        compare(got, expected, TIGHT, dtype=torch.float64)


def test_non_finite_values_shape_and_broadcast():
    expected = torch.tensor([0.0, -float("inf")], dtype=torch.float64)
    compare(torch.tensor([0.0, -float("inf")]), expected, DEFAULT_TOLERANCE)  # an infinite log-variance, matched
    with pytest.raises(Mismatch, match="contains nan where a finite value was expected"):
        compare(torch.tensor([float("nan"), -float("inf")]), expected, DEFAULT_TOLERANCE)
    with pytest.raises(Mismatch, match=r"has shape \(3,\); expected \(2,\)"):
        compare(torch.zeros(3), expected, DEFAULT_TOLERANCE)
    compare(torch.ones(2, 1), torch.ones(2, 3, dtype=torch.float64), DEFAULT_TOLERANCE, broadcast=True)
    with pytest.raises(Mismatch, match="has dtype torch.int64; a floating-point tensor was expected"):
        compare(torch.zeros(2, dtype=torch.long), expected, DEFAULT_TOLERANCE)


@pytest.mark.parametrize("value, message", [
    (torch.zeros(3, device="meta"), "meta device, which holds no values"),
    (torch.zeros(3).to_sparse(), "sparse_coo tensor"),
    (torch.zeros(3, dtype=torch.complex64), "complex dtype"),
    (None, "is None, not a torch.Tensor"),
    ([1.0, 2.0], "is list, not a torch.Tensor"),
    ({"__unsupported__": "an object of type x.Y"}, "is an object of type x.Y"),
])
def test_unreadable_results_are_a_clear_mismatch(value, message):
    """A meta, sparse or complex result is a one-line Mismatch (issue 9), never an error further on."""
    with pytest.raises(Mismatch, match=message):
        as_tensor(value, "the result")
    with pytest.raises(Mismatch, match=message):
        compare(value, torch.zeros(3, dtype=torch.float64), DEFAULT_TOLERANCE)


def test_show_shortens_long_tensors():
    assert show(torch.tensor([1.5, 2.0])) == "[1.5, 2]"
    assert show(torch.arange(100.0)).endswith("(first 64 of 100 entries, flattened)")
