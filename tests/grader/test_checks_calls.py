"""ModelCalls and Reproducible: judges of how a sampler uses its model and its generator.

ModelCalls' options (conditions in the expected blocks, ``merge=False``, ``per_row``) were each seen
failing against the ModelCalls that merged calls, ignored conditions and refused per-row timesteps.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

from grader.checks import Context, Inputs, Mismatch, ModelCalls, Outcome, Property, Reproducible, output_aspect
from grader.runner import InProcessRunner


def _calls(*blocks, dtype=torch.long):
    return [{"batch": rows, "level": None if level is None else torch.full((rows,), level, dtype=dtype)}
            for level, rows in blocks]


def _outcome(calls):
    return Outcome("ok", None, model_calls=[calls])


WALK = ModelCalls(expected=lambda inputs: [(9, 4), (5, 4), (1, 4)], order="ends", model="eps_model",
                  what=lambda inputs: "the walk")


def test_ends_order_accepts_any_batching_and_names_what_is_wrong():
    WALK.judge(Inputs({}), _outcome(_calls((9, 4), (5, 4), (1, 4))))
    WALK.judge(Inputs({}), _outcome(_calls((9, 2), (9, 2), (5, 1), (5, 3), (1, 4))))  # split batches
    with pytest.raises(Mismatch, match="never at \\[1\\]"):
        WALK.judge(Inputs({}), _outcome(_calls((9, 4), (5, 4))))
    with pytest.raises(Mismatch, match="the first model call is at t = 1"):
        WALK.judge(Inputs({}), _outcome(_calls((1, 4), (5, 4), (9, 4))))
    with pytest.raises(Mismatch, match="a single number"):
        WALK.judge(Inputs({}), _outcome([{"batch": 4, "level": torch.tensor(9)}]))
    with pytest.raises(Mismatch, match="never called"):
        WALK.judge(Inputs({}), _outcome([]))


LEVELS = ModelCalls(expected=lambda inputs: [(2.0, 3), (1.0, 3)], level="noise level", runs=2, model="score_fn",
                    what=lambda inputs: "two levels, in order")


def test_blocks_order_requires_each_run_in_order():
    ok = _calls((2.0, 3), (1.0, 3), (2.0, 1), (2.0, 2), (1.0, 3), dtype=torch.float64)
    LEVELS.judge(Inputs({}), _outcome(ok))
    with pytest.raises(Mismatch, match="two levels, in order\nExpected per run"):
        LEVELS.judge(Inputs({}), _outcome(_calls((1.0, 3), (2.0, 3), (1.0, 3), (2.0, 3), dtype=torch.float64)))
    with pytest.raises(Mismatch, match="sigma of shape \\(\\)"):
        LEVELS.judge(Inputs({}), _outcome([{"batch": 3, "level": torch.tensor(2.0)}]))
    with pytest.raises(Mismatch, match="different σ within one batch"):
        LEVELS.judge(Inputs({}), _outcome([{"batch": 2, "level": torch.tensor([2.0, 1.0])}]))


def _batched(t, cond=None):
    call = {"batch": len(t), "level": torch.tensor(t)}
    return call if cond is None else {**call, "cond": torch.tensor(cond)}


def test_blocks_judge_the_conditions_row_by_row_when_expected():
    """A block with a cond: the logged conditions must be those, in order (merged across a split batch)."""
    calls = ModelCalls(expected=lambda inputs: [(5, 4, torch.tensor([3, 3, 0, 1]))], model="eps_model",
                       what=lambda inputs: "[uncond; cond]")
    calls.judge(Inputs({}), _outcome([_batched([5, 5, 5, 5], [3, 3, 0, 1])]))
    calls.judge(Inputs({}), _outcome([_batched([5, 5], [3, 3]), _batched([5, 5], [0, 1])]))  # a split batch
    with pytest.raises(Mismatch, match=r"\(cond \[0, 1, 3, 3\]\)"):
        calls.judge(Inputs({}), _outcome([_batched([5, 5, 5, 5], [0, 1, 3, 3])]))
    with pytest.raises(Mismatch, match=r"\[uncond; cond\]"):
        calls.judge(Inputs({}), _outcome([_batched([5, 5, 5, 5])]))  # no conditions logged
    WALK_LIKE = ModelCalls(expected=lambda inputs: [(5, 4)])  # no cond expected: conditions are not judged
    WALK_LIKE.judge(Inputs({}), _outcome([_batched([5, 5, 5, 5], [0, 1, 3, 3])]))


def _one_call() -> ModelCalls:
    """One batched call of 4 rows: t = [0, 7] repeated, conditions [uncond; cond] = [2, 2; 0, 1]."""
    return ModelCalls(expected=lambda inputs: [(torch.tensor([0, 7, 0, 7]), 4, torch.tensor([2, 2, 0, 1]))],
                      merge=False, per_row=True, model="eps_model", what=lambda inputs: "one batched call")


def test_unmerged_blocks_count_the_calls_and_name_the_first_difference():
    """merge=False: one call of 4 rows is not two of 2 at the same timesteps; rows, t and cond each named."""
    _one_call().judge(Inputs({}), _outcome([_batched([0, 7, 0, 7], [2, 2, 0, 1])]))
    with pytest.raises(Mismatch, match=r"eps_model was called 2 times \(batches \[2, 2\]\); expected 1 call"):
        _one_call().judge(Inputs({}), _outcome([_batched([0, 7], [2, 2]), _batched([0, 7], [0, 1])]))
    with pytest.raises(Mismatch, match="called on 6 rows; expected 4: one batched call"):
        _one_call().judge(Inputs({}), _outcome([_batched([0, 7, 0, 7, 0, 7], [2, 2, 0, 1, 0, 1])]))
    with pytest.raises(Mismatch, match=r"got the conditions \[0, 1, 2, 2\]; expected \[2, 2, 0, 1\]"):
        _one_call().judge(Inputs({}), _outcome([_batched([0, 7, 0, 7], [0, 1, 2, 2])]))
    merged = ModelCalls(expected=lambda inputs: [(7, 4)])
    merged.judge(Inputs({}), _outcome([_batched([7, 7]), _batched([7, 7])]))  # the default merges them
    with pytest.raises(Mismatch, match="called 2 times"):
        ModelCalls(expected=lambda inputs: [(7, 4)], merge=False).judge(
            Inputs({}), _outcome([_batched([7, 7]), _batched([7, 7])]))


def test_per_row_timesteps_are_compared_row_by_row():
    """per_row: a (B,) t whose rows differ is accepted and compared row by row; without it, refused."""
    with pytest.raises(Mismatch, match=r"got the timesteps \[0, 0, 7, 7\]; expected \[0, 7, 0, 7\]"):
        _one_call().judge(Inputs({}), _outcome([_batched([0, 0, 7, 7], [2, 2, 0, 1])]))
    with pytest.raises(Mismatch, match=r"got the timesteps \[7, 7, 7, 7\]"):
        _one_call().judge(Inputs({}), _outcome([_batched([7, 7, 7, 7], [2, 2, 0, 1])]))
    with pytest.raises(Mismatch, match="different timesteps within one batch"):
        ModelCalls(expected=lambda inputs: [(0, 4)]).judge(Inputs({}), _outcome([_batched([0, 7, 0, 7])]))
    with pytest.raises(Mismatch, match=r"LongTensor of shape \(B,\)"):
        _one_call().judge(Inputs({}), _outcome([{"batch": 4, "level": torch.tensor([0.0, 7.0, 0.0, 7.0]),
                                              "cond": torch.tensor([2, 2, 0, 1])}]))


def sampler(shape, generator=None):
    return torch.randn(shape, generator=generator)


REPRO = Reproducible("sampler", other_seed=True)


def _build(case, ctx):
    return Inputs({"shape": (case["n"], 3)}, {"generator": ctx.generator_spec(seed=case["seed"])})


CHECK = Property(function="sampler", cases=st.fixed_dictionaries({"n": st.integers(1, 3), "seed": st.integers(0, 9)}),
                 build=REPRO.build(_build), probe=REPRO.probe, max_examples=4, aspects=(
                     REPRO.aspect("the same seed gives the same samples", shape=lambda i: i.args["shape"], finite=True),
                     output_aspect("default dtype", 1, dtype=torch.float32, items=REPRO.first,
                                   gated_by=("the same seed gives the same samples",))))


def grade(fn):
    return CHECK.run(Context(InProcessRunner({"sampler": fn}), torch.device("cpu"), 0, "test"))


def test_reproducible_passes_a_sampler_that_uses_its_generator():
    assert [v.passed for v in grade(sampler)] == [True, True]


def test_reproducible_fails_global_noise_and_ignored_seeds():
    global_noise = grade(lambda shape, generator=None: torch.randn(shape))
    assert not global_noise[0].passed and "seeded alike gave different samples" in global_noise[0].output
    assert not global_noise[1].passed  # gated: no form point without reproducible samples
    reseeding = grade(lambda shape, generator=None: torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    assert not reseeding[0].passed and "different seeds gave the same samples" in reseeding[0].output
    assert "has shape (5,)" in grade(lambda shape, generator=None: torch.zeros(5))[0].output


def test_ctx_builds_generator_and_model_specs_on_the_grading_device():
    ctx = Context(InProcessRunner({}), torch.device("cpu"), 3, "test")
    assert ctx.generator_spec(seed=7) == {"__spec__": "generator", "seed": 7, "device": "cpu"}
    assert ctx.generator_spec("a")["seed"] == ctx.seed_for("a") % 2**63
    spec = ctx.model_spec("gaussian_eps", dtype=torch.float32, mean=torch.zeros(2, dtype=torch.float64), k=1)
    assert spec["params"]["mean"].dtype == torch.float32 and spec["params"]["k"] == 1 and spec["record"] is False


def chain(model, x, steps=3):
    """A toy chain that evaluates its model on two halves of the batch at each step."""
    for i in range(steps):
        half = x.shape[0] // 2
        level = torch.full((x.shape[0],), float(i))
        x = torch.cat([x[:half] + model(x[:half], level[:half]), x[half:] + model(x[half:], level[half:])])
    return x


def test_traced_returns_the_full_batch_states_the_model_saw():
    from grader.checks import Traced

    traced = Traced("chain", model=0)
    ctx = Context(InProcessRunner({"chain": chain}), torch.device("cpu"), 0, "test")
    inputs = traced.inputs(Inputs({"model": ctx.model_spec("gaussian_score_ve", mean=torch.zeros(2),
                                                           var=torch.ones(2)), "x": torch.ones(4, 2)}))
    outcome = ctx.call("chain", [inputs], traced.probe)[0]
    out, states, levels = traced.states(outcome.value, 4, shape=(4, 2))
    assert len(states) == 3 and levels == [0.0, 1.0, 2.0] and torch.equal(states[0], torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(Mismatch, match="do not add up to the sample batch"):
        traced.states(outcome.value, 3)
    with pytest.raises(Mismatch, match="called with x of shape \\(4, 2\\); expected \\(2, 4\\)"):
        traced.states(outcome.value, 4, shape=(2, 4))
