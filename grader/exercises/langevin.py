"""Checks of exercise 4, langevin: Langevin dynamics, annealed Langevin, predictor–corrector sampling.

Point budget (34): ve_sigmas 3; reverse_diffusion_predictor 4; langevin_corrector 4;
langevin_dynamics 6 (structure 3, law 3); annealed_langevin_dynamics 8 (structure 3,
Gaussian law 3, mixture modes 2); pc_sample 9 (structure 3, law without corrector 3,
transitions with corrector 3).

How each function is checked: ``ve_sigmas`` and the single steps (noise injected) by
:class:`Agreement` with the reference in float64 on hypothesis-drawn shapes, dtypes and levels
(σ_next = 0, a batch of 1, per-sample scales that make per-sample norms matter). Each sampler
draws its own noise from a generator the grader passes: a structure check (:class:`Reproducible`
form and same-seed tests, :class:`ModelCalls` on a recording score), then :class:`Law` checks
on Gaussian data, where every step is x′ = a·x + b + c·z and the discretised sampler's output
law is exact (:mod:`reference.laws`), naming a known mistake whose law the output follows.
``pc_sample`` with correctors has no closed-form law (ε is random and shared by the batch): a
probe records every state the score sees, each transition's noise is recovered exactly
(``laws.pc_transition_noises``) and must be i.i.d. N(0, 1). Annealed Langevin on a mixture of
three Gaussians must put the right fraction of samples in each mode (exact binomial tests).
Statistical checks (5) at level 1e-6 each: a correct submission fails one with probability at
most 5e-6 (Bonferroni).

Power, measured with tests/catalogue/langevin.py (the χ² statistic is the mean of r², standard
error √(2/n) = 0.0078 at n = 32,768): the score term α·∇log p gives 1.21 after one step against
a threshold of 1.041 (22 standard errors); noise α·z 0.02; one step short 0.22; noise before the
score step 0.80; annealing with σ_i/σ_L not squared 3.4, with σ_i/σ_0 19, with the authors'
code's steps 0.49; a noisy last pc step ≈ 28; a pc start z instead of σ_0·z 0.80 for the
recovered start and predictor noises (threshold 0.964, 23 standard errors); noise shared by the
batch, or by a level's corrector and predictor, a correlation z ≈ 130 against 5.7; ignoring the
mixture's weights ≈ 333 of 1000 samples in the heaviest mode against a lower bound of 490 (10.5
binomial standard errors). Each is missed with probability below 1e-20: every seed catches it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from hypothesis import strategies as st

from grader.checks import (Agreement, Battery, Context, Diagnosis, Inputs, Law, LawDraw, Mismatch, ModelCalls, Property,
                           Reproducible, Sample, StatReport, Statistical, Tolerance, Traced, as_tensor, compare, swapped,
                           value_of)
from grader.exercises import Exercise
from grader.exercises._common import DTYPES, data_shapes, dtypes, gaussian_params, seeds
from grader.stats import binomial_band_test, mean_z, product_z, variance_chi2
from reference import langevin as ref
from reference import laws
from reference.toy import GaussianData, GaussianMixture

F64 = torch.float64

# -- tolerances --------------------------------------------------------------------------------

#: ve_sigmas: exp(linspace(log σ_max, log σ_min, n)), σ_max·r^i, logspace or a running
#: product all agree to ≤ n·u relative (n ≤ 1000: 1e-13 in float64); 1e-9 relative
#: leaves a 10⁴ margin and the catalogued bugs change values by ≥ 1e-3. A float32
#: result is compared at float32's 1e-4 (its dtype test fails anyway).
SIGMAS_TOLERANCE = Tolerance(rtol32=1e-4, atol32=0.0, rtol64=1e-9, atol64=0.0,
                             why="a geometric sequence of ≤ 1000 terms: ≤ n·u relative round-off in any correct formula")

#: One predictor or corrector step: x + c·s(x, σ) + d·z with |x| ≤ ~30 (σ ≤ 5, per-sample
#: scales ≤ 3) and the score's own float32 evaluation; the corrector adds two norms over
#: ≤ 500 entries (≤ 500·u relative in ε). A correct float32 computation is then within
#: ~10·u·30 + 500·u·|εs| ≲ 5e-5 of the float64 value, against 2e-4 + 1e-4·|expected|
#: allowed. Measured (tests/exercises/test_langevin_checks.py): the float32 reference and
#: float64-inside alternatives use at most ~2% of the allowance over ~1500 float32 cases,
#: while the catalogued bugs change values by ≥ 1e-2. float64: the same at u = 1.1e-16.
STEP_TOLERANCE = Tolerance(rtol32=1e-4, atol32=2e-4, rtol64=1e-9, atol64=1e-9,
                           why="a few operations on values up to ~30 and two norms over ≤ 500 entries, in float32")

# -- ve_sigmas ----------------------------------------------------------------------------------

sigma_cases = st.fixed_dictionaries({"sigma_min": st.sampled_from([0.001, 0.01, 0.05, 0.1]),
                                     "sigma_max": st.sampled_from([1.0, 10.0, 50.0, 348.0]), "n": st.integers(2, 1000)})

SIGMAS_DIAGNOSES = (
    Diagnosis(lambda sigma_min, sigma_max, n: ref.ve_sigmas(sigma_min, sigma_max, n).flip(0),
              "your levels ascend; they must run from sigma_max down to sigma_min (samplers start at the largest "
              "noise)"),
    Diagnosis(lambda sigma_min, sigma_max, n: torch.linspace(sigma_max, sigma_min, n, dtype=F64),
              "your levels are evenly spaced; they must be geometric: a constant ratio σ_{i+1}/σ_i, i.e. evenly "
              "spaced in log σ"),
    Diagnosis(lambda sigma_min, sigma_max, n: sigma_max * (sigma_min / sigma_max) ** (torch.arange(n, dtype=F64) / n),
              "your exponent is i/n; with i = 0…n−1 it must be i/(n − 1) so that the last level is sigma_min"),
)

# -- single steps: reverse_diffusion_predictor, langevin_corrector ----------------------------

#: Noise levels of the single-step cases; σ_next = ratio·σ, ratio 0 is the last step.
STEP_SIGMAS = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0)


@st.composite
def step_cases(draw: Any) -> dict:
    """Data shape, dtype, σ (a float or a float64 0-dim tensor), σ_next/σ, snr and a seed."""
    return {"shape": draw(data_shapes), "dtype": draw(dtypes), "sigma": draw(st.sampled_from(STEP_SIGMAS)),
            "ratio": draw(st.sampled_from([0.0, 0.3, 0.7, 0.95])), "snr": draw(st.sampled_from([0.05, 0.16, 0.3, 1.0])),
            "sigma_type": draw(st.sampled_from(["tensor", "float"])), "seed": draw(seeds)}


#: The boundaries: the last step (σ_next = 0), a batch of 1, 1-D, 2-D and image-like data.
STEP_EXAMPLES = tuple({"shape": shape, "dtype": dtype, "sigma": 1.0, "ratio": ratio, "snr": 0.16, "sigma_type": kind,
                       "seed": 0} for shape, dtype, ratio, kind in [
    ((4, 3), "float32", 0.0, "tensor"), ((1, 5), "float64", 0.0, "float"), ((3,), "float64", 0.7, "tensor"),
    ((2, 1, 4, 4), "float32", 0.3, "float"), ((4, 2), "float64", 0.95, "tensor")])

SCORE_NOTE = ("the exact VE score of Gaussian data N(μ, diag(s²)): score_fn(x, sigma) = −(x − μ)/(s² + σ²), "
              "with sigma a float tensor (B,)")


def _level(value: float, kind: str, ctx: Context) -> tuple[Any, str]:
    """A noise level as the case's kind (a float or a float64 0-dim tensor), and its note."""
    if kind == "float":
        return float(value), f"{value!r} (a Python float)"
    return torch.tensor(value, dtype=F64, device=ctx.device), f"torch.tensor({value!r}, dtype=torch.float64)"


def build_step(case: dict, ctx: Context, second: str) -> Inputs:
    """x at noise level σ with per-sample scales in [0.3, 3] (so per-sample norms differ), z, the model; σ and ``second``
    (σ_next = ratio·σ for the predictor, snr for the corrector)."""
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = tuple(case["shape"]), DTYPES[case["dtype"]]
    mean, var = gaussian_params(shape[1:], g, 0.01, 4.0)
    scale = torch.exp(math.log(0.3) + math.log(10.0) * torch.rand(shape[0], generator=g, dtype=F64))
    x = mean + (var + case["sigma"] ** 2).sqrt() * scale.reshape(-1, *([1] * (len(shape) - 1))) * torch.randn(
        shape, generator=g, dtype=F64)
    noise = torch.randn(shape, generator=g, dtype=F64)
    (sigma, sigma_note), notes = _level(case["sigma"], case["sigma_type"], ctx), {"score_fn": SCORE_NOTE}
    if second == "sigma_next":
        value, notes["sigma_next"] = _level(case["ratio"] * case["sigma"], case["sigma_type"], ctx)
    else:
        value = case["snr"]
    return Inputs({"score_fn": ctx.model_spec("gaussian_score_ve", dtype=dtype, mean=mean, var=var),
                   "x": x.to(dtype).to(ctx.device), "sigma": sigma, second: value},
                  {"noise": noise.to(dtype).to(ctx.device)}, notes={**notes, "sigma": sigma_note})


def build_predictor(case: dict, ctx: Context) -> Inputs:
    return build_step(case, ctx, "sigma_next")


def build_corrector(case: dict, ctx: Context) -> Inputs:
    return build_step(case, ctx, "snr")


def _batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=F64, device=x.device).to(x.dtype).expand(x.shape[0])


def _predictor_with(*, g2=lambda s, n: s**2 - n**2, level=lambda s, n: s, scale=lambda g2: g2.sqrt()):
    """The predictor with one known mistake: ``g2(σ, σ_next)``, the score's ``level(σ, σ_next)``, the noise's ``scale(g²)``."""

    def wrong(score_fn, x, sigma, sigma_next, noise):
        s, n = (torch.as_tensor(v, dtype=F64, device=x.device) for v in (sigma, sigma_next))
        x_mean = x + g2(s, n) * score_fn(x, _batch_sigma(level(s, n), x))
        return x_mean + scale(g2(s, n)) * noise, x_mean

    return wrong


def _corrector_with(*, factor=2.0, noise_factor=2.0, norms="per-sample"):
    def wrong(score_fn, x, sigma, snr, noise):
        score = score_fn(x, _batch_sigma(sigma, x))
        if norms == "per-sample":
            step = factor * (snr * laws.per_sample_norm(noise).mean() / laws.per_sample_norm(score).mean()) ** 2
        elif norms == "whole-batch":
            step = factor * (snr * torch.linalg.vector_norm(noise) / torch.linalg.vector_norm(score)) ** 2
        else:  # one step per sample
            step = (factor * (snr * laws.per_sample_norm(noise) / laws.per_sample_norm(score)) ** 2).reshape(
                -1, *([1] * (x.ndim - 1)))
        x_mean = x + step * score
        return x_mean + (noise_factor * step).sqrt() * noise, x_mean

    return wrong


#: What the two single-step checks share.
STEP = {"cases": step_cases(), "examples": STEP_EXAMPLES, "tolerance": STEP_TOLERANCE, "outputs": ("x", "x_mean"),
        "dtype_from": "x", "device_from": "x", "points": 3, "dtype_points": 1}

PREDICTOR_DIAGNOSES = (
    Diagnosis(_predictor_with(g2=lambda s, n: s**2), "your step uses σ² where the VE SDE's variance increment "
              "g² = σ² − σ_next² belongs: the predictor moves from σ to σ_next, removing only the noise between the "
              "two levels"),
    Diagnosis(_predictor_with(level=lambda s, n: n), "your score is evaluated at σ_next; the sample x is at level σ, "
              "so the score must be s(x, σ)"),
    Diagnosis(_predictor_with(scale=lambda g2: g2), "your noise is scaled by g² = σ² − σ_next², a variance; scale it "
              "by its square root √(σ² − σ_next²)"),
    Diagnosis(_predictor_with(g2=lambda s, n: s - n), "you used σ − σ_next where the variance difference σ² − σ_next² "
              "belongs"),
    Diagnosis(swapped(ref.reverse_diffusion_predictor), "your result is (x_mean, x): return (x, x_mean), the noisy "
              "sample first"),
)

CORRECTOR_DIAGNOSES = (
    Diagnosis(_corrector_with(factor=1.0),
              "your step size is (snr·‖z‖/‖s‖)²: score_sde's Langevin corrector uses ε = 2·(snr·‖z‖/‖s‖)²"),
    Diagnosis(_corrector_with(noise_factor=1.0), "your noise is scaled by √ε; a Langevin step x + ε·s + √(2ε)·z needs "
              "√(2ε)"),
    Diagnosis(_corrector_with(norms="whole-batch"), "your norms are taken over the whole batch at once; take one norm "
              "per sample (over its non-batch dimensions) and average those over the batch"),
    Diagnosis(_corrector_with(norms="each"), "your step size is computed per sample; score_sde averages the "
              "per-sample norms over the batch and uses one ε for the whole batch"),
    Diagnosis(swapped(ref.langevin_corrector), "your result is (x_mean, x): return (x, x_mean), the noisy sample "
              "first"),
)

# -- the samplers' structure: shape, dtype, device, generator, score calls --------------------


@st.composite
def sampler_cases(draw: Any) -> dict:
    return {"shape": draw(data_shapes), "dtype": draw(dtypes), "steps": draw(st.integers(0, 4)),
            "levels": draw(st.integers(1, 4)), "n_corrector": draw(st.integers(0, 2)), "seed": draw(seeds)}


SAMPLER_EXAMPLES = (
    {"shape": (4, 3), "dtype": "float32", "steps": 3, "levels": 3, "n_corrector": 1, "seed": 0},
    {"shape": (1, 2), "dtype": "float64", "steps": 1, "levels": 1, "n_corrector": 0, "seed": 1},
    {"shape": (2, 1, 4, 4), "dtype": "float64", "steps": 2, "levels": 2, "n_corrector": 2, "seed": 2},
    {"shape": (3,), "dtype": "float32", "steps": 0, "levels": 4, "n_corrector": 1, "seed": 3},
)


def _sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    return ref.ve_sigmas(sigma_min, sigma_max, n)


def build_structure(case: dict, ctx: Context, function: str) -> Inputs:
    """A sampler's call on Gaussian data N(μ, diag(s²)) over the case's shape, with a recording score model.

    ``meta["blocks"]`` holds the expected evaluations of one run, ``(σ or None, rows)``.
    """
    g = torch.Generator().manual_seed(case["seed"])
    mean, var = gaussian_params(tuple(case["shape"])[1:], g, 0.05, 2.0)
    dtype = torch.get_default_dtype() if function == "pc_sample" else DTYPES[case["dtype"]]
    model = ctx.model_spec("gaussian_score" if function == "langevin_dynamics" else "gaussian_score_ve", record=True,
                           dtype=dtype, mean=mean, var=var)
    kwargs, rows = {"generator": ctx.generator_spec(seed=case["seed"] + 1)}, case["shape"][0]
    if function == "langevin_dynamics":
        x = (mean + 2 * var.sqrt() * torch.randn(tuple(case["shape"]), generator=g, dtype=F64)).to(dtype)
        return Inputs({"score_fn": model, "x": x.to(ctx.device), "step_size": 0.01, "n_steps": case["steps"]}, kwargs,
                      notes={"score_fn": "the score of Gaussian data N(μ, diag(s²)): score_fn(x) = −(x − μ)/s²"},
                      meta={"blocks": [(None, case["steps"] * rows)]})
    if function == "annealed_langevin_dynamics":
        sigmas, steps = _sigmas(0.1, 2.0, case["levels"]), max(1, case["steps"])
        x = (2.0 * torch.randn(tuple(case["shape"]), generator=g, dtype=F64)).to(dtype).to(ctx.device)
        return Inputs({"score_fn": model, "x": x, "sigmas": sigmas.to(ctx.device), "step_lr": 2e-3,
                       "n_steps_each": steps}, kwargs,
                      notes={"score_fn": SCORE_NOTE, "sigmas": f"ve_sigmas(0.1, 2.0, {case['levels']}) (float64)"},
                      meta={"blocks": [(float(s), steps * rows) for s in sigmas]})
    sigmas = _sigmas(0.05, 5.0, case["levels"])
    return Inputs({"score_fn": model, "shape": tuple(case["shape"]), "sigmas": sigmas.to(ctx.device), "snr": 0.16,
                   "n_corrector": case["n_corrector"]}, kwargs,
                  notes={"score_fn": SCORE_NOTE, "sigmas": f"ve_sigmas(0.05, 5.0, {case['levels']}) (float64)"},
                  meta={"blocks": [(float(s), (case["n_corrector"] + 1) * rows) for s in sigmas], "dtype": dtype})


def _structure_check(function: str, shape, dtype, device, calls_what: str, calls_name: str) -> Property:
    """Form (gated by the score calls), reproducibility and score calls of a sampler, run twice by one probe."""
    same_seed = Reproducible(function)

    def build(case: dict, ctx: Context) -> Inputs:
        return build_structure(case, ctx, function)

    calls = ModelCalls(expected=lambda inputs: inputs.meta["blocks"], level="noise level", runs=same_seed.runs,
                       model="score_fn", what=lambda inputs: calls_what)
    return Property(
        function=function, cases=sampler_cases(), build=same_seed.build(build), probe=same_seed.probe,
        examples=SAMPLER_EXAMPLES, max_examples=12,
        aspects=(same_seed.form_aspect("returns samples of the right shape, dtype and device", shape=shape, dtype=dtype,
                                       device=device, finite=True, gated_by=(calls_name,)),
                 same_seed.aspect("draws its noise from `generator` (the same seed gives the same samples)"),
                 calls.aspect(calls_name)),
    )


def _x(attribute: str) -> Callable[[Inputs], Any]:
    return lambda inputs: getattr(inputs.args["x"], attribute)


#: Per sampler: the expected shape, dtype and device of its samples, what its score calls should be, the test's name.
STRUCTURE = {
    "langevin_dynamics": (_x("shape"), _x("dtype"), _x("device"), "langevin_dynamics should evaluate score_fn once "
                          "per step on every sample: n_steps × B rows", "evaluates score_fn once per step on the whole "
                          "batch"),
    "annealed_langevin_dynamics": (_x("shape"), _x("dtype"), _x("device"), "annealed_langevin_dynamics should "
                                   "evaluate score_fn n_steps_each times at each σ_i, from the first (largest) to the "
                                   "last, on the whole batch, with σ a (B,) tensor",
                                   "evaluates score_fn n_steps_each times at each σ_i, in order"),
    "pc_sample": (lambda i: i.args["shape"], lambda i: i.meta["dtype"], "generator", "pc_sample should evaluate "
                  "score_fn n_corrector + 1 times at each σ_i (the corrector steps, then the predictor), from the first "
                  "level to the last, on the whole batch, with σ a (B,) tensor",
                  "evaluates score_fn n_corrector + 1 times at each σ_i, in order"),
}


# -- laws on Gaussian data ----------------------------------------------------------------------

LAW_ALPHA = 1e-6
#: Mean and variance per call (both exact for N(0, 1) residuals), and the correlation between
#: the two halves of the last call's batch (a Chernoff bound).
LAW_BATTERY = Battery(per_call=("mean", "variance"), batch=-1)
LAW = {"battery": LAW_BATTERY, "tag": "law", "alpha": LAW_ALPHA, "points": 3}


def _law_derivation(tests: int, what: str) -> str:
    return (f"{tests} tests at {LAW_ALPHA / tests:.1g} each (Bonferroni): {what}; the pooled mean z and the χ² of the "
            "variance are exact for i.i.d. N(0, 1) residuals, the correlation test is a Chernoff bound")


def _law_data(d: int, var_range: tuple, mean_range: tuple, roll: int) -> GaussianData:
    """Gaussian data over d coordinates, s² log-spaced over ``var_range``, means spaced over ``mean_range`` and rolled.

    The parameters are exactly representable in float32: the student's model is built from
    float32 parameters and the laws are computed in float64 from the very same numbers.
    """
    var = torch.exp(torch.linspace(math.log(var_range[0]), math.log(var_range[1]), d, dtype=F64))
    mean = torch.linspace(*mean_range, d, dtype=F64).roll(roll)
    return GaussianData(mean.to(torch.float32).to(F64), var.to(torch.float32).to(F64))


def _model(kind: str, data: GaussianData, ctx: Context) -> dict:
    return ctx.model_spec(kind, dtype=torch.float32, mean=data.mean, var=data.var)


def _inputs(args: dict, ctx: Context, tag: tuple, notes: dict) -> Inputs:
    """A law check's call: ``args``, and a generator seeded from the grading seed and ``tag``."""
    return Inputs(args, {"generator": ctx.generator_spec(*tag)}, notes=notes)


# langevin_dynamics: Gaussian target with 64 coordinates, variances log-spaced over 0.02…2,
# started from fixed points 2 standard deviations out; α = 0.02 makes ρ = 1 − α/(2v) range
# from 0.5 (tiny variance: the drift dominates) to 0.995. n = 1 and n = 5 steps.
LANGEVIN_B, LANGEVIN_D, LANGEVIN_STEP = 512, 64, 0.02
LANGEVIN_N_STEPS = (1, 5)


def _langevin_target() -> GaussianData:
    return _law_data(LANGEVIN_D, (0.02, 2.0), (-2.0, 2.0), 7)


def langevin_draw(ctx: Context) -> LawDraw:
    """langevin_dynamics from fixed starts, n = 1 and n = 5 steps, against the exact law of n Langevin steps."""
    target = _langevin_target()
    z = torch.randn((LANGEVIN_B, LANGEVIN_D), generator=ctx.generator("langevin law"), dtype=F64)
    x32 = (target.mean + 2 * target.var.sqrt() * z).to(torch.float32)
    start = laws.point_law(x32.double())
    notes = {"score_fn": "the score of N(μ, diag(s²)), s² from 0.02 to 2 over 64 coordinates",
             "x": f"float32 ({LANGEVIN_B}, {LANGEVIN_D}): fixed starts, μ + 2s·z"}
    samples = [Sample(_inputs({"score_fn": _model("gaussian_score", target, ctx), "x": x32.to(ctx.device),
                               "step_size": LANGEVIN_STEP, "n_steps": n}, ctx, ("langevin law", n), notes),
                      laws.langevin_variant_law(target, start, LANGEVIN_STEP, n),
                      f"{n} step{'s' * (n > 1)}", "langevin_dynamics's result")
               for n in LANGEVIN_N_STEPS]
    return LawDraw(samples, meta={"start": start, "target": target})


def _langevin_mistakes(*mistakes) -> tuple[Diagnosis, ...]:
    """``(message, steps added, coefficients)``: the laws of langevin_dynamics with that mistake, for both calls."""
    return tuple(Diagnosis(lambda d, extra=extra, kw=kw: [laws.langevin_variant_law(
        d.meta["target"], d.meta["start"], LANGEVIN_STEP, n + extra, **kw) for n in LANGEVIN_N_STEPS], message)
        for message, extra, kw in mistakes)


LANGEVIN_MISTAKES = _langevin_mistakes(
    ("the score term is α·∇log p instead of (α/2)·∇log p", 0, {"score_coef": 1.0}),
    ("the noise is α·z instead of √α·z", 0, {"noise_coef": LANGEVIN_STEP}),
    ("the noise is √(2α)·z instead of √α·z", 0, {"noise_coef": math.sqrt(2 * LANGEVIN_STEP)}),
    ("no noise is added", 0, {"noise_coef": 0.0}),
    ("one step too few is made", -1, {}),
    ("one step too many is made", 1, {}),
)

# annealed_langevin_dynamics: Gaussian data with 64 coordinates, s² log-spaced over 1e-3…1 (tiny
# variances make the last levels' steps matter), 4 levels ve_sigmas(0.1, 2, 4), 3 steps each,
# step_lr = 0.5·σ_L² so that α_i/(s² + σ_i²) ≤ 0.5: every step moves the samples visibly.
ANNEALED_B, ANNEALED_D = 512, 64
ANNEALED_SIGMAS = (0.1, 2.0, 4)
ANNEALED_STEPS = 3
ANNEALED_LR = 0.5 * ANNEALED_SIGMAS[0] ** 2


def _annealed_data() -> GaussianData:
    return _law_data(ANNEALED_D, (1e-3, 1.0), (-1.0, 1.0), 11)


def annealed_draw(ctx: Context) -> LawDraw:
    """annealed_langevin_dynamics from fixed starts σ_0·z against annealed_langevin_law."""
    data, sigmas = _annealed_data(), _sigmas(*ANNEALED_SIGMAS)
    x32 = (sigmas[0] * torch.randn((ANNEALED_B, ANNEALED_D), generator=ctx.generator("annealed law"),
                                   dtype=F64)).to(torch.float32)
    inputs = _inputs({"score_fn": _model("gaussian_score_ve", data, ctx), "x": x32.to(ctx.device),
                      "sigmas": sigmas.to(ctx.device), "step_lr": ANNEALED_LR, "n_steps_each": ANNEALED_STEPS},
                     ctx, ("annealed law",),
                     {"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 1e-3 to 1 over 64 coordinates",
                      "x": f"float32 ({ANNEALED_B}, {ANNEALED_D}): fixed starts σ_0·z",
                      "sigmas": "ve_sigmas(0.1, 2.0, 4) (float64)"})
    start = laws.point_law(x32.double())
    law = laws.annealed_langevin_law(data, start, sigmas, ANNEALED_LR, ANNEALED_STEPS)
    return LawDraw([Sample(inputs, law, f"{ANNEALED_SIGMAS[2]} levels × {ANNEALED_STEPS} steps")],
                   meta={"start": start, "data": data, "sigmas": sigmas})


def _annealed_mistakes(*mistakes) -> tuple[Diagnosis, ...]:
    """``(message, variant)``: the law of annealed Langevin with that mistake (``laws.annealed_langevin_variant_law``)."""
    return tuple(Diagnosis(lambda d, kw=kw: [laws.annealed_langevin_variant_law(
        d.meta["data"], d.meta["start"], d.meta["sigmas"], ANNEALED_LR, ANNEALED_STEPS, **kw)], message)
        for message, kw in mistakes)


ANNEALED_MISTAKES = _annealed_mistakes(
    ("α_i = step_lr·σ_i/σ_L: the ratio must be squared", {"ratio": lambda s, first, last: s / last}),
    ("α_i = step_lr·(σ_i/σ_0)²: divide by the last (smallest) σ, so that the last level's step is step_lr",
     {"ratio": lambda s, first, last: (s / first) ** 2}),
    ("α_i = step_lr at every level (the step must scale with σ_i²)", {"ratio": lambda s, first, last: 1.0}),
    ("the score term is α·s instead of (α/2)·s", {"score_coef": 1.0}),
    ("the noise is α·z instead of √α·z", {"noise": lambda a: a}),
    ("each step is x + ε·s + √(2ε)·z with ε = step_lr·(σ_i/σ_L)², the authors' code's convention: in the paper's "
     "(this course's), α_i = step_lr·(σ_i/σ_L)² and the step is x + (α_i/2)·s + √α_i·z",
     {"score_coef": 1.0, "noise": lambda a: math.sqrt(2 * a)}),
    ("the levels run in ascending order", {"ascending": True}),
)

# pc_sample without corrector: Gaussian data with 64 coordinates, s² log-spaced over 1e-6…4, 6 levels
# ve_sigmas(0.01, 10, 6). Where s² ≪ σ_L² = 1e-4 the noise-free last step shrinks x − μ by
# s²/(s² + σ_L²): the output's variance there is ~1e-7, so any noise left on the last step (σ_L² =
# 1e-4) multiplies the mean of r² by ~30, and the coarse levels make g² = σ_i² − σ_{i+1}² errors show.
PC_B, PC_D = 512, 64
PC_SIGMAS = (0.01, 10.0, 6)


def _pc_data() -> GaussianData:
    return _law_data(PC_D, (1e-6, 4.0), (-1.0, 1.0), 5)


def pc_draw(ctx: Context) -> LawDraw:
    """pc_sample(n_corrector=0) against pc_sample_law."""
    data, sigmas = _pc_data(), _sigmas(*PC_SIGMAS)
    inputs = _inputs({"score_fn": _model("gaussian_score_ve", data, ctx), "shape": (PC_B, PC_D),
                      "sigmas": sigmas.to(ctx.device), "snr": 0.16, "n_corrector": 0}, ctx, ("pc law",),
                     {"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 1e-6 to 4 over 64 coordinates",
                      "sigmas": "ve_sigmas(0.01, 10.0, 6) (float64)"})
    return LawDraw([Sample(inputs, laws.pc_sample_law(data, sigmas), "no corrector", shape=(PC_B, PC_D))],
                   meta={"data": data, "sigmas": sigmas})


PC_MISTAKES = tuple(Diagnosis(lambda d, kw=kw: [laws.pc_sample_variant_law(d.meta["data"], d.meta["sigmas"], **kw)],
                              message) for message, kw in (
    ("the last predictor step adds noise: return its x_mean", {"noisy_end": True}),
    ("each predictor step uses σ_i² instead of σ_i² − σ_{i+1}²", {"g2_of": lambda s, n: s**2}),
    ("the score is evaluated at σ_{i+1} instead of σ_i", {"score_level": lambda s, n: n}),
    ("the start is z instead of σ_0·z", {"start_var": 1.0}),
    ("the chain continues from x_mean (no noise at any step)", {"noiseless": True}),
))


# -- pc_sample with correctors: the chain's transitions, recovered from the score calls -------

PC_TRACE_B, PC_TRACE_D = 256, 32
PC_TRACE_SIGMAS = (0.05, 5.0, 5)
PC_TRACE_SNR = 0.2  # not the default 0.16, so that a pc_sample ignoring snr shows
PC_TRACE_CORRECTORS = 2
TRACED = Traced("pc_sample", model=0)


def _final_step_hint(got: torch.Tensor, last: torch.Tensor, score_last: torch.Tensor, sigma_last: float,
                     expected: torch.Tensor) -> str:
    """Name the mistake when pc_sample's result is a corrector's x_mean or a noisy predictor step."""
    if tuple(got.shape) != tuple(last.shape) or not bool(torch.isfinite(got).all()):
        return ""
    got = got.detach().to("cpu", F64)
    move = got - last  # along s(x, σ_L) with another ε: a corrector step; ≈ σ_L·N(0, 1) off x_mean: a noisy predictor
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
    data, sigmas = _law_data(PC_TRACE_D, (0.01, 1.0), (-1.0, 1.0), 3), _sigmas(*PC_TRACE_SIGMAS)
    inputs = _inputs({"score_fn": _model("gaussian_score_ve", data, ctx), "shape": (PC_TRACE_B, PC_TRACE_D),
                      "sigmas": sigmas.to(ctx.device), "snr": PC_TRACE_SNR, "n_corrector": PC_TRACE_CORRECTORS},
                     ctx, ("pc transitions",),
                     {"score_fn": "the exact VE score of N(μ, diag(s²)), s² from 0.01 to 1 over 32 coordinates",
                      "sigmas": "ve_sigmas(0.05, 5.0, 5) (float64)"})
    outcome = ctx.call("pc_sample", [TRACED.inputs(inputs)], probe=TRACED.probe, tag="transitions")[0]
    out, states, levels = TRACED.states(value_of(outcome), PC_TRACE_B, shape=(PC_TRACE_B, PC_TRACE_D))
    expected = [float(s) for s in sigmas for _ in range(PC_TRACE_CORRECTORS + 1)]
    if len(states) != len(expected) or not all(abs(a - b) <= 1e-5 * max(abs(a), abs(b)) for a, b in zip(levels, expected)):
        raise Mismatch(f"with n_corrector = {PC_TRACE_CORRECTORS} and {len(sigmas)} levels, pc_sample should evaluate "
                       f"the score {len(expected)} times on the whole batch ({PC_TRACE_CORRECTORS + 1} times at each "
                       f"σ_i: each corrector step, then the predictor); it did {len(states)} times (see the test of "
                       "pc_sample's score calls)")
    try:
        noises, kinds = laws.pc_transition_noises(data, states, sigmas, PC_TRACE_CORRECTORS, PC_TRACE_SNR)
    except ValueError as exc:
        raise Mismatch(f"pc_sample: {exc}") from None

    last, sigma_last = states[-1], float(sigmas[-1])
    score_last = data.score(last, torch.ones((), dtype=F64), torch.tensor(sigma_last, dtype=F64) ** 2)
    expected_out = last + sigma_last**2 * score_last
    got = as_tensor(out, "pc_sample's result")
    try:
        compare(got, expected_out, STEP_TOLERANCE, "pc_sample's result")  # one step's float32 round-off, values ≤ ~10
    except Mismatch as exc:
        hint = _final_step_hint(got, last, score_last, sigma_last, expected_out)
        raise Mismatch(f"{exc}\nThe result must be the last predictor's x_mean = x + σ_L²·s(x, σ_L) of the last "
                       f"state x the score was evaluated at: the final step to σ = 0 adds no noise.{hint}",
                       **exc.details) from None
    corrector, predictor = (torch.stack([z for z, kind in zip(noises, kinds) if (kind == "corrector") == is_corrector])
                            for is_corrector in (True, False))
    pairs, a = len(noises) // 2, alpha / 5
    statistics = [test(z, a, f"{name} ({what} noises)") for what, z in (("corrector", corrector),
                                                                        ("start and predictor", predictor))
                  for test, name in ((mean_z, "z of the mean"), (variance_chi2, "mean of z²"))]
    statistics.append(product_z(torch.stack(noises[0: 2 * pairs: 2]), torch.stack(noises[1: 2 * pairs: 2]), a,
                                "correlation between consecutive steps' noises"))
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
#: Samples per grading. A sampler that ignores the weights (≈ 1/3 in each mode) is off by 0.27 in
#: the heaviest mode: 15 binomial standard deviations beyond the band, caught on every seed.
MIXTURE_N = 1000
#: Allowance for the discretisation: with finitely many levels and steps, mass stops moving between
#: modes once they separate (and ULA inflates each mode), pulling the weights towards uniform. The
#: reference's weights here, measured on 400,000 samples, are (0.590, 0.304, 0.107) (standard error
#: ≤ 0.0008), ≤ 0.011 from the mixture's (tests/exercises/test_langevin_checks.py measures it again).
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
    mixture, sigmas = _mixture(), _sigmas(*MIXTURE_SIGMAS)
    x32 = (sigmas[0] * torch.randn((MIXTURE_N, 2), generator=ctx.generator("annealed modes"), dtype=F64)).float()
    model = ctx.model_spec("mixture_score_ve", dtype=torch.float32, weights=mixture.weights, means=mixture.means,
                           vars=mixture.vars)
    inputs = _inputs({"score_fn": model, "x": x32.to(ctx.device), "sigmas": sigmas.to(ctx.device),
                      "step_lr": MIXTURE_LR, "n_steps_each": MIXTURE_STEPS}, ctx, ("annealed modes",),
                     {"score_fn": "the exact VE score of a mixture of 3 Gaussians N(m_k, 0.25²·I) in 2-D, weights "
                                  "0.6, 0.3, 0.1, means on a circle of radius 1.5",
                      "x": f"float32 ({MIXTURE_N}, 2): starts σ_0·z", "sigmas": "ve_sigmas(0.05, 3.0, 20) (float64)",
                      "step_lr": f"{MIXTURE_LR:g} (0.5·σ_L²)"})
    value = value_of(ctx.call("annealed_langevin_dynamics", [inputs], tag="modes")[0])
    samples = as_tensor(value, "annealed_langevin_dynamics's result", shape=(MIXTURE_N, 2), finite=True)
    counts = mode_counts(samples, mixture)
    statistics = [binomial_band_test(int(counts[i]), MIXTURE_N, w, MIXTURE_DELTA, alpha / len(MIXTURE_WEIGHTS),
                                     f"samples in mode {i + 1} (weight {w})") for i, w in enumerate(MIXTURE_WEIGHTS)]
    note = (f"Fractions of samples nearest to each mode: {', '.join(f'{int(c) / MIXTURE_N:.3f}' for c in counts)}; the "
            f"mixture's weights are {', '.join(map(str, MIXTURE_WEIGHTS))} (accepted: within ±{MIXTURE_DELTA}).")
    return StatReport(statistics, None, inputs, note=note)


MIXTURE_DERIVATION = (
    f"one exact two-sided binomial test per mode at {LAW_ALPHA / 3:.1g} (Bonferroni over 3 modes), at the ends of "
    f"the band ±{MIXTURE_DELTA} around each weight, which holds for any sampler whose mode weights lie in the band; "
    "the discretised reference's weights are within 0.011 of the mixture's (measured on 400,000 samples)"
)

# -- the exercise ------------------------------------------------------------------------------

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
            function="ve_sigmas", cases=sigma_cases, reference=ref.ve_sigmas, tolerance=SIGMAS_TOLERANCE,
            build=lambda case, ctx: Inputs({"sigma_min": case["sigma_min"], "sigma_max": case["sigma_max"],
                                            "n": case["n"]}),
            dtype_from=F64, points=2, dtype_points=1, diagnoses=SIGMAS_DIAGNOSES,
            examples=({"sigma_min": 0.01, "sigma_max": 50.0, "n": 10}, {"sigma_min": 0.01, "sigma_max": 1.0, "n": 2},
                      {"sigma_min": 0.01, "sigma_max": 348.0, "n": 1000}),
        ),
        Agreement(function="reverse_diffusion_predictor", build=build_predictor, reference=ref.reverse_diffusion_predictor,
                  diagnoses=PREDICTOR_DIAGNOSES, **STEP),
        Agreement(function="langevin_corrector", build=build_corrector, reference=ref.langevin_corrector,
                  diagnoses=CORRECTOR_DIAGNOSES, **STEP),
        _structure_check("langevin_dynamics", *STRUCTURE["langevin_dynamics"]),
        Law(function="langevin_dynamics", name="from fixed starts, the output follows the exact law of n Langevin steps",
            draw=langevin_draw, mistakes=LANGEVIN_MISTAKES, **LAW,
            derivation=_law_derivation(5, f"mean and variance after 1 and after 5 steps ({LANGEVIN_B}×{LANGEVIN_D} "
                                          "scalars each), correlation between batch elements")),
        _structure_check("annealed_langevin_dynamics", *STRUCTURE["annealed_langevin_dynamics"]),
        Law(function="annealed_langevin_dynamics",
            name="on Gaussian data, the output follows the exact law of the annealed chain",
            draw=annealed_draw, mistakes=ANNEALED_MISTAKES, **LAW,
            derivation=_law_derivation(3, f"mean, variance ({ANNEALED_B}×{ANNEALED_D} scalars), correlation "
                                          "between batch elements")),
        Statistical(function="annealed_langevin_dynamics", procedure=annealed_modes, alpha=LAW_ALPHA, points=2,
                    name="on a Gaussian mixture, the samples reach every mode with its weight",
                    derivation=MIXTURE_DERIVATION),
        _structure_check("pc_sample", *STRUCTURE["pc_sample"]),
        Law(function="pc_sample", name="without corrector, the output follows the exact law of the predictor chain",
            draw=pc_draw, mistakes=PC_MISTAKES, **LAW,
            derivation=_law_derivation(3, f"mean, variance ({PC_B}×{PC_D} scalars), correlation between batch "
                                          "elements")),
        Statistical(
            function="pc_sample", name="with correctors, every step's noise is N(0, 1) and the last step is noise-free",
            procedure=pc_transitions, alpha=LAW_ALPHA, points=3, derivation=("5 tests at 2e-7 each (Bonferroni) on the noises recovered from every transition "
                        f"({PC_TRACE_B}×{PC_TRACE_D} scalars per step, 5 levels × 3 steps): mean and χ² of the "
                        "variance of the corrector noises and of the start and predictor noises are exact for "
                        "i.i.d. N(0, 1) draws; the correlation between consecutive steps' noises is a Chernoff bound"),
        ),
    ),
)
