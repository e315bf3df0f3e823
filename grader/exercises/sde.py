"""Checks of exercise 10, sde: the VP SDE, denoising score matching, the reverse SDE and the probability-flow ODE.

Point budget (34): vp_beta 3; vp_marginal 4; dsm_loss 8 (values 3, dtype 1, the closed-form minimum 2, linear
scores rank above the true one 2); reverse_sde_step 4; probability_flow_step 4; sde_sample 11 (the ODE from x_T
3 + dtype 1 + score calls 1, the generator, the default dtype and the score calls without x_T 1 + 1 + 1, the SDE's
law 2, the ODE's law 1).

How each function is checked: the t-only functions and the steps (noise injected) by :class:`Agreement` with the
reference in float64 on hypothesis-drawn shapes, dtypes, times and β ranges, with the exact VP score of Gaussian
data (``reference.toy``, model kind ``gaussian_score_vp``), tolerances relative to the size of each formula's terms.
``sde_sample(probability_flow=True)`` from a given x_T is deterministic and compared with the reference, with its
score calls (n_steps, at linspace(1, eps, n_steps) in that order). With x_T drawn, the reverse SDE's and the ODE's
samples are tested against the exact laws of the discretised samplers on Gaussian data (every step is affine:
``reference.laws.sde_sample_law``), naming a known mistake whose law they follow. ``dsm_loss`` with its own noise:
under the exact score the loss is ½ Σ c_i·χ²₁ with c = 1 − σ²/v (``laws.dsm_loss_weights``), whose mean is the
closed-form minimum; with the same draws, λ·s* (λ = 0.8, 1.25) must score higher by the exact Chernoff margin of
``laws.dsm_scale_gap_threshold``.

Statistical checks (4) at level 1e-6 each: a correct submission fails one with probability at most 4e-6 (Bonferroni).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from grader.checks import (Agreement, Context, Diagnosis, Inputs, Law, LawDraw, ModelCalls, Property, Reproducible,
                           Sample, StatReport, Statistical, Tolerance, as_tensor, swapped, value_of)
from grader.exercises import Exercise
from grader.exercises._common import DTYPES, SAMPLER_LAW, data_shapes, dtypes, gaussian_params, seeds
from grader.stats import Statistic
from reference import laws
from reference import sde as ref
from reference.toy import GaussianData

F64 = torch.float64

#: (β_min, β_max): score_sde's VP defaults, and two others so that a hard-coded 0.1 or 20 shows.
BETAS = ((0.1, 20.0), (0.05, 10.0), (1.0, 5.0))
#: Times in [1e-3, 1]: the sampler's range (eps = 1e-3), where 1 − mean_coef² ≥ 5e-5.
TIMES = (1e-3, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0)

# -- tolerances --------------------------------------------------------------------------------

#: β(t) = β_min + t(β_max − β_min): ≤ 2 roundings of values ≤ 20 (≤ 2.4e-6 absolute in float32, also when
#: written t·β_max − t·β_min + β_min); 1e-5 leaves 4x, and the bugs move β by ≥ 1e-4 relative (float64: 1e-12).
BETA_TOLERANCE = Tolerance(rtol32=1e-5, atol32=1e-5, rtol64=1e-12, atol64=1e-12,
                           why="two float32 roundings of values up to 20")
#: std = √(1 − m²) in float32 at t = 1e-3 with β_min = 0.05: 1 − m² ≈ 5e-5, m's own rounding (u = 6e-8) is
#: 2.4e-3 relative of it, 1.2e-3 of std; 3e-3 relative leaves 2.5x. The expm1 form is exact to a few u. float64
#: stays strict (u/(1 − m²) ≈ 2e-12), so a wrong coefficient (¼ read as ½: 5e-6 relative at t = 1e-3) is caught.
MARGINAL_TOLERANCE = Tolerance(rtol32=3e-3, atol32=1e-7, rtol64=1e-9, atol64=1e-12,
                               why="√(1 − mean_coef²) in float32 loses u/(1 − mean_coef²) relative near t = 1e-3")
#: dsm_loss relative to T = ½ Σ (|σs| + |z|)², the size of its terms: the residual σs + z cancels, each entry of it
#: is accurate to ~4u·(|σs| + |z|) plus std's own float32 error (≤ 1.2e-3 relative, see MARGINAL_TOLERANCE), which
#: moves σs and x_t (hence s) by ≤ 1.2e-3·(|σs| + |z|); squared and summed, ≤ 2.5e-3·T. 5e-3·T leaves 2x; the
#: catalogued bugs change the loss by ≥ 1e-2·T (float64: 1e-9·T).
DSM_TOLERANCE = Tolerance(rtol32=5e-3, atol32=1e-6, rtol64=1e-9, atol64=1e-12,
                          why="relative to ½Σ(|σs| + |z|)²: the residual cancels, float32 std loses ~1e-3 near t = 1e-3")
#: One step relative to M = |x| + (½β|x| + β·(|x| + a|μ|)/v)·dt + √(β·dt)·|z|, the size of its terms and of the
#: score's own terms (s = −(x − aμ)/v can cancel): ≤ ~10 roundings of terms of M, ≤ 6e-7·M in float32; 1e-4·M
#: leaves 150x for other groupings (score_sde's −dt form, float64 inside). float64: 1e-10·M.
STEP_TOLERANCE = Tolerance(rtol32=1e-4, atol32=1e-7, rtol64=1e-10, atol64=1e-12,
                           why="a few float32 operations relative to the size of the step's and the score's terms")
#: The ODE from x_T over ≤ 12 steps: each step's round-off (STEP_TOLERANCE's analysis) is carried by the later
#: steps' slopes 1 + ½β·dt·(1 − 1/v) ≤ e^{½∫β} ≤ 150 at most; measured (tests/exercises/test_sde_checks.py, 300
#: float32 cases) the float32 reference and the float64-inside sampler use ≤ 0.1% of 1e-3 relative + 1e-3 absolute,
#: the catalogued samplers' errors are ≥ 1e-2. float64: 1e-9. (Steps and dsm_loss measured alike: ≤ 0.2% and ≤ 3.2%.)
CHAIN_TOLERANCE = Tolerance(rtol32=1e-3, atol32=1e-3, rtol64=1e-9, atol64=1e-9,
                            why="≤ 12 float32 steps, each step's round-off carried by the later steps' slopes")

# -- vp_beta, vp_marginal --------------------------------------------------------------------------


@st.composite
def time_cases(draw: Any) -> dict:
    batch = draw(st.integers(1, 6))
    return {"t": tuple(draw(st.one_of(st.sampled_from(TIMES), st.floats(1e-3, 1.0))) for _ in range(batch)),
            "betas": draw(st.sampled_from(BETAS)), "dtype": draw(dtypes)}


TIME_EXAMPLES = tuple({"t": TIMES, "betas": b, "dtype": d} for b in BETAS for d in ("float64", "float32"))


def build_time(case: dict, ctx: Context) -> Inputs:
    t = torch.tensor(case["t"], dtype=F64).to(DTYPES[case["dtype"]]).to(ctx.device)
    return Inputs({"t": t}, {"beta_min": case["betas"][0], "beta_max": case["betas"][1]})


BETA_DIAGNOSES = (
    Diagnosis(lambda t, beta_min=0.1, beta_max=20.0: ref.vp_beta(t, beta_min, beta_max) / 1000,
              "your β(t) is on the scale of DDPM's β_t = β(t)/T (T = 1000): the SDE's β(t) is a rate, β_min + "
              "t·(β_max − β_min), from 0.1 to 20"),
    Diagnosis(lambda t, beta_min=0.1, beta_max=20.0: beta_min + t * beta_max,
              "your β(t) is β_min + t·β_max: it must reach β_max at t = 1, β_min + t·(β_max − β_min)"),
    Diagnosis(lambda t, beta_min=0.1, beta_max=20.0: ref.vp_beta(t, 0.1, 20.0),
              "your β(t) ignores beta_min and beta_max (the defaults 0.1 and 20 are hard-coded)"),
)


def _marginal_with(power: float = 1.0, quarter: float = 0.25, std_power: float = 0.5):
    def wrong(t, beta_min=0.1, beta_max=20.0):
        log_mean = (-quarter * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min) * power
        mean = torch.exp(log_mean)
        return mean, (1 - torch.exp(2 * log_mean)) ** std_power

    return wrong


MARGINAL_DIAGNOSES = (
    Diagnosis(_marginal_with(std_power=1.0), "your std is 1 − mean_coef², the variance: take its square root"),
    Diagnosis(_marginal_with(power=2.0), "your mean_coef is exp(−∫₀ᵗβ) = ᾱ(t), the squared coefficient: "
              "log mean_coef = −½∫₀ᵗβ(s)ds = −¼t²(β_max − β_min) − ½tβ_min"),
    Diagnosis(_marginal_with(quarter=0.5), "your t² term is −½t²(β_max − β_min): ½∫₀ᵗβ(s)ds has −¼t²(β_max − β_min)"),
    Diagnosis(swapped(ref.vp_marginal), "your result is (std, mean_coef): return (mean_coef, std)"),
)

# -- the model, the steps, dsm_loss ---------------------------------------------------------------

SCORE_NOTE = ("the exact VP-SDE score of Gaussian data N(μ, diag(s²)): score_fn(x, t) = −(x − a_t·μ)/(a_t²·s² + "
              "1 − a_t²), a_t = mean_coef(t), with t a float tensor (B,)")


def score_spec(ctx: Context, mean, var, dtype, betas, record: bool = False, scale: float = 1.0) -> dict:
    return ctx.model_spec("gaussian_score_vp", record=record, dtype=dtype, mean=mean, var=var, beta_min=betas[0],
                          beta_max=betas[1], scale=scale)


def _spec_score(a: dict):
    """The float64 exact score of the inputs' model spec, on the CPU, and its data."""
    p = a["score_fn"]["params"]
    data = GaussianData(p["mean"].to("cpu", F64), p["var"].to("cpu", F64))
    return data.vp_score_fn(p["beta_min"], p["beta_max"], p.get("scale", 1.0)), data, (p["beta_min"], p["beta_max"])


@st.composite
def step_cases(draw: Any) -> dict:
    shape = draw(data_shapes)
    return {"shape": shape, "dtype": draw(dtypes), "betas": draw(st.sampled_from(BETAS)),
            "t": tuple(draw(st.sampled_from(TIMES)) for _ in range(shape[0])),
            "dt": draw(st.sampled_from([1e-3, 0.01, 0.05, 0.2])), "scale": draw(st.sampled_from([1.0, 0.7, 1.3])),
            "seed": draw(seeds)}


#: A batch of 1, 1-D, 2-D and image-like data, every β range, t from 1e-3 to 1.
STEP_EXAMPLES = tuple({"shape": shape, "dtype": dtype, "betas": betas, "t": TIMES[:shape[0]] if shape[0] > 1 else (1.0,),
                       "dt": dt, "scale": 1.0, "seed": 0} for shape, dtype, betas, dt in (
    ((4, 3), "float64", BETAS[0], 0.05), ((1, 5), "float32", BETAS[1], 0.2), ((7, 2), "float64", BETAS[2], 1e-3),
    ((3, 1, 4, 4), "float32", BETAS[0], 0.01), ((7,), "float64", BETAS[0], 0.01), ((5, 3), "float32", BETAS[2], 0.05)))


def build_step(case: dict, ctx: Context, kind: str) -> Inputs:
    """x from the data's marginal at t (per sample), z, the exact score (times ``scale`` for dsm_loss's cases)."""
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype, betas = tuple(case["shape"]), DTYPES[case["dtype"]], case["betas"]
    mean, var = gaussian_params(shape[1:], g, 0.01, 2.0)
    t = torch.tensor(case["t"], dtype=F64).to(dtype).to(F64)  # the times the student gets, exactly
    x0 = mean + var.sqrt() * torch.randn(shape, generator=g, dtype=F64)
    noise = torch.randn(shape, generator=g, dtype=F64)
    a, s = ref.vp_marginal(t, *betas)
    view = (-1,) + (1,) * (len(shape) - 1)
    x = x0 if kind == "dsm" else a.reshape(view) * x0 + s.reshape(view) * torch.randn(shape, generator=g, dtype=F64)
    spec = score_spec(ctx, mean, var, dtype, betas, scale=case["scale"] if kind == "dsm" else 1.0)
    kwargs = {"beta_min": betas[0], "beta_max": betas[1]}
    notes = {"score_fn": SCORE_NOTE if kind != "dsm" or case["scale"] == 1.0 else
             f"{case['scale']} × " + SCORE_NOTE}
    args = {"score_fn": spec, ("x0" if kind == "dsm" else "x"): x.to(dtype).to(ctx.device),
            "t": t.to(dtype).to(ctx.device)}
    if kind != "dsm":
        args["dt"] = case["dt"]
    if kind != "flow":
        kwargs["noise"] = noise.to(dtype).to(ctx.device)
    return Inputs(args, kwargs, notes=notes)


def step_terms(inputs: Inputs) -> torch.Tensor:
    """M = |x| + (½β|x| + β·(|x| + a|μ|)/v)·dt + √(β·dt)·|z| (see STEP_TOLERANCE), from float64 inputs."""
    a_ = inputs.arguments()
    _, data, betas = _spec_score(a_)
    x, t, dt = a_["x"].to("cpu"), a_["t"].to("cpu"), a_["dt"]
    view = (-1,) + (1,) * (x.ndim - 1)
    beta = ref.vp_beta(t, *betas).reshape(view)
    a, s = (v.reshape(view) for v in ref.vp_marginal(t, *betas))
    v = a**2 * data.var + s**2
    size = x.abs() + (0.5 * beta * x.abs() + beta * (x.abs() + a * data.mean.abs()) / v) * dt
    if "noise" in a_:
        size = size + (beta * dt).sqrt() * a_["noise"].to("cpu").abs()
    return size


def dsm_terms(inputs: Inputs) -> torch.Tensor:
    """T = ½ Σ (|σ·s(x_t, t)| + |z|)² per sample (see DSM_TOLERANCE), from float64 inputs."""
    a_ = inputs.arguments()
    score, _, betas = _spec_score(a_)
    x0, t, z = a_["x0"].to("cpu"), a_["t"].to("cpu"), a_["noise"].to("cpu")
    view = (-1,) + (1,) * (x0.ndim - 1)
    m, s = (v.reshape(view) for v in ref.vp_marginal(t, *betas))
    return 0.5 * ((s * score(m * x0 + s * z, t)).abs() + z.abs()).pow(2).reshape(x0.shape[0], -1).sum(-1)


def _step_with(x_coef=0.5, score_coef=1.0, scale=lambda beta, dt: (beta * dt).sqrt(), flow=False):
    def wrong(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
        beta = ref.vp_beta(t, beta_min, beta_max).reshape(-1, *([1] * (x.ndim - 1)))
        x_mean = x + (x_coef * beta * x + score_coef * beta * score_fn(x, t)) * dt
        return x_mean if flow else (x_mean + scale(beta, torch.as_tensor(dt, dtype=x.dtype)) * noise, x_mean)

    return wrong


STEP_DIAGNOSES = (
    Diagnosis(_step_with(x_coef=-0.5), "your drift has −½β(t)·x, the forward SDE's: going back in time (t → t − dt) "
              "the step is x + (½β(t)·x + β(t)·s)·dt"),
    Diagnosis(_step_with(scale=lambda beta, dt: beta.sqrt() * dt), "your noise is √β(t)·dt·z: Brownian increments "
              "scale with √dt, so the noise is √(β(t)·dt)·z"),
    Diagnosis(_step_with(score_coef=0.5), "your score term is ½β(t)·s, the probability-flow ODE's: the reverse SDE's "
              "drift has the full β(t)·s (g² = β)"),
    Diagnosis(_step_with(scale=lambda beta, dt: beta * dt.sqrt()), "your noise is β(t)·√dt·z: g = √β(t)"),
    Diagnosis(swapped(ref.reverse_sde_step), "your result is (x_mean, x): return (x, x_mean), the noisy sample first"),
)
FLOW_DIAGNOSES = (
    Diagnosis(_step_with(flow=True), "your score term is β(t)·s: the probability-flow ODE's drift is "
              "f − ½g²·s, so the step is x + (½β(t)·x + ½β(t)·s)·dt"),
    Diagnosis(_step_with(x_coef=-0.5, score_coef=0.5, flow=True), "your drift has −½β(t)·x, the forward SDE's: back in "
              "time the step is x + (½β(t)·x + ½β(t)·s)·dt"),
    Diagnosis(_step_with(score_coef=-0.5, flow=True), "your score term has the wrong sign: x + (½β(t)·x + "
              "½β(t)·s)·dt"),
)


def _dsm_with(half=0.5, reduce="sum", sign=1.0):
    def wrong(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
        m, s = (v.reshape(-1, *([1] * (x0.ndim - 1))) for v in ref.vp_marginal(t, beta_min, beta_max))
        r = (s * score_fn(m * x0 + s * noise, t) + sign * noise).pow(2).reshape(x0.shape[0], -1)
        return half * (r.sum(-1) if reduce == "sum" else r.mean(-1))

    return wrong


DSM_DIAGNOSES = (
    Diagnosis(_dsm_with(half=1.0), "your loss has no ½: score_sde's per-sample loss is ½ Σ (σ·s + z)²"),
    Diagnosis(_dsm_with(reduce="mean"), "your loss averages over the dimensions: sum them (½ Σ over non-batch dims)"),
    Diagnosis(_dsm_with(sign=-1.0), "your residual is σ·s − z: the perturbation's score is −z/σ, so σ·s is regressed "
              "onto −z and the residual is σ·s + z"),
)

# -- sde_sample from x_T (the ODE), its score calls, its generator ------------------------------


@st.composite
def chain_cases(draw: Any) -> dict:
    return {"shape": draw(data_shapes), "dtype": draw(dtypes), "betas": draw(st.sampled_from(BETAS)),
            "n_steps": draw(st.integers(1, 12)), "eps": draw(st.sampled_from([1e-3, 1e-2])), "seed": draw(seeds)}


CHAIN_EXAMPLES = tuple({"shape": shape, "dtype": dtype, "betas": BETAS[0], "n_steps": n, "eps": 1e-3, "seed": 0}
                       for shape, dtype, n in (((4, 3), "float64", 10), ((4, 3), "float32", 10), ((1, 2), "float64", 1),
                                               ((2, 1, 4, 4), "float64", 3), ((3,), "float32", 2)))


def build_chain(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = tuple(case["shape"]), DTYPES[case["dtype"]]
    mean, var = gaussian_params(shape[1:], g, 0.01, 2.0)
    x_T = torch.randn(shape, generator=g, dtype=F64).to(dtype).to(ctx.device)
    return Inputs({"score_fn": score_spec(ctx, mean, var, dtype, case["betas"], record=True), "shape": shape,
                   "n_steps": case["n_steps"]},
                  {"beta_min": case["betas"][0], "beta_max": case["betas"][1], "eps": case["eps"],
                   "probability_flow": True, "x_T": x_T}, notes={"score_fn": SCORE_NOTE})


def _grid_calls(inputs: Inputs) -> list:
    a = inputs.arguments()
    return [(t, a["shape"][0]) for t in laws.sde_grid(a["n_steps"], a.get("eps", 1e-3)).tolist()]


def _grid_what(inputs: Inputs) -> str:
    a = inputs.arguments()
    return (f"sde_sample should evaluate score_fn once per step on the whole batch, at t = linspace(1, "
            f"{a.get('eps', 1e-3):g}, {a['n_steps']}), from t = 1 down, with t a float tensor (B,)")


CALLS = ModelCalls(expected=_grid_calls, level="noise level", model="score_fn", what=_grid_what)


def _sampler_with(**mistake):
    """The ODE from x_T with a known mistake, through the reference's step (float64, for hints)."""

    def wrong(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
              generator=None, x_T=None):
        dt = mistake.get("dt", lambda n, e: 1.0 / n)(n_steps, eps)
        x = x_T
        for t in mistake.get("grid", laws.sde_grid)(n_steps, eps).tolist():
            t_b = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
            x = ref.probability_flow_step(score_fn, x, t_b, dt, beta_min, beta_max)
        return x

    return wrong


CHAIN_DIAGNOSES = (
    Diagnosis(_sampler_with(dt=lambda n, e: (1 - e) / max(n - 1, 1)), "your dt is the grid's spacing (1 − eps)/"
              "(n_steps − 1); score_sde and diffusers step by dt = 1/n_steps"),
    Diagnosis(_sampler_with(grid=lambda n, e: 1 - torch.arange(n, dtype=F64) / n), "your times are 1 − i/n_steps; "
              "they are linspace(1, eps, n_steps), the last one eps"),
    Diagnosis(_sampler_with(grid=lambda n, e: laws.sde_grid(n, e).flip(0)), "your times run from eps up to 1: "
              "sampling integrates backwards, from t = 1 down to eps"),
)

SAME_SEED = Reproducible("sde_sample", other_seed=True)
SAME_SEED_NAME = "without x_T, draws from `generator`: the same seed gives the same samples"


@st.composite
def generator_cases(draw: Any) -> dict:
    return {"shape": draw(data_shapes.filter(lambda s: s[0] * max(1, torch.Size(s[1:]).numel()) >= 4)),
            "n_steps": draw(st.integers(1, 6)), "probability_flow": draw(st.booleans()), "seed": draw(seeds)}


GENERATOR_EXAMPLES = ({"shape": (4, 2), "n_steps": 3, "probability_flow": False, "seed": 0},
                      {"shape": (4, 2), "n_steps": 3, "probability_flow": True, "seed": 0},
                      {"shape": (8,), "n_steps": 1, "probability_flow": False, "seed": 1})


def build_generator(case: dict, ctx: Context) -> Inputs:
    """Data with s² ≥ 0.5: the output moves with x_T by ≥ a_eps·s²/v ≈ 1/3 per unit, so other seeds, other samples."""
    g = torch.Generator().manual_seed(case["seed"])
    mean, var = gaussian_params(tuple(case["shape"])[1:], g, 0.5, 2.0)
    return Inputs({"score_fn": score_spec(ctx, mean, var, torch.get_default_dtype(), BETAS[0], record=True),
                   "shape": tuple(case["shape"]), "n_steps": case["n_steps"]},
                  {"probability_flow": case["probability_flow"], "generator": ctx.generator_spec(seed=case["seed"])},
                  notes={"score_fn": SCORE_NOTE})


GENERATOR_CALLS = ModelCalls(expected=_grid_calls, level="noise level", model="score_fn", what=_grid_what,
                             runs=SAME_SEED.runs)

# -- sde_sample's laws --------------------------------------------------------------------------------

#: 16 coordinates, means of both signs, variances 1e-3…3: the small ones magnify errors of the last steps (the output
#: spread there is ~3e-2), the large ones carry the noise. The parameters are float32-exact (the model is float32).
LAW_MEAN = torch.tensor([1.5, -1.0, 0.5, -0.25, 2.0, 0.0, -1.5, 1.0, -0.5, 0.25, -2.0, 0.75, 1.25, -0.75, 0.125, -0.125],
                        dtype=F64)
LAW_VAR = (10 ** torch.linspace(-3.0, 0.5, 16, dtype=F64)).float().double()
LAW_DATA = GaussianData(LAW_MEAN, LAW_VAR)
LAW_BATCH, LAW_STEPS = 4096, 8
LAW_NOTES = {"score_fn": "the exact VP-SDE score of Gaussian data N(μ, diag(s²)), 16 coordinates, s² from 1e-3 to 3 "
                         "(float32)"}


def law_draw(ctx: Context, probability_flow: bool) -> LawDraw:
    """sde_sample with x_T drawn (N(0, I)), 8 steps, β from 0.1 to 20: two calls against the exact law."""
    law = laws.sde_sample_law(LAW_DATA, LAW_STEPS, probability_flow=probability_flow)
    samples = []
    for i, label in enumerate(("first call", "second call")):
        inputs = Inputs({"score_fn": score_spec(ctx, LAW_MEAN, LAW_VAR, torch.float32, BETAS[0]),
                         "shape": (LAW_BATCH, 16), "n_steps": LAW_STEPS},
                        {"probability_flow": probability_flow,
                         "generator": ctx.generator_spec("sde law", probability_flow, i)}, notes=dict(LAW_NOTES))
        samples.append(Sample(inputs, law, label, f"sde_sample's {'second ' * i}result", (LAW_BATCH, 16)))
    kind = "the probability-flow ODE (Euler)" if probability_flow else "the reverse SDE (Euler–Maruyama)"
    return LawDraw(samples, note=f"Each output was standardised by the exact law of {kind} over linspace(1, 1e-3, 8) "
                                 "with dt = 1/8 from x_T ~ N(0, I), on Gaussian data with the exact score.")


def _law_mistakes(probability_flow: bool, *mistakes) -> tuple[Diagnosis, ...]:
    return tuple(Diagnosis(lambda d, kw=kw: [laws.sde_sample_variant_law(LAW_DATA, LAW_STEPS,
                                                                         probability_flow=probability_flow, **kw)] * 2,
                           message) for message, kw in mistakes)


SDE_MISTAKES = _law_mistakes(
    False,
    ("the last step adds noise: return its x_mean", {"noisy_end": True}),
    ("dt is the grid's spacing (1 − eps)/(n_steps − 1), not 1/n_steps", {"dt": (1 - 1e-3) / (LAW_STEPS - 1)}),
    ("the times are 1 − i/n_steps, not linspace(1, eps, n_steps)",
     {"ts": 1 - torch.arange(LAW_STEPS, dtype=F64) / LAW_STEPS}),
    ("the score term is ½β·s (the ODE's) instead of β·s", {"score_coef": 0.5}),
    ("the noise is √β·dt·z instead of √(β·dt)·z", {"noise_of": lambda beta, dt: beta.sqrt() * dt}),
    ("the drift has −½β·x (the forward SDE's) instead of +½β·x", {"x_coef": -0.5}),
)
ODE_MISTAKES = _law_mistakes(
    True,
    ("the score term is β·s (the SDE's) instead of ½β·s", {"score_coef": 1.0}),
    ("dt is the grid's spacing (1 − eps)/(n_steps − 1), not 1/n_steps", {"dt": (1 - 1e-3) / (LAW_STEPS - 1)}),
)

# -- dsm_loss with its own noise: the closed-form minimum, and linear scores above it --------------

#: 2048 samples × 16 coordinates: 32,768 terms ½c·χ²₁. The Chernoff bounds are then ±9% of the mean (the bugs move
#: it by a factor 2 or 1/16), and the ranking threshold ~75 standard deviations below the expected gap.
DSM_BATCH = 2048
DSM_ALPHA = 1e-6
DSM_SCALES = (0.8, 1.25)


def _dsm_inputs(ctx: Context, tag: str, scale: float = 1.0, noise: torch.Tensor | None = None) -> tuple:
    g = ctx.generator("dsm", tag)
    t = 1e-3 + (1 - 1e-3) * torch.rand(DSM_BATCH, generator=g, dtype=F64)
    x0 = LAW_DATA.sample(DSM_BATCH, g)
    kwargs = {} if noise is None else {"noise": noise.to(ctx.device)}
    inputs = Inputs({"score_fn": score_spec(ctx, LAW_MEAN, LAW_VAR, F64, BETAS[0], scale=scale),
                     "x0": x0.to(ctx.device), "t": t.to(ctx.device)}, kwargs,
                    notes={"score_fn": (f"{scale} × " if scale != 1 else "") + LAW_NOTES["score_fn"] + ", in float64",
                           "x0": f"float64 ({DSM_BATCH}, 16) draws of the data",
                           "t": f"float64 ({DSM_BATCH},) uniform on [1e-3, 1]"})
    return inputs, t


def _losses(ctx: Context, inputs: Inputs, tag: str) -> torch.Tensor:
    value = value_of(ctx.call("dsm_loss", [inputs], tag=tag)[0])
    return as_tensor(value, "dsm_loss's result", shape=(DSM_BATCH,), finite=True).detach().to("cpu", F64)


def dsm_minimum(ctx: Context, alpha: float) -> StatReport:
    """dsm_loss(noise=None) under the exact score: the sum of the losses against ½ Σ c·χ²₁ (exact Chernoff bounds)."""
    inputs, t = _dsm_inputs(ctx, "minimum")
    loss = _losses(ctx, inputs, "minimum")
    weights = laws.dsm_loss_weights(LAW_DATA, t)
    low, high = laws.weighted_chi2_bounds(weights, alpha)
    total = float(loss.sum())
    minimum = float(laws.dsm_loss_minimum(LAW_DATA, t).mean())
    stat = Statistic("mean loss per sample", total / DSM_BATCH, low / DSM_BATCH, high / DSM_BATCH,
                     laws.weighted_chi2_p_value(weights, total), alpha, weights.numel(),
                     "Chernoff bounds with the exact cumulant generating function of ½ Σ c·χ²₁")
    note = (f"The closed-form minimum of the expected loss, ½ Σ_i (1 − σ_t²/v_i) averaged over these t, is "
            f"{minimum:.4f} per sample; yours averaged {total / DSM_BATCH:.4f}.")
    return StatReport([stat], None, inputs, note=note)


def dsm_ranking(ctx: Context, alpha: float) -> StatReport:
    """With the same x₀, t and z, the loss of λ·s* exceeds that of s* by at least the exact Chernoff margin."""
    g = ctx.generator("dsm", "ranking noise")
    noise = torch.randn((DSM_BATCH, 16), generator=g, dtype=F64)
    best_inputs, t = _dsm_inputs(ctx, "ranking", 1.0, noise)
    best = _losses(ctx, best_inputs, "ranking 1")
    statistics = []
    for scale in DSM_SCALES:
        inputs, _ = _dsm_inputs(ctx, "ranking", scale, noise)
        gap = float((_losses(ctx, inputs, f"ranking {scale}") - best).sum())
        threshold = laws.dsm_scale_gap_threshold(LAW_DATA, t, scale, alpha / len(DSM_SCALES))
        expected = 0.5 * (scale - 1) ** 2 * float((1 - laws.dsm_loss_weights(LAW_DATA, t)).sum())
        p_value = laws.dsm_scale_gap_p_value(LAW_DATA, t, scale, gap) if gap < expected else 1.0
        statistics.append(Statistic(f"loss of {scale}·s* minus loss of s*, per sample", gap / DSM_BATCH,
                                    threshold / DSM_BATCH, float("inf"), p_value, alpha / len(DSM_SCALES),
                                    DSM_BATCH * 16,
                                    "a one-sided Chernoff bound with the exact moment generating function"))
    note = ("The same data, times and noise were passed with the exact score s* and with λ·s* (λ = 0.8, 1.25): "
            "denoising score matching must prefer the true score, by ½(λ − 1)²·Σ σ_t²/v_i in expectation.")
    return StatReport(statistics, None, best_inputs, note=note)


# -- the exercise ------------------------------------------------------------------------------

STEP = {"cases": step_cases(), "examples": STEP_EXAMPLES, "tolerance": STEP_TOLERANCE, "scale": step_terms,
        "scale_what": "the size of the step's terms", "dtype_from": "x", "device_from": "x", "points": 3,
        "dtype_points": 1}

EXERCISE = Exercise(
    name="sde",
    title="Score SDEs: denoising score matching, the reverse SDE and the probability-flow ODE",
    functions=(
        ("vp_beta", ("t", "beta_min", "beta_max")),
        ("vp_marginal", ("t", "beta_min", "beta_max")),
        ("dsm_loss", ("score_fn", "x0", "t", "beta_min", "beta_max", "noise")),
        ("reverse_sde_step", ("score_fn", "x", "t", "dt", "beta_min", "beta_max", "noise")),
        ("probability_flow_step", ("score_fn", "x", "t", "dt", "beta_min", "beta_max")),
        ("sde_sample", ("score_fn", "shape", "n_steps", "beta_min", "beta_max", "eps", "probability_flow", "generator",
                        "x_T")),
    ),
    checks=(
        Agreement(function="vp_beta", cases=time_cases(), build=build_time, examples=TIME_EXAMPLES,
                  reference=ref.vp_beta, tolerance=BETA_TOLERANCE, dtype_from="t", device_from="t", points=2,
                  dtype_points=1, diagnoses=BETA_DIAGNOSES),
        Agreement(function="vp_marginal", cases=time_cases(), build=build_time, examples=TIME_EXAMPLES,
                  reference=ref.vp_marginal, tolerance=MARGINAL_TOLERANCE, outputs=("mean_coef", "std"),
                  dtype_from="t", device_from="t", points=3, dtype_points=1, diagnoses=MARGINAL_DIAGNOSES),
        Agreement(function="dsm_loss", cases=step_cases(), build=lambda c, ctx: build_step(c, ctx, "dsm"),
                  examples=STEP_EXAMPLES, reference=ref.dsm_loss, tolerance=DSM_TOLERANCE, scale=dsm_terms,
                  scale_what="½Σ(|σs| + |z|)², the size of the loss's terms", what="matches the reference (noise "
                  "injected)", dtype_from="x0", device_from="x0", points=3, dtype_points=1, diagnoses=DSM_DIAGNOSES),
        Statistical(function="dsm_loss", name="under the exact score, the mean loss is the closed-form minimum",
                    procedure=dsm_minimum, alpha=DSM_ALPHA, points=2,
                    derivation="with x₀ ~ N(μ, diag(s²)) and the exact score, each sample's loss is ½ Σ_i c_i·χ²₁ with "
                               "c = 1 − σ_t²/v (reference.laws.dsm_loss_weights); the sum of 2048 losses is tested "
                               "two-sided at 1e-6 against Chernoff bounds from its exact cumulant generating function"),
        Statistical(function="dsm_loss", name="linear scores λ·s* (λ = 0.8, 1.25) have a larger loss than the true score",
                    procedure=dsm_ranking, alpha=DSM_ALPHA, points=2,
                    derivation="two one-sided tests at 5e-7 each (Bonferroni): with the same x₀, t and z, the loss "
                               "difference is a sum of (λ − 1)·w·u + ½(λ − 1)²·u² over independent Gaussian w, u whose "
                               "moment generating function is exact; its Chernoff lower bound is the threshold "
                               "(reference.laws.dsm_scale_gap_threshold)"),
        Agreement(function="reverse_sde_step", build=lambda c, ctx: build_step(c, ctx, "sde"),
                  reference=ref.reverse_sde_step, outputs=("x", "x_mean"), what="matches the reference (noise injected)",
                  diagnoses=STEP_DIAGNOSES, **STEP),
        Agreement(function="probability_flow_step", build=lambda c, ctx: build_step(c, ctx, "flow"),
                  reference=ref.probability_flow_step, diagnoses=FLOW_DIAGNOSES, **STEP),
        Agreement(function="sde_sample", cases=chain_cases(), build=build_chain, examples=CHAIN_EXAMPLES,
                  reference=ref.sde_sample, tolerance=CHAIN_TOLERANCE,
                  what="with probability_flow=True and a given x_T it matches the reference", points=3,
                  dtype_from="x_T", device_from="x_T", dtype_points=1, dtype_what="output dtype and device follow x_T",
                  extra_aspects=(CALLS.aspect("evaluates score_fn once per step, at linspace(1, eps, n_steps) in "
                                              "order"),), diagnoses=CHAIN_DIAGNOSES),
        Property(function="sde_sample", cases=generator_cases(), build=SAME_SEED.build(build_generator),
                 examples=GENERATOR_EXAMPLES, max_examples=6, probe=SAME_SEED.probe,
                 aspects=(SAME_SEED.aspect(SAME_SEED_NAME, shape=lambda inputs: inputs.args["shape"], finite=True),
                          SAME_SEED.form_aspect("without x_T, x_T is drawn in the default dtype on the generator's "
                                                "device", dtype="default", device="generator", gated_by=(SAME_SEED_NAME,),
                                                why=": without x_T, x_T is drawn like pc_sample's start, in the default "
                                                    "dtype on the generator's device"),
                          GENERATOR_CALLS.aspect("evaluates score_fn once per step (reverse SDE or ODE), from t = 1 "
                                                 "down"))),
        Law(function="sde_sample", name="the reverse SDE's samples follow the exact law of the discretised sampler",
            draw=lambda ctx: law_draw(ctx, False), tag="sde law", points=2, mistakes=SDE_MISTAKES, **SAMPLER_LAW),
        Law(function="sde_sample", name="with probability_flow=True and x_T drawn, the samples follow the ODE's exact law",
            draw=lambda ctx: law_draw(ctx, True), tag="ode law", points=1, mistakes=ODE_MISTAKES, **SAMPLER_LAW),
    ),
)
