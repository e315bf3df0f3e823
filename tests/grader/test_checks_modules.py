"""Does a Behaviour grade a class through its scenario: values only, the reference playing the same story?

A toy class ``Gain(base, gain)`` (forward: gain · base(x)) and its scenario stand for any
class-based exercise; the lora exercise is the real use (tests/exercises/test_lora_checks.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from grader.checks import Aspect, Behaviour, Context, Inputs, Mismatch, field, linear_spec
from grader.checks.base import probe_source
from grader.runner import InProcessRunner


class Gain(nn.Module):
    def __init__(self, base: nn.Linear, gain: float):
        super().__init__()
        self.base, self.gain = base, gain
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.mix = nn.Parameter(torch.zeros(base.out_features, base.in_features, **like))

    def forward(self, x):
        return self.gain * self.base(x) + x @ self.mix.T


REFERENCE = {"Gain": Gain}


def gain_scenario(ns, *args, step, **kwargs):
    base, gain, x = args
    layer = ns.Gain(base, gain)
    if step == "forward":
        return {"out": layer(x), "names": sorted(k for k, _ in layer.named_parameters()),
                "parameters": {k: p.detach().clone() for k, p in layer.named_parameters()}}
    raise ValueError(step)


def build(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    weight = torch.randn(3, case["n"], generator=g, dtype=torch.float64).to(ctx.device)
    x = torch.randn(2, case["n"], generator=g, dtype=torch.float64).to(ctx.device)
    return Inputs({"base": linear_spec(weight, torch.zeros(3, dtype=torch.float64, device=ctx.device)),
                   "gain": case["gain"], "x": x})


def judge_names(inputs: Inputs, outcome) -> None:
    if field(outcome, "names") != ["base.bias", "base.weight", "mix"]:
        raise Mismatch(f"parameters {field(outcome, 'names')}")


CHECK = Behaviour(
    function="Gain", step="forward", scenario=gain_scenario, namespace=REFERENCE,
    cases=st.fixed_dictionaries({"n": st.integers(1, 4), "gain": st.sampled_from([0.5, 2.0]),
                                 "seed": st.integers(0, 99)}),
    build=build, outputs=("out",), what="forward is gain · base(x)", points=2, dtype_from="x", device_from="x",
    dtype_points=1, extra=(Aspect("registers its parameters", 1, judge_names),), max_examples=6,
)


def _run(cls) -> list:
    ctx = Context(InProcessRunner({"Gain": cls}), torch.device("cpu"), 0, "toy")
    return [(spec.name, verdict.passed, verdict.output) for spec, verdict in zip(CHECK.tests(), CHECK.run(ctx))]


def test_a_correct_class_passes_every_test():
    assert all(passed for _, passed, _ in _run(Gain)), _run(Gain)


def test_a_correct_class_in_another_form_passes():
    """gain folded into a functional linear: the values, not the code, are compared."""

    class Folded(Gain):
        def forward(self, x):
            return torch.nn.functional.linear(x, self.gain * self.base.weight + self.mix, self.gain * self.base.bias)

    assert all(passed for _, passed, _ in _run(Folded))


def test_a_wrong_class_fails_the_values_and_earns_no_form_point():
    class Ungained(Gain):
        def forward(self, x):
            return self.base(x) + x @ self.mix.T

    results = {name: (passed, output) for name, passed, output in _run(Ungained)}
    values = results["Gain: forward is gain · base(x)"]
    assert not values[0] and "`out` differs from the expected values" in values[1]
    assert not results["Gain: output dtype and device follow the input"][0]  # gated by the values
    assert results["Gain: registers its parameters"][0]


def test_parameters_made_on_the_cpu_are_caught_on_the_meta_device():
    """A meta tensor @ a CPU tensor does not raise (torch 2.13), so the scenario sends the parameters back.

    Seen failing: without the scenario's "parameters" entry this class kept its device point.
    """

    class CpuMix(Gain):
        def __init__(self, base, gain):
            super().__init__(base, gain)
            self.mix = nn.Parameter(torch.zeros(base.out_features, base.in_features, dtype=base.weight.dtype))

    results = {name: (passed, output) for name, passed, output in _run(CpuMix)}
    passed, output = results["Gain: output dtype and device follow the input"]
    assert not passed and "meta device" in output
    assert results["Gain: forward is gain · base(x)"][0]


def test_a_missing_or_stub_class_is_named():
    class Stub(nn.Module):
        def __init__(self, base, gain):
            raise NotImplementedError()

    assert all(not passed and "Gain is not implemented yet" in output for _, passed, output in _run(Stub))
    ctx = Context(InProcessRunner({}), torch.device("cpu"), 0, "toy")
    assert all(not v.passed and "not defined" in v.output for v in CHECK.run(ctx))


def test_the_step_is_sent_but_never_shown():
    inputs = CHECK.build({"n": 2, "gain": 2.0, "seed": 0}, Context(None, torch.device("cpu"), 0, "toy"))
    assert inputs.hidden == {"step": "forward"} and "step" not in inputs.describe()
    assert inputs.wire()["kwargs"] == {"step": "forward"}


def test_the_reference_plays_the_same_scenario_in_float64():
    inputs = CHECK.build({"n": 2, "gain": 2.0, "seed": 0}, Context(None, torch.device("cpu"), 0, "toy"))
    (expected,) = inputs.call_reference(CHECK.reference)
    x, weight = inputs.args["x"], inputs.args["base"]["params"]["weight"]
    assert expected.dtype == torch.float64 and torch.allclose(expected, 2.0 * x @ weight.T)


def test_a_scenario_ships_as_one_source_with_its_helpers_inside():
    assert probe_source(gain_scenario).startswith("def gain_scenario(ns, *args, step, **kwargs):")


def test_a_behaviour_that_judges_nothing_is_refused():
    with pytest.raises(TypeError):
        Behaviour(function="Gain", step="forward", scenario=gain_scenario, namespace=REFERENCE, cases=st.just({}),
                  build=build, aspects=())
    with pytest.raises(TypeError):
        Behaviour(function="Gain", step="", scenario=gain_scenario, namespace=REFERENCE, cases=st.just({}),
                  build=build, aspects=(), outputs=("out",))
