"""Checks of exercise 4, langevin: Langevin dynamics, annealed Langevin, predictor–corrector sampling.

Point budget (34): ve_sigmas 3; reverse_diffusion_predictor 4; langevin_corrector 4;
langevin_dynamics 6 (structure 3, law 3); annealed_langevin_dynamics 8 (structure 3,
Gaussian law 3, mixture modes 2); pc_sample 9 (structure 3, law without corrector 3,
transitions with corrector 3).

How each function is checked:

* ``ve_sigmas`` and the single steps (``reverse_diffusion_predictor``,
  ``langevin_corrector``) are deterministic with injected noise: hypothesis draws
  data shapes, dtypes, noise levels (σ_next = 0, a batch of 1, per-sample scales
  that make per-sample norms matter) and the values are compared with the
  reference in float64.
* The samplers draw their own noise, in their own order, from a generator the
  grader passes. A structure test per sampler (deterministic) checks the output's
  shape, dtype and device, that the same generator seed gives the same samples,
  and, with a recording score model, how often and at which σ the score is
  evaluated. Their laws are then tested statistically on Gaussian data, where
  every step is x′ = a·x + b + c·z and the output law of the *discretised* sampler
  is exact (:mod:`reference.laws`): standardised residuals (x − mean)/std are
  i.i.d. N(0, 1) for a correct sampler, whatever order it draws its noise in.
* ``pc_sample`` with correctors has no closed-form law (the corrector's step
  ε = 2 (snr·mean‖z‖/mean‖s‖)² is random and shared by the batch), so its chain is
  tested transition by transition: a probe records every state at which the
  score is evaluated; each transition's noise is then recovered exactly (for the
  corrector, ε is the unique root of a convex equation) and the recovered noises
  must be i.i.d. N(0, 1).
* Multi-modality: annealed Langevin on a three-component Gaussian mixture must
  put the right fraction of samples in each mode (exact binomial tests).

Statistical checks (5), each at level 1e-6, so a correct submission fails one
with probability at most 5e-6 (Bonferroni).

Power. The sample sizes put every catalogued bug that only a statistical check sees far
beyond its threshold (measured with tests/catalogue/langevin.py; the χ² statistic is the
mean of r², with standard error √(2/n) = 0.0078 at n = 32,768): the score term α·∇log p
gives 1.21 after one step against a threshold of 1.041 (22 standard errors beyond); noise
α·z gives 0.02; one step short 0.22; the noise added before the score step 0.80; annealing
with σ_i/σ_L not squared 3.4, with σ_i/σ_0 19, with the authors' code's steps 0.49; a noisy
last pc step ≈ 28; a pc start z instead of σ_0·z gives 0.80 for the recovered start and
predictor noises (threshold 0.964, 23 standard errors); noise shared by the batch, or by a
level's corrector and predictor, gives a correlation z ≈ 130 against 5.7; a sampler that
ignores the mixture's weights puts ≈ 333 of 1000 samples in the heaviest mode against a
lower bound of 490 (10.5 binomial standard errors). Each is missed with probability below
1e-20, so every seed catches it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from hypothesis import strategies as st

from grader.checks import (
    Agreement,
    Aspect,
    Context,
    Diagnosis,
    Inputs,
    Mismatch,
    Property,
    StatReport,
    Statistical,
    Tolerance,
    as_tensor,
    as_tuple,
    compare_values,
    value_of,
)
from grader.exercises import Exercise
from grader.exercises._common import DTYPES, data_shapes
from grader.sandbox.wire import generator_spec, model_spec
from grader.stats import Statistic, binomial_band_test, mean_z, product_z, variance_chi2
from reference import langevin as ref
from reference import laws
from reference.toy import GaussianData, GaussianMixture

F64 = torch.float64

# -- tolerances --------------------------------------------------------------------------------

#: ve_sigmas: exp(linspace(log σ_max, log σ_min, n)), σ_max·r^i, logspace or a running
#: product all agree to ≤ n·u relative (n ≤ 1000: 1e-13 in float64); 1e-9 relative
#: leaves a 10⁴ margin and the catalogued bugs change values by ≥ 1e-3. A float32
#: result is compared at float32's 1e-4 (its dtype test fails anyway).
SIGMAS_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=0.0, rtol64=1e-9, atol64=0.0,
    why="a geometric sequence of ≤ 1000 terms: ≤ n·u relative round-off in any correct formula",
)

#: One predictor or corrector step: x + c·s(x, σ) + d·z with |x| ≤ ~30 (σ ≤ 5, per-sample
#: scales ≤ 3) and the score's own float32 evaluation; the corrector adds two norms over
#: ≤ 500 entries (≤ 500·u relative in ε). A correct float32 computation is then within
#: ~10·u·30 + 500·u·|εs| ≲ 5e-5 of the float64 value, against 2e-4 + 1e-4·|expected|
#: allowed. Measured (tests/exercises/test_langevin_checks.py): the float32 reference and
#: float64-inside alternatives use at most ~2% of the allowance over ~1500 float32 cases,
#: while the catalogued bugs change values by ≥ 1e-2. float64: the same at u = 1.1e-16.
STEP_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=2e-4, rtol64=1e-9, atol64=1e-9,
    why="a few operations on values up to ~30 and two norms over ≤ 500 entries, in float32",
)

# -- ve_sigmas ----------------------------------------------------------------------------------

sigma_cases = st.fixed_dictionaries({
    "sigma_min": st.sampled_from([0.001, 0.01, 0.05, 0.1]),
    "sigma_max": st.sampled_from([1.0, 10.0, 50.0, 348.0]),
    "n": st.integers(2, 1000),
})


def build_sigmas(case: dict, ctx: Context) -> Inputs:
    return Inputs({"sigma_min": case["sigma_min"], "sigma_max": case["sigma_max"], "n": case["n"]})


def _sigmas_ascending(sigma_min, sigma_max, n):
    return ref.ve_sigmas(sigma_min, sigma_max, n).flip(0)


def _sigmas_linear(sigma_min, sigma_max, n):
    return torch.linspace(sigma_max, sigma_min, n, dtype=F64)


def _sigmas_exponent_over_n(sigma_min, sigma_max, n):
    return sigma_max * (sigma_min / sigma_max) ** (torch.arange(n, dtype=F64) / n)


# -- single steps: reverse_diffusion_predictor, langevin_corrector ----------------------------

#: Noise levels of the single-step cases; σ_next = ratio·σ, ratio 0 is the last step.
STEP_SIGMAS = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0)


@st.composite
def step_cases(draw: Any) -> dict:
    """Data shape, dtype, σ (a float or a float64 0-dim tensor), σ_next/σ, snr and a seed."""
    return {
        "shape": draw(data_shapes),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "sigma": draw(st.sampled_from(STEP_SIGMAS)),
        "ratio": draw(st.sampled_from([0.0, 0.3, 0.7, 0.95])),
        "snr": draw(st.sampled_from([0.05, 0.16, 0.3, 1.0])),
        "sigma_type": draw(st.sampled_from(["tensor", "float"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def step_examples() -> tuple[dict, ...]:
    """The boundaries: the last step (σ_next = 0), a batch of 1, 1-D, 2-D and image-like data."""
    cases = []
    for shape, dtype, ratio, sigma_type in [((4, 3), "float32", 0.0, "tensor"), ((1, 5), "float64", 0.0, "float"),
                                            ((3,), "float64", 0.7, "tensor"), ((2, 1, 4, 4), "float32", 0.3, "float"),
                                            ((4, 2), "float64", 0.95, "tensor")]:
        cases.append({"shape": shape, "dtype": dtype, "sigma": 1.0, "ratio": ratio, "snr": 0.16,
                      "sigma_type": sigma_type, "seed": 0})
    return tuple(cases)


def _gaussian_params(data_shape: tuple, g: torch.Generator, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """μ ~ N(0, 1) and s² log-uniform on [low, high], per coordinate, float64."""
    mean = torch.randn(data_shape, generator=g, dtype=F64)
    u = torch.rand(data_shape, generator=g, dtype=F64)
    return mean, torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u)


def _level(value: float, kind: str, ctx: Context):
    return torch.tensor(value, dtype=F64, device=ctx.device) if kind == "tensor" else float(value)


def _step_tensors(case: dict, ctx: Context) -> dict:
    """x at noise level σ with per-sample scales in [0.3, 3] (so per-sample norms differ), z, the model."""
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = tuple(case["shape"]), DTYPES[case["dtype"]]
    mean, var = _gaussian_params(shape[1:], g, 0.01, 4.0)
    scale = torch.exp(math.log(0.3) + math.log(10.0) * torch.rand(shape[0], generator=g, dtype=F64))
    scale = scale.reshape(-1, *([1] * (len(shape) - 1)))
    x = mean + (var + case["sigma"] ** 2).sqrt() * scale * torch.randn(shape, generator=g, dtype=F64)
    noise = torch.randn(shape, generator=g, dtype=F64)
    model = model_spec("gaussian_score_ve", mean=mean.to(dtype).to(ctx.device), var=var.to(dtype).to(ctx.device))
    return {"x": x.to(dtype).to(ctx.device), "noise": noise.to(dtype).to(ctx.device), "model": model}


SCORE_NOTE = ("the exact VE score of Gaussian data N(μ, diag(s²)): score_fn(x, sigma) = −(x − μ)/(s² + σ²), "
              "with sigma a float tensor (B,)")


def _sigma_note(value, kind: str) -> str:
    return f"{value!r} (a Python float)" if kind == "float" else f"torch.tensor({value!r}, dtype=torch.float64)"


def build_predictor(case: dict, ctx: Context) -> Inputs:
    c = _step_tensors(case, ctx)
    sigma_next = case["ratio"] * case["sigma"]
    return Inputs(
        {"score_fn": c["model"], "x": c["x"], "sigma": _level(case["sigma"], case["sigma_type"], ctx),
         "sigma_next": _level(sigma_next, case["sigma_type"], ctx)},
        {"noise": c["noise"]},
        notes={"score_fn": SCORE_NOTE, "sigma": _sigma_note(case["sigma"], case["sigma_type"]),
               "sigma_next": _sigma_note(sigma_next, case["sigma_type"])},
    )


def build_corrector(case: dict, ctx: Context) -> Inputs:
    c = _step_tensors(case, ctx)
    return Inputs(
        {"score_fn": c["model"], "x": c["x"], "sigma": _level(case["sigma"], case["sigma_type"], ctx),
         "snr": case["snr"]},
        {"noise": c["noise"]},
        notes={"score_fn": SCORE_NOTE, "sigma": _sigma_note(case["sigma"], case["sigma_type"])},
    )


def _f64(v, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=F64, device=like.device)


def _batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    return _f64(sigma, x).to(x.dtype).expand(x.shape[0])


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)


# Diagnoses: known mistakes, evaluated on the float64 inputs (the model built in float64).

def _predictor_full_variance(score_fn, x, sigma, sigma_next, noise):
    return ref.reverse_diffusion_predictor(score_fn, x, sigma, 0.0, noise=noise)


def _predictor_score_at_next(score_fn, x, sigma, sigma_next, noise):
    g2 = _f64(sigma, x) ** 2 - _f64(sigma_next, x) ** 2
    x_mean = x + g2 * score_fn(x, _batch_sigma(sigma_next, x))
    return x_mean + g2.sqrt() * noise, x_mean


def _predictor_noise_variance(score_fn, x, sigma, sigma_next, noise):
    g2 = _f64(sigma, x) ** 2 - _f64(sigma_next, x) ** 2
    x_mean = x + g2 * score_fn(x, _batch_sigma(sigma, x))
    return x_mean + g2 * noise, x_mean


def _predictor_std_difference(score_fn, x, sigma, sigma_next, noise):
    g = _f64(sigma, x) - _f64(sigma_next, x)
    x_mean = x + g * score_fn(x, _batch_sigma(sigma, x))
    return x_mean + g.sqrt() * noise, x_mean


def _swapped(step: Callable) -> Callable:
    def wrong(*args):
        out, out_mean = step(*args)
        return out_mean, out

    return wrong


def _corrector_with(score_fn, x, sigma, snr, noise, *, factor=2.0, noise_factor=2.0, norms="per-sample"):
    score = score_fn(x, _batch_sigma(sigma, x))
    if norms == "per-sample":
        step = factor * (snr * _per_sample_norm(noise).mean() / _per_sample_norm(score).mean()) ** 2
    elif norms == "whole-batch":
        step = factor * (snr * torch.linalg.vector_norm(noise) / torch.linalg.vector_norm(score)) ** 2
    else:  # one step per sample
        step = factor * (snr * _per_sample_norm(noise) / _per_sample_norm(score)) ** 2
        step = step.reshape(-1, *([1] * (x.ndim - 1)))
    x_mean = x + step * score
    return x_mean + (noise_factor * step).sqrt() * noise, x_mean


PREDICTOR_DIAGNOSES = (
    Diagnosis(_predictor_full_variance, "your step uses σ² where the VE SDE's variance increment g² = σ² − σ_next² "
              "belongs: the predictor moves from σ to σ_next, removing only the noise between the two levels"),
    Diagnosis(_predictor_score_at_next, "your score is evaluated at σ_next; the sample x is at level σ, so the "
              "score must be s(x, σ)"),
    Diagnosis(_predictor_noise_variance, "your noise is scaled by g² = σ² − σ_next², a variance; scale it by its "
              "square root √(σ² − σ_next²)"),
    Diagnosis(_predictor_std_difference, "you used σ − σ_next where the variance difference σ² − σ_next² belongs"),
    Diagnosis(_swapped(ref.reverse_diffusion_predictor), "your result is (x_mean, x): return (x, x_mean), the noisy "
              "sample first"),
)

CORRECTOR_DIAGNOSES = (
    Diagnosis(lambda s, x, sigma, snr, noise: _corrector_with(s, x, sigma, snr, noise, factor=1.0),
              "your step size is (snr·‖z‖/‖s‖)²: score_sde's Langevin corrector uses ε = 2·(snr·‖z‖/‖s‖)²"),
    Diagnosis(lambda s, x, sigma, snr, noise: _corrector_with(s, x, sigma, snr, noise, noise_factor=1.0),
              "your noise is scaled by √ε; a Langevin step x + ε·s + √(2ε)·z needs √(2ε)"),
    Diagnosis(lambda s, x, sigma, snr, noise: _corrector_with(s, x, sigma, snr, noise, norms="whole-batch"),
              "your norms are taken over the whole batch at once; take one norm per sample (over its non-batch "
              "dimensions) and average those over the batch"),
    Diagnosis(lambda s, x, sigma, snr, noise: _corrector_with(s, x, sigma, snr, noise, norms="each"),
              "your step size is computed per sample; score_sde averages the per-sample norms over the batch "
              "and uses one ε for the whole batch"),
    Diagnosis(_swapped(ref.langevin_corrector), "your result is (x_mean, x): return (x, x_mean), the noisy sample "
              "first"),
)

# -- the samplers' structure: shape, dtype, device, generator, score calls --------------------


def langevin_twice(ns, score_fn, x, step_size, n_steps, generator):
    """Probe: run langevin_dynamics twice with generators of the same seed; return both results."""
    twin = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    first = ns.langevin_dynamics(score_fn, x, step_size, n_steps, generator=generator)
    second = ns.langevin_dynamics(score_fn, x, step_size, n_steps, generator=twin)
    return first, second


def annealed_twice(ns, score_fn, x, sigmas, step_lr, n_steps_each, generator):
    """Probe: run annealed_langevin_dynamics twice with generators of the same seed."""
    twin = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    first = ns.annealed_langevin_dynamics(score_fn, x, sigmas, step_lr, n_steps_each, generator=generator)
    second = ns.annealed_langevin_dynamics(score_fn, x, sigmas, step_lr, n_steps_each, generator=twin)
    return first, second


def pc_twice(ns, score_fn, shape, sigmas, snr, n_corrector, generator):
    """Probe: run pc_sample twice with generators of the same seed."""
    twin = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    first = ns.pc_sample(score_fn, shape, sigmas, snr, n_corrector, generator=generator)
    second = ns.pc_sample(score_fn, shape, sigmas, snr, n_corrector, generator=twin)
    return first, second


@st.composite
def sampler_cases(draw: Any) -> dict:
    return {
        "shape": draw(data_shapes),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "steps": draw(st.integers(0, 4)),
        "levels": draw(st.integers(1, 4)),
        "n_corrector": draw(st.integers(0, 2)),
        "seed": draw(st.integers(0, 2**16)),
    }


def sampler_examples() -> tuple[dict, ...]:
    return (
        {"shape": (4, 3), "dtype": "float32", "steps": 3, "levels": 3, "n_corrector": 1, "seed": 0},
        {"shape": (1, 2), "dtype": "float64", "steps": 1, "levels": 1, "n_corrector": 0, "seed": 1},
        {"shape": (2, 1, 4, 4), "dtype": "float64", "steps": 2, "levels": 2, "n_corrector": 2, "seed": 2},
        {"shape": (3,), "dtype": "float32", "steps": 0, "levels": 4, "n_corrector": 1, "seed": 3},
    )


def _sampler_data(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """μ, s² (float64, over the case's data shape) and the generator that drew them, for more draws."""
    g = torch.Generator().manual_seed(case["seed"])
    mean, var = _gaussian_params(tuple(case["shape"])[1:], g, 0.05, 2.0)
    return mean, var, g


def _generator_arg(case: dict, ctx: Context) -> dict:
    return generator_spec(case["seed"] + 1, ctx.device.type)


def build_langevin_structure(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    mean, var, g = _sampler_data(case)
    x = (mean + 2 * var.sqrt() * torch.randn(tuple(case["shape"]), generator=g, dtype=F64)).to(dtype).to(ctx.device)
    model = model_spec("gaussian_score", record=True, mean=mean.to(dtype).to(ctx.device), var=var.to(dtype).to(ctx.device))
    return Inputs({"score_fn": model, "x": x, "step_size": 0.01, "n_steps": case["steps"]},
                  {"generator": _generator_arg(case, ctx)},
                  notes={"score_fn": "the score of Gaussian data N(μ, diag(s²)): score_fn(x) = −(x − μ)/s²"},
                  meta={"blocks": [(None, case["steps"] * case["shape"][0])]})


def _sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    return ref.ve_sigmas(sigma_min, sigma_max, n)


def build_annealed_structure(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    mean, var, g = _sampler_data(case)
    sigmas = _sigmas(0.1, 2.0, case["levels"])
    x = (2.0 * torch.randn(tuple(case["shape"]), generator=g, dtype=F64)).to(dtype).to(ctx.device)
    steps = max(1, case["steps"])
    model = model_spec("gaussian_score_ve", record=True, mean=mean.to(dtype).to(ctx.device), var=var.to(dtype).to(ctx.device))
    return Inputs({"score_fn": model, "x": x, "sigmas": sigmas.to(ctx.device), "step_lr": 2e-3, "n_steps_each": steps},
                  {"generator": _generator_arg(case, ctx)},
                  notes={"score_fn": SCORE_NOTE, "sigmas": f"ve_sigmas(0.1, 2.0, {case['levels']}) (float64)"},
                  meta={"blocks": [(float(s), steps * case["shape"][0]) for s in sigmas]})


def build_pc_structure(case: dict, ctx: Context) -> Inputs:
    dtype = torch.get_default_dtype()
    mean, var, g = _sampler_data(case)
    sigmas = _sigmas(0.05, 5.0, case["levels"])
    model = model_spec("gaussian_score_ve", record=True, mean=mean.to(dtype).to(ctx.device), var=var.to(dtype).to(ctx.device))
    blocks = [(float(s), (case["n_corrector"] + 1) * case["shape"][0]) for s in sigmas]
    return Inputs({"score_fn": model, "shape": tuple(case["shape"]), "sigmas": sigmas.to(ctx.device), "snr": 0.16,
                   "n_corrector": case["n_corrector"]},
                  {"generator": _generator_arg(case, ctx)},
                  notes={"score_fn": SCORE_NOTE, "sigmas": f"ve_sigmas(0.05, 5.0, {case['levels']}) (float64)"},
                  meta={"blocks": blocks, "dtype": dtype})


def _pair(outcome) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = as_tuple(outcome.value, ("first run", "second run"), "the probe's result")
    return as_tensor(first, "the result"), as_tensor(second, "the result of the second run")


def _judge_output(shape_of: Callable[[Inputs], tuple], dtype_of: Callable[[Inputs], torch.dtype],
                  device_of: Callable[[Inputs], torch.device]) -> Callable:
    def judge(inputs: Inputs, outcome) -> None:
        out, _ = _pair(outcome)
        shape, dtype, device = shape_of(inputs), dtype_of(inputs), device_of(inputs)
        if tuple(out.shape) != tuple(shape):
            raise Mismatch(f"the result has shape {tuple(out.shape)}; expected {tuple(shape)}")
        if out.dtype != dtype:
            raise Mismatch(f"the result has dtype {out.dtype}; expected {dtype}")
        if out.device.type != device.type:
            raise Mismatch(f"the result is on {out.device}; expected {device}")
        if not bool(torch.isfinite(out).all()):
            raise Mismatch("the result contains NaN or infinite values")

    return judge


def _like_x(inputs: Inputs):
    return tuple(inputs.args["x"].shape)


def _judge_reproducible(inputs: Inputs, outcome) -> None:
    first, second = _pair(outcome)
    if first.shape != second.shape or not torch.equal(first.to("cpu"), second.to("cpu")):
        raise Mismatch("two runs with generators seeded alike gave different samples: draw every random number "
                       "with `generator` (torch.randn(shape, generator=generator, ...)), never with the global "
                       "random state (torch.randn_like, torch.randn without generator)")


def _call_blocks(calls: list[dict]) -> list[tuple[float | None, int, str]]:
    """Consecutive score calls at one noise level merged: (σ or None, rows, problem with σ's shape or "")."""
    blocks: list[list] = []
    for call in calls:
        rows, level = int(call.get("batch", -1)), call.get("level")
        problem, value = "", None
        if level is not None:
            level = torch.as_tensor(level).detach().to("cpu", F64)
            if level.ndim != 1 or level.numel() != rows:
                problem = (f"score_fn was called with sigma of shape {tuple(level.shape)} for a batch of {rows}; "
                           f"the course's score models take σ as a float tensor of shape (B,)")
            if level.numel() == 0:
                value = float("nan")
            else:
                value = float(level.flatten()[0])
                if not bool(torch.allclose(level, torch.full_like(level, value), rtol=1e-6, atol=0)):
                    problem = problem or "score_fn was called with different σ within one batch"
        if blocks and _same_level(blocks[-1][0], value):
            blocks[-1][1] += rows
            blocks[-1][2] = blocks[-1][2] or problem
        else:
            blocks.append([value, rows, problem])
    return [tuple(b) for b in blocks]


def _same_level(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))


def _describe_blocks(blocks: list) -> str:
    parts = []
    for level, rows, _ in blocks[:8]:
        parts.append(f"{rows} rows" if level is None else f"{rows} rows at σ = {level:.5g}")
    more = f", … ({len(blocks)} groups)" if len(blocks) > 8 else ""
    return "[" + ", ".join(parts) + more + "]"


def _judge_score_calls(what: str) -> Callable:
    """The score calls of two runs must be the expected blocks (σ, rows) twice, σ a (B,) tensor."""

    def judge(inputs: Inputs, outcome) -> None:
        calls = outcome.model_calls[0] if outcome.model_calls else []
        got = _call_blocks(calls)
        for _, _, problem in got:
            if problem:
                raise Mismatch(problem)
        one_run = [(level, rows) for level, rows in inputs.meta["blocks"] if rows > 0]
        merged = _call_blocks([{"batch": rows, "level": None if level is None else torch.tensor([level] * rows)}
                               for level, rows in one_run + one_run])
        expected = [(level, rows) for level, rows, _ in merged]
        ok = len(got) == len(expected) and all(
            g[1] == e[1] and _same_level(g[0], e[0]) for g, e in zip(got, expected))
        if not ok:
            half = _call_blocks([{"batch": r, "level": None if lv is None else torch.tensor([lv] * r)}
                                 for lv, r in one_run])
            raise Mismatch(f"{what}\nExpected per run, in this order: {_describe_blocks(half)}\n"
                           f"Your two runs evaluated: {_describe_blocks(got)}",
                           expected=_describe_blocks(half), got=_describe_blocks(got))

    return judge


def _structure_check(function: str, build: Callable, probe: Callable, shape_of, dtype_of, device_of,
                     calls_what: str, calls_name: str) -> Property:
    return Property(
        function=function, cases=sampler_cases(), build=build, probe=probe, examples=sampler_examples(),
        max_examples=12,
        aspects=(
            Aspect("returns samples of the right shape, dtype and device", 1, _judge_output(shape_of, dtype_of, device_of)),
            Aspect("draws its noise from `generator` (the same seed gives the same samples)", 1, _judge_reproducible),
            Aspect(calls_name, 1, _judge_score_calls(calls_what), shrink=False),
        ),
    )


# -- laws on Gaussian data ----------------------------------------------------------------------

LAW_ALPHA = 1e-6


def _standardise(value, mean: torch.Tensor, var: torch.Tensor, what: str) -> torch.Tensor:
    """(x − mean)/√var in float64 on the CPU; a wrong type or shape is a Mismatch."""
    x = as_tensor(value, what)
    if tuple(x.shape) != tuple(mean.shape):
        raise Mismatch(f"{what} has shape {tuple(x.shape)}; expected {tuple(mean.shape)}")
    x = x.detach().to("cpu", F64)
    return (x - mean.to("cpu", F64)) / var.to("cpu", F64).sqrt()


def _fits(value, law: tuple[torch.Tensor, torch.Tensor], thresholds: list) -> bool:
    """Does ``value`` pass mean and variance tests, at the given statistics' thresholds, against ``law``?"""
    try:
        r = _standardise(value, *law, "x")
    except Mismatch:
        return False
    if not bool(torch.isfinite(r).all()):
        return False
    n = r.numel()
    z, q = float(r.sum() / math.sqrt(n)), float((r**2).mean())
    z_stat, q_stat = thresholds
    return z_stat.low <= z <= z_stat.high and q_stat.low <= q <= q_stat.high


def _hint(values: list, laws_of_mistakes: list[tuple[str, list]], statistics: list) -> str:
    """The first known mistake whose exact law fits every returned value (mean and variance tests)."""
    for message, mistake_laws in laws_of_mistakes:
        if all(_fits(v, law, statistics[2 * i: 2 * i + 2]) for i, (v, law) in enumerate(zip(values, mistake_laws))):
            return "Hint: your samples follow exactly the law of a sampler in which " + message
    return ""


def _affine_chain(law, steps: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    for a, b, c in steps:
        law = laws.affine_law(law, a, b, c)
    return law


def _langevin_steps(m, v, alpha, n, score_coef=0.5, noise_coef=None):
    """n steps of x′ = x + score_coef·α·(−(x − m)/v) + noise_coef·z (noise_coef defaults to √α)."""
    noise_coef = math.sqrt(alpha) if noise_coef is None else noise_coef
    rho = 1 - score_coef * alpha / v
    return [(rho, (1 - rho) * m, noise_coef * torch.ones_like(m))] * n


# langevin_dynamics: Gaussian target with 64 coordinates, variances log-spaced over 0.02…2,
# started from fixed points 2 standard deviations out; α = 0.02 makes ρ = 1 − α/(2v) range
# from 0.5 (tiny variance: the drift dominates) to 0.995. n = 1 and n = 5 steps.
LANGEVIN_B, LANGEVIN_D, LANGEVIN_STEP = 512, 64, 0.02
LANGEVIN_N_STEPS = (1, 5)


def _float32_data(mean: torch.Tensor, var: torch.Tensor) -> GaussianData:
    """Gaussian data whose parameters are exactly representable in float32.

    The student's model is built from float32 parameters; the laws are computed in
    float64 from the very same numbers, so that no rounding of the parameters enters.
    """
    return GaussianData(mean.to(torch.float32).to(F64), var.to(torch.float32).to(F64))


def _model(kind: str, data: GaussianData, ctx: Context, record: bool = False) -> dict:
    return model_spec(kind, record=record, mean=data.mean.to(torch.float32).to(ctx.device),
                      var=data.var.to(torch.float32).to(ctx.device))


def _langevin_target() -> GaussianData:
    var = torch.exp(torch.linspace(math.log(0.02), math.log(2.0), LANGEVIN_D, dtype=F64))
    mean = torch.linspace(-2.0, 2.0, LANGEVIN_D, dtype=F64).roll(7)
    return _float32_data(mean, var)


def _residual_tests(rs: list[torch.Tensor], alpha: float, names: list[str]) -> list[Statistic]:
    """Mean and variance per residual set, then correlation between the batch halves of the last one."""
    k = 2 * len(rs) + 1
    out = []
    for r, name in zip(rs, names):
        out += [mean_z(r, alpha / k, f"z of the mean ({name})"), variance_chi2(r, alpha / k, f"mean of r² ({name})")]
    last = rs[-1]
    half = last.shape[0] // 2
    out.append(product_z(last[:half], last[half: 2 * half], alpha / k,
                         f"correlation between batch elements ({names[-1]})"))
    return out


def langevin_law(ctx: Context, alpha: float) -> StatReport:
    """langevin_dynamics from fixed starts, n = 1 and n = 5 steps, against langevin_dynamics_law."""
    target = _langevin_target()
    g = ctx.generator("langevin law")
    x = target.mean + 2 * target.var.sqrt() * torch.randn((LANGEVIN_B, LANGEVIN_D), generator=g, dtype=F64)
    x32 = x.to(torch.float32)
    model = _model("gaussian_score", target, ctx)
    calls = [Inputs({"score_fn": model, "x": x32.to(ctx.device), "step_size": LANGEVIN_STEP, "n_steps": n},
                    {"generator": generator_spec(ctx.seed_for("langevin law", n) % 2**63, ctx.device.type)},
                    notes={"score_fn": "the score of N(μ, diag(s²)), s² from 0.02 to 2 over 64 coordinates",
                           "x": f"float32 ({LANGEVIN_B}, {LANGEVIN_D}): fixed starts, μ + 2s·z"})
             for n in LANGEVIN_N_STEPS]
    outcomes = ctx.call("langevin_dynamics", calls, tag="law")
    values = [value_of(o) for o in outcomes]
    start = laws.point_law(x32.double())
    m, v = target.mean, target.var
    exact = [_affine_chain(start, _langevin_steps(m, v, LANGEVIN_STEP, n)) for n in LANGEVIN_N_STEPS]
    rs = [_standardise(val, *law, "langevin_dynamics's result") for val, law in zip(values, exact)]
    statistics = _residual_tests(rs, alpha, [f"{n} step{'s' * (n > 1)}" for n in LANGEVIN_N_STEPS])
    note = ""
    if not all(s.passed for s in statistics):
        a = LANGEVIN_STEP
        mistakes = [
            ("the score term is α·∇log p instead of (α/2)·∇log p",
             [_affine_chain(start, _langevin_steps(m, v, a, n, score_coef=1.0)) for n in LANGEVIN_N_STEPS]),
            ("the noise is α·z instead of √α·z",
             [_affine_chain(start, _langevin_steps(m, v, a, n, noise_coef=a)) for n in LANGEVIN_N_STEPS]),
            ("the noise is √(2α)·z instead of √α·z",
             [_affine_chain(start, _langevin_steps(m, v, a, n, noise_coef=math.sqrt(2 * a))) for n in LANGEVIN_N_STEPS]),
            ("no noise is added", [_affine_chain(start, _langevin_steps(m, v, a, n, noise_coef=0.0))
                                   for n in LANGEVIN_N_STEPS]),
            ("one step too few is made", [_affine_chain(start, _langevin_steps(m, v, a, n - 1)) for n in LANGEVIN_N_STEPS]),
            ("one step too many is made", [_affine_chain(start, _langevin_steps(m, v, a, n + 1)) for n in LANGEVIN_N_STEPS]),
        ]
        note = _hint(values, mistakes, statistics)
    return StatReport(statistics, rs[-1], calls[-1], note=note)


# annealed_langevin_dynamics: Gaussian data with 64 coordinates, s² log-spaced over 1e-3…1 (tiny
# variances make the last levels' steps matter), 4 levels ve_sigmas(0.1, 2, 4), 3 steps each,
# step_lr = 0.5·σ_L² so that α_i/(s² + σ_i²) ≤ 0.5: every step moves the samples visibly.
ANNEALED_B, ANNEALED_D = 512, 64
ANNEALED_SIGMAS = (0.1, 2.0, 4)
ANNEALED_STEPS = 3
ANNEALED_LR = 0.5 * ANNEALED_SIGMAS[0] ** 2


def _annealed_data() -> GaussianData:
    var = torch.exp(torch.linspace(math.log(1e-3), math.log(1.0), ANNEALED_D, dtype=F64))
    mean = torch.linspace(-1.0, 1.0, ANNEALED_D, dtype=F64).roll(11)
    return _float32_data(mean, var)


def _annealed_steps(data: GaussianData, sigmas: torch.Tensor, alphas: list, n: int, score_coef=0.5, noise=None):
    steps = []
    for sigma, alpha in zip(sigmas, alphas):
        v = data.var + sigma**2
        steps += _langevin_steps(data.mean, v, float(alpha), n, score_coef,
                                 None if noise is None else noise(float(alpha)))
    return steps


def annealed_law(ctx: Context, alpha: float) -> StatReport:
    """annealed_langevin_dynamics from fixed starts σ_0·z against annealed_langevin_law."""
    data = _annealed_data()
    sigmas = _sigmas(*ANNEALED_SIGMAS)
    g = ctx.generator("annealed law")
    x32 = (sigmas[0] * torch.randn((ANNEALED_B, ANNEALED_D), generator=g, dtype=F64)).to(torch.float32)
    model = _model("gaussian_score_ve", data, ctx)
    inputs = Inputs({"score_fn": model, "x": x32.to(ctx.device), "sigmas": sigmas.to(ctx.device),
                     "step_lr": ANNEALED_LR, "n_steps_each": ANNEALED_STEPS},
                    {"generator": generator_spec(ctx.seed_for("annealed law") % 2**63, ctx.device.type)},
                    notes={"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 1e-3 to 1 over 64 coordinates",
                           "x": f"float32 ({ANNEALED_B}, {ANNEALED_D}): fixed starts σ_0·z",
                           "sigmas": "ve_sigmas(0.1, 2.0, 4) (float64)"})
    value = value_of(ctx.call("annealed_langevin_dynamics", [inputs], tag="law")[0])
    start = laws.point_law(x32.double())
    exact = laws.annealed_langevin_law(data, start, sigmas, ANNEALED_LR, ANNEALED_STEPS)
    r = _standardise(value, *exact, "annealed_langevin_dynamics's result")
    statistics = _residual_tests([r], alpha, [f"{ANNEALED_SIGMAS[2]} levels × {ANNEALED_STEPS} steps"])
    note = ""
    if not all(s.passed for s in statistics):
        last, first = sigmas[-1], sigmas[0]

        def law_with(alphas, **kw):
            return [_affine_chain(start, _annealed_steps(data, sigmas, alphas, ANNEALED_STEPS, **kw))]

        mistakes = [
            ("α_i = step_lr·σ_i/σ_L: the ratio must be squared",
             law_with([ANNEALED_LR * s / last for s in sigmas])),
            ("α_i = step_lr·(σ_i/σ_0)²: divide by the last (smallest) σ, so that the last level's step is step_lr",
             law_with([ANNEALED_LR * (s / first) ** 2 for s in sigmas])),
            ("α_i = step_lr at every level (the step must scale with σ_i²)", law_with([ANNEALED_LR] * len(sigmas))),
            ("the score term is α·s instead of (α/2)·s", law_with([ANNEALED_LR * (s / last) ** 2 for s in sigmas],
                                                               score_coef=1.0)),
            ("the noise is α·z instead of √α·z", law_with([ANNEALED_LR * (s / last) ** 2 for s in sigmas],
                                                       noise=lambda a: a)),
            ("each step is x + ε·s + √(2ε)·z with ε = step_lr·(σ_i/σ_L)², the authors' code's convention: in the "
             "paper's (this course's), α_i = step_lr·(σ_i/σ_L)² and the step is x + (α_i/2)·s + √α_i·z",
             law_with([ANNEALED_LR * (s / last) ** 2 for s in sigmas], score_coef=1.0, noise=lambda a: math.sqrt(2 * a))),
            ("the levels run in ascending order", [_affine_chain(start, _annealed_steps(
                data, sigmas.flip(0), [ANNEALED_LR * (s / last) ** 2 for s in sigmas.flip(0)], ANNEALED_STEPS))]),
        ]
        note = _hint([value], mistakes, statistics)
    return StatReport(statistics, r, inputs, note=note)


# pc_sample without corrector: Gaussian data with 64 coordinates, s² log-spaced over 1e-6…4, 6 levels
# ve_sigmas(0.01, 10, 6). Where s² ≪ σ_L² = 1e-4 the noise-free last step shrinks x − μ by
# s²/(s² + σ_L²): the output's variance there is ~1e-7, so any noise left on the last step (σ_L² =
# 1e-4) multiplies the mean of r² by ~30, and the coarse levels make g² = σ_i² − σ_{i+1}² errors show.
PC_B, PC_D = 512, 64
PC_SIGMAS = (0.01, 10.0, 6)


def _pc_data() -> GaussianData:
    var = torch.exp(torch.linspace(math.log(1e-6), math.log(4.0), PC_D, dtype=F64))
    mean = torch.linspace(-1.0, 1.0, PC_D, dtype=F64).roll(5)
    return _float32_data(mean, var)


def _predictor_steps(data: GaussianData, sigmas: torch.Tensor, *, g2_of=None, score_level=None, noisy_end=False,
                     noiseless=False) -> list:
    steps = []
    n = len(sigmas)
    for i in range(n):
        sigma, nxt = sigmas[i], sigmas[i + 1] if i + 1 < n else torch.zeros((), dtype=F64)
        g2 = sigma**2 - nxt**2 if g2_of is None else g2_of(sigma, nxt)
        level = sigma if score_level is None else score_level(sigma, nxt)
        a = 1 - g2 / (data.var + level**2)
        last = i + 1 == n
        c = 0.0 if (last and not noisy_end) or noiseless else g2.sqrt()
        steps.append((a, (1 - a) * data.mean, c * torch.ones_like(data.mean)))
    return steps


def pc_law(ctx: Context, alpha: float) -> StatReport:
    """pc_sample(n_corrector=0) against pc_sample_law."""
    data = _pc_data()
    sigmas = _sigmas(*PC_SIGMAS)
    model = _model("gaussian_score_ve", data, ctx)
    inputs = Inputs({"score_fn": model, "shape": (PC_B, PC_D), "sigmas": sigmas.to(ctx.device), "snr": 0.16,
                     "n_corrector": 0},
                    {"generator": generator_spec(ctx.seed_for("pc law") % 2**63, ctx.device.type)},
                    notes={"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 1e-6 to 4 over 64 coordinates",
                           "sigmas": "ve_sigmas(0.01, 10.0, 6) (float64)"})
    value = value_of(ctx.call("pc_sample", [inputs], tag="law")[0])
    mean, var = laws.pc_sample_law(data, sigmas)
    mean, var = mean.expand(PC_B, PC_D), var.expand(PC_B, PC_D)
    r = _standardise(value, mean, var, "pc_sample's result")
    statistics = _residual_tests([r], alpha, ["no corrector"])
    note = ""
    if not all(s.passed for s in statistics):
        zero = torch.zeros(PC_D, dtype=F64)
        start = (zero, sigmas[0] ** 2 * torch.ones_like(zero))

        def law(**kw):
            m, v = _affine_chain(start if not kw.pop("unscaled_start", False) else (zero, torch.ones_like(zero)),
                                 _predictor_steps(data, sigmas, **kw))
            return [(m.expand(PC_B, PC_D), v.expand(PC_B, PC_D))]

        mistakes = [
            ("the last predictor step adds noise: return its x_mean", law(noisy_end=True)),
            ("each predictor step uses σ_i² instead of σ_i² − σ_{i+1}²", law(g2_of=lambda s, n: s**2)),
            ("the score is evaluated at σ_{i+1} instead of σ_i", law(score_level=lambda s, n: n)),
            ("the start is z instead of σ_0·z", law(unscaled_start=True)),
            ("the chain continues from x_mean (no noise at any step)", law(noiseless=True)),
        ]
        note = _hint([value], mistakes, statistics)
    return StatReport(statistics, r, inputs, note=note)


# -- pc_sample with correctors: the chain's transitions, recovered from the score calls -------

PC_TRACE_B, PC_TRACE_D = 256, 32
PC_TRACE_SIGMAS = (0.05, 5.0, 5)
PC_TRACE_SNR = 0.2  # not the default 0.16, so that a pc_sample ignoring snr shows
PC_TRACE_CORRECTORS = 2


def trace_pc_sample(ns, score_fn, shape, sigmas, snr, n_corrector, generator):
    """Probe: run pc_sample with a score model that records every input it is evaluated at."""
    states, levels = [], []

    def traced(x, sigma):
        states.append(x.detach().clone())
        levels.append(torch.as_tensor(sigma).detach().clone())
        return score_fn(x, sigma)

    out = ns.pc_sample(traced, shape, sigmas, snr, n_corrector, generator=generator)
    return out, states, levels


def _trace_states(value, batch: int) -> tuple[Any, list[torch.Tensor], list[float]]:
    """The result and the full-batch states of the chain (calls on parts of the batch are joined)."""
    out, states, levels = as_tuple(value, ("result", "states", "levels"), "the probe's result")
    if not isinstance(states, (list, tuple)) or not isinstance(levels, (list, tuple)):
        raise Mismatch("pc_sample's score calls could not be recorded")
    joined, joined_levels, pending, pending_level = [], [], [], None
    for x, level in zip(states, levels):
        x = as_tensor(x, "a state passed to score_fn").detach().to("cpu", F64)
        level = torch.as_tensor(as_tensor(level, "σ passed to score_fn")).detach().to("cpu", F64).flatten()
        pending.append(x)
        pending_level = float(level[0]) if level.numel() else float("nan")
        rows = sum(p.shape[0] for p in pending)
        if rows == batch:
            joined.append(torch.cat(pending))
            joined_levels.append(pending_level)
            pending = []
        elif rows > batch:
            raise Mismatch("pc_sample evaluated score_fn on batches that do not add up to the sample batch")
    if pending:
        raise Mismatch("pc_sample's last score evaluation did not cover the whole batch")
    return out, joined, joined_levels


def _recover_corrector(x: torch.Tensor, x_next: torch.Tensor, score: torch.Tensor, snr: float) -> torch.Tensor:
    """The noise z of x_next = x + ε·s + √(2ε)·z with ε = 2(snr·mean_b‖z_b‖/mean_b‖s_b‖)².

    Writing Δ = x_next − x, the relation holds iff mean_b‖Δ_b − ε·s_b‖ = ε·ḡ/snr with
    ḡ = mean_b‖s_b‖. The left side minus the right, f(ε), is convex, positive at 0 and
    has slope → ḡ(1 − 1/snr) < 0 (snr < 1): it is strictly decreasing with one root,
    found by bisection in float64 to relative precision 1e-15. Then z = (Δ − ε·s)/√(2ε).
    """
    delta = x_next - x
    g_bar = float(_per_sample_norm(score).mean())
    if not g_bar > 0 or not bool(torch.isfinite(delta).all()):
        raise Mismatch("a corrector step of pc_sample could not be read off its states (zero score or non-finite values)")

    def f(eps: float) -> float:
        return float(_per_sample_norm(delta - eps * score).mean()) - eps * g_bar / snr

    low, high = 0.0, float(_per_sample_norm(delta).mean()) / (g_bar * (1 / snr - 1)) * 1.01 + 1e-300
    for _ in range(200):
        mid = 0.5 * (low + high)
        if f(mid) > 0:
            low = mid
        else:
            high = mid
        if high - low <= 1e-15 * high:
            break
    eps = 0.5 * (low + high)
    if not eps > 0:
        raise Mismatch("a corrector step of pc_sample did not move the samples: its step size ε is 0")
    return (delta - eps * score) / math.sqrt(2 * eps)


#: The final step is a deterministic function of the last state: the float32 sampler's
#: round-off on values ≤ ~10 (see STEP_TOLERANCE).
FINAL_TOLERANCE = STEP_TOLERANCE


def _final_step_hint(got: torch.Tensor, last: torch.Tensor, score_last: torch.Tensor, sigma_last: float,
                     expected: torch.Tensor) -> str:
    """Name the mistake when pc_sample's result is a corrector's x_mean or a noisy predictor step."""
    if tuple(got.shape) != tuple(last.shape) or not bool(torch.isfinite(got).all()):
        return ""
    got = got.detach().to("cpu", F64)
    move = got - last
    step = float((move * score_last).sum() / (score_last**2).sum())
    off_line = float((move - step * score_last).norm()) / max(float(move.norm()), 1e-300)
    if step > 0 and off_line < 1e-3 and abs(step - sigma_last**2) > 1e-3 * sigma_last**2:
        return (f"\nHint: your result is x + ε·s(x, σ_L) with ε = {step:.3g}, not σ_L² = {sigma_last**2:.3g}: "
                "a corrector step came last. At each level run the corrector steps first, then the predictor.")
    z = (got - expected) / sigma_last
    if abs(float(z.mean())) < 0.1 and 0.8 < float(z.var()) < 1.25:
        return ("\nHint: your result is x_mean plus σ_L·z with z like N(0, 1) noise: the last predictor step "
                "added noise; return its x_mean.")
    return ""


def pc_transitions(ctx: Context, alpha: float) -> StatReport:
    """pc_sample with 2 corrector steps per level: every transition's noise, recovered exactly, is i.i.d. N(0, 1)."""
    data = _float32_data(torch.linspace(-1.0, 1.0, PC_TRACE_D, dtype=F64).roll(3),
                         torch.exp(torch.linspace(math.log(0.01), math.log(1.0), PC_TRACE_D, dtype=F64)))
    sigmas = _sigmas(*PC_TRACE_SIGMAS)
    model = _model("gaussian_score_ve", data, ctx)
    inputs = Inputs({"score_fn": model, "shape": (PC_TRACE_B, PC_TRACE_D), "sigmas": sigmas.to(ctx.device),
                     "snr": PC_TRACE_SNR, "n_corrector": PC_TRACE_CORRECTORS},
                    {"generator": generator_spec(ctx.seed_for("pc transitions") % 2**63, ctx.device.type)},
                    notes={"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 0.01 to 1 over 32 coordinates",
                           "sigmas": "ve_sigmas(0.05, 5.0, 5) (float64)"})
    outcome = ctx.call("pc_sample", [inputs], probe=trace_pc_sample, tag="transitions")[0]
    out, states, levels = _trace_states(value_of(outcome), PC_TRACE_B)
    per_level = PC_TRACE_CORRECTORS + 1
    expected_levels = [float(s) for s in sigmas for _ in range(per_level)]
    if len(states) != len(expected_levels) or not all(_same_level(a, b) for a, b in zip(levels, expected_levels)):
        raise Mismatch(f"with n_corrector = {PC_TRACE_CORRECTORS} and {len(sigmas)} levels, pc_sample should evaluate "
                       f"the score {len(expected_levels)} times on the whole batch ({per_level} times at each σ_i: "
                       f"each corrector step, then the predictor); it did {len(states)} times "
                       "(see the test of pc_sample's score calls)")
    if not all(bool(torch.isfinite(x).all()) for x in states):
        raise Mismatch("pc_sample's chain produced NaN or infinite values (seen in the inputs of score_fn)")
    if tuple(states[0].shape) != (PC_TRACE_B, PC_TRACE_D):
        raise Mismatch(f"score_fn was called with x of shape {tuple(states[0].shape)}; expected "
                       f"{(PC_TRACE_B, PC_TRACE_D)}")

    def score(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return data.score(x, torch.ones((), dtype=F64), torch.tensor(sigma, dtype=F64) ** 2)

    noises = [states[0] / float(sigmas[0])]  # the start x = σ_0·z
    kinds = ["start"]
    for k in range(len(states) - 1):
        i, j = divmod(k, per_level)
        sigma = float(sigmas[i])
        s = score(states[k], sigma)
        if j < PC_TRACE_CORRECTORS:
            noises.append(_recover_corrector(states[k], states[k + 1], s, PC_TRACE_SNR))
            kinds.append("corrector")
        else:
            g2 = sigma**2 - float(sigmas[i + 1]) ** 2
            noises.append((states[k + 1] - states[k] - g2 * s) / math.sqrt(g2))
            kinds.append("predictor")
    last = states[-1]
    expected_out = last + float(sigmas[-1]) ** 2 * score(last, float(sigmas[-1]))
    got = as_tensor(out, "pc_sample's result")
    try:
        compare_values(got, expected_out, FINAL_TOLERANCE, "pc_sample's result")
    except Mismatch as exc:
        hint = _final_step_hint(got, last, score(last, float(sigmas[-1])), float(sigmas[-1]), expected_out)
        raise Mismatch(f"{exc}\nThe result must be the last predictor's x_mean = x + σ_L²·s(x, σ_L) of the last "
                       f"state x the score was evaluated at: the final step to σ = 0 adds no noise.{hint}",
                       **exc.details) from None
    corrector = torch.stack([z for z, kind in zip(noises, kinds) if kind == "corrector"])
    predictor = torch.stack([z for z, kind in zip(noises, kinds) if kind != "corrector"])
    pairs = len(noises) // 2
    a = alpha / 5
    statistics = [
        mean_z(corrector, a, "z of the mean (corrector noises)"),
        variance_chi2(corrector, a, "mean of z² (corrector noises)"),
        mean_z(predictor, a, "z of the mean (start and predictor noises)"),
        variance_chi2(predictor, a, "mean of z² (start and predictor noises)"),
        product_z(torch.stack(noises[0: 2 * pairs: 2]), torch.stack(noises[1: 2 * pairs: 2]), a,
                  "correlation between consecutive steps' noises"),
    ]
    note = ("Each corrector transition x → x′ = x + ε·s(x, σ_i) + √(2ε)·z and each predictor transition "
            "x → x′ = x + g²·s(x, σ_i) + g·z was read off the states the score was evaluated at, and its noise z "
            "recovered (for the corrector, ε is the unique solution of ε = 2(snr·mean‖z‖/mean‖s‖)²).")
    return StatReport(statistics, torch.cat([corrector.flatten(), predictor.flatten()]), inputs, note=note)


# -- annealed Langevin on a Gaussian mixture: every mode, with its weight ---------------------

#: Three isotropic components on a circle of radius 1.5 (neighbours 2.6 apart, 5.2 standard
#: deviations from each one's mean to the boundary of its Voronoi cell), weights 0.6, 0.3, 0.1.
MIXTURE_WEIGHTS = (0.6, 0.3, 0.1)
MIXTURE_RADIUS, MIXTURE_STD = 1.5, 0.25
#: 20 levels ve_sigmas(0.05, 3, 20), 50 steps each, step_lr = 0.5·σ_L²: 1000 score calls.
MIXTURE_SIGMAS = (0.05, 3.0, 20)
MIXTURE_STEPS = 50
MIXTURE_LR = 0.5 * MIXTURE_SIGMAS[0] ** 2
#: Samples per grading. A sampler that ignores the weights (any non-annealed chain started
#: broadly puts ≈ 1/3 in each mode) is off by 0.27 in the heaviest mode: 15 binomial standard
#: deviations beyond the band, caught on every seed.
MIXTURE_N = 1000
#: Allowance for the discretisation. Annealed Langevin with finitely many levels and steps does
#: not reproduce the weights exactly: mass stops moving between modes once they separate (and
#: ULA inflates each mode), which pulls the weights towards uniform. With these settings the
#: reference's weights, measured on 400,000 samples, are (0.590, 0.304, 0.107) (standard error
#: ≤ 0.0008): at most 0.011 from the mixture's (tests/exercises/test_langevin_checks.py
#: measures it again). The test accepts any weights within δ = 0.03 of the mixture's.
MIXTURE_DELTA = 0.03


def _mixture() -> GaussianMixture:
    k = len(MIXTURE_WEIGHTS)
    angle = 2 * math.pi * torch.arange(k, dtype=F64) / k + 0.3
    means = MIXTURE_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(torch.tensor(MIXTURE_WEIGHTS, dtype=F64), means,
                           torch.full((k, 2), MIXTURE_STD**2, dtype=F64))


def mode_counts(samples: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """How many samples lie nearest to each component's mean, ``(K,)``."""
    d = ((samples.to(F64)[None] - mixture.means[:, None]) ** 2).sum(-1)  # (K, n)
    return torch.bincount(d.argmin(0), minlength=mixture.means.shape[0])


def annealed_modes(ctx: Context, alpha: float) -> StatReport:
    """annealed_langevin_dynamics on a 3-component mixture: the fraction of samples per mode."""
    mixture = _mixture()
    sigmas = _sigmas(*MIXTURE_SIGMAS)
    g = ctx.generator("annealed modes")
    x32 = (sigmas[0] * torch.randn((MIXTURE_N, 2), generator=g, dtype=F64)).to(torch.float32)
    model = model_spec("mixture_score_ve", weights=mixture.weights.float().to(ctx.device),
                       means=mixture.means.float().to(ctx.device), vars=mixture.vars.float().to(ctx.device))
    inputs = Inputs({"score_fn": model, "x": x32.to(ctx.device), "sigmas": sigmas.to(ctx.device),
                     "step_lr": MIXTURE_LR, "n_steps_each": MIXTURE_STEPS},
                    {"generator": generator_spec(ctx.seed_for("annealed modes") % 2**63, ctx.device.type)},
                    notes={"score_fn": "the exact VE score of a mixture of 3 Gaussians N(m_k, 0.25²·I) in 2-D, "
                                       "weights 0.6, 0.3, 0.1, means on a circle of radius 1.5",
                           "x": f"float32 ({MIXTURE_N}, 2): starts σ_0·z",
                           "sigmas": "ve_sigmas(0.05, 3.0, 20) (float64)",
                           "step_lr": f"{MIXTURE_LR:g} (0.5·σ_L²)"})
    value = value_of(ctx.call("annealed_langevin_dynamics", [inputs], tag="modes")[0])
    samples = as_tensor(value, "annealed_langevin_dynamics's result")
    if tuple(samples.shape) != (MIXTURE_N, 2):
        raise Mismatch(f"annealed_langevin_dynamics's result has shape {tuple(samples.shape)}; expected {(MIXTURE_N, 2)}")
    samples = samples.detach().to("cpu", F64)
    if not bool(torch.isfinite(samples).all()):
        raise Mismatch("annealed_langevin_dynamics's result contains NaN or infinite values")
    counts = mode_counts(samples, mixture)
    k = len(MIXTURE_WEIGHTS)
    statistics = [binomial_band_test(int(counts[i]), MIXTURE_N, w, MIXTURE_DELTA, alpha / k,
                                     f"samples in mode {i + 1} (weight {w})")
                  for i, w in enumerate(MIXTURE_WEIGHTS)]
    fractions = ", ".join(f"{int(c) / MIXTURE_N:.3f}" for c in counts)
    note = (f"Fractions of samples nearest to each mode: {fractions}; the mixture's weights are "
            f"{', '.join(map(str, MIXTURE_WEIGHTS))} (accepted: within ±{MIXTURE_DELTA}).")
    return StatReport(statistics, None, inputs, note=note)


MIXTURE_DERIVATION = (
    f"one exact two-sided binomial test per mode at {LAW_ALPHA / 3:.1g} (Bonferroni over 3 modes), at the ends of "
    f"the band ±{MIXTURE_DELTA} around each weight, which holds for any sampler whose mode weights lie in the band; "
    "the discretised reference's weights are within 0.011 of the mixture's (measured on 400,000 samples)"
)


def _law_derivation(tests: int, what: str) -> str:
    return (f"{tests} tests at {LAW_ALPHA / tests:.1g} each (Bonferroni): {what}; the pooled mean z and the χ² of "
            "the variance are exact for i.i.d. N(0, 1) residuals, the correlation test is a Chernoff bound")


# -- the exercise ------------------------------------------------------------------------------


def _x_dtype(inputs: Inputs) -> torch.dtype:
    return inputs.args["x"].dtype


def _x_device(inputs: Inputs) -> torch.device:
    return inputs.args["x"].device


def _generator_device(inputs: Inputs) -> torch.device:
    return torch.device(inputs.kwargs["generator"]["device"])


EXERCISE = Exercise(
    name="langevin",
    title="Langevin dynamics and predictor–corrector sampling",
    functions=(
        ("langevin_dynamics", ("score_fn", "x", "step_size", "n_steps", "generator")),
        ("annealed_langevin_dynamics", ("score_fn", "x", "sigmas", "step_lr", "n_steps_each", "generator")),
        ("ve_sigmas", ("sigma_min", "sigma_max", "n")),
        ("reverse_diffusion_predictor", ("score_fn", "x", "sigma", "sigma_next", "noise")),
        ("langevin_corrector", ("score_fn", "x", "sigma", "snr", "noise")),
        ("pc_sample", ("score_fn", "shape", "sigmas", "snr", "n_corrector", "generator")),
    ),
    checks=(
        Agreement(
            function="ve_sigmas", cases=sigma_cases, build=build_sigmas, reference=ref.ve_sigmas,
            tolerance=SIGMAS_TOLERANCE, dtype_from=F64, points=2, dtype_points=1,
            examples=({"sigma_min": 0.01, "sigma_max": 50.0, "n": 10}, {"sigma_min": 0.01, "sigma_max": 1.0, "n": 2},
                      {"sigma_min": 0.01, "sigma_max": 348.0, "n": 1000}),
            diagnoses=(Diagnosis(_sigmas_ascending, "your levels ascend; they must run from sigma_max down to sigma_min "
                                 "(samplers start at the largest noise)"),
                       Diagnosis(_sigmas_linear, "your levels are evenly spaced; they must be geometric: "
                                 "a constant ratio σ_{i+1}/σ_i, i.e. evenly spaced in log σ"),
                       Diagnosis(_sigmas_exponent_over_n, "your exponent is i/n; with i = 0…n−1 it must be "
                                 "i/(n − 1) so that the last level is sigma_min")),
        ),
        Agreement(
            function="reverse_diffusion_predictor", cases=step_cases(), build=build_predictor,
            reference=ref.reverse_diffusion_predictor, tolerance=STEP_TOLERANCE, outputs=("x", "x_mean"),
            dtype_from="x", device_from="x", points=3, dtype_points=1, examples=step_examples(),
            diagnoses=PREDICTOR_DIAGNOSES,
        ),
        Agreement(
            function="langevin_corrector", cases=step_cases(), build=build_corrector,
            reference=ref.langevin_corrector, tolerance=STEP_TOLERANCE, outputs=("x", "x_mean"),
            dtype_from="x", device_from="x", points=3, dtype_points=1, examples=step_examples(),
            diagnoses=CORRECTOR_DIAGNOSES,
        ),
        _structure_check("langevin_dynamics", build_langevin_structure, langevin_twice, _like_x, _x_dtype, _x_device,
                         "langevin_dynamics should evaluate score_fn once per step on every sample: n_steps × B rows",
                         "evaluates score_fn once per step on the whole batch"),
        Statistical(
            function="langevin_dynamics", name="from fixed starts, the output follows the exact law of n Langevin steps",
            procedure=langevin_law, alpha=LAW_ALPHA, points=3,
            derivation=_law_derivation(5, f"mean and variance after 1 and after 5 steps ({LANGEVIN_B}×{LANGEVIN_D} "
                                          "scalars each), correlation between batch elements"),
        ),
        _structure_check("annealed_langevin_dynamics", build_annealed_structure, annealed_twice, _like_x, _x_dtype,
                         _x_device,
                         "annealed_langevin_dynamics should evaluate score_fn n_steps_each times at each σ_i, "
                         "from the first (largest) to the last, on the whole batch, with σ a (B,) tensor",
                         "evaluates score_fn n_steps_each times at each σ_i, in order"),
        Statistical(
            function="annealed_langevin_dynamics",
            name="on Gaussian data, the output follows the exact law of the annealed chain",
            procedure=annealed_law, alpha=LAW_ALPHA, points=3,
            derivation=_law_derivation(3, f"mean, variance ({ANNEALED_B}×{ANNEALED_D} scalars), correlation "
                                          "between batch elements"),
        ),
        Statistical(
            function="annealed_langevin_dynamics",
            name="on a Gaussian mixture, the samples reach every mode with its weight",
            procedure=annealed_modes, alpha=LAW_ALPHA, points=2, derivation=MIXTURE_DERIVATION,
        ),
        _structure_check("pc_sample", build_pc_structure, pc_twice, lambda i: i.args["shape"],
                         lambda i: i.meta["dtype"], _generator_device,
                         "pc_sample should evaluate score_fn n_corrector + 1 times at each σ_i (the corrector steps, "
                         "then the predictor), from the first level to the last, on the whole batch, with σ a (B,) "
                         "tensor",
                         "evaluates score_fn n_corrector + 1 times at each σ_i, in order"),
        Statistical(
            function="pc_sample", name="without corrector, the output follows the exact law of the predictor chain",
            procedure=pc_law, alpha=LAW_ALPHA, points=3,
            derivation=_law_derivation(3, f"mean, variance ({PC_B}×{PC_D} scalars), correlation between batch "
                                          "elements"),
        ),
        Statistical(
            function="pc_sample",
            name="with correctors, every step's noise is N(0, 1) and the last step is noise-free",
            procedure=pc_transitions, alpha=LAW_ALPHA, points=3,
            derivation=("5 tests at 2e-7 each (Bonferroni) on the noises recovered from every transition "
                        f"({PC_TRACE_B}×{PC_TRACE_D} scalars per step, 5 levels × 3 steps): mean and χ² of the "
                        "variance of the corrector noises and of the start and predictor noises are exact for "
                        "i.i.d. N(0, 1) draws; the correlation between consecutive steps' noises is a Chernoff bound"),
        ),
    ),
)
