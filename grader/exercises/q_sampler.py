"""Checks of exercise 1, q_sampler: schedules, q(x_t | x_0), q(x_t | x_{t−1}), the posterior.

Point budget (24): linear_beta_schedule 2, cosine_beta_schedule 3 (+2 for its
properties), compute_alphas_cumprod 2, q_sample 6, q_step 5, q_posterior 4.

Statistical checks (2) each at level 1e-6, so the submission's false-failure
probability is at most 2e-6 (Bonferroni).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from grader.checks import (
    Agreement,
    Aspect,
    Battery,
    Context,
    Diagnosis,
    Inputs,
    Law,
    LawDraw,
    Mismatch,
    Property,
    Sample,
    Tolerance,
    as_tensor,
)
from grader.exercises import Exercise
from grader.exercises._common import (
    SCHEDULE_TOLERANCE,
    boundary_cases,
    case_tensors,
    diffusion_cases,
    schedule_note,
)
from reference import q_sampler as ref
from reference._broadcast import extract, prepend_one

# -- schedules -------------------------------------------------------------------------------

linear_cases = st.fixed_dictionaries({
    "T": st.integers(1, 2000),
    "beta_start": st.sampled_from([1e-4, 5e-4, 1e-3]),
    "beta_end": st.sampled_from([0.02, 0.01, 0.05]),
})


def build_linear(case: dict, ctx: Context) -> Inputs:
    return Inputs({"T": case["T"]}, {"beta_start": case["beta_start"], "beta_end": case["beta_end"]})


cosine_cases = st.fixed_dictionaries({
    "T": st.integers(1, 2000),
    "s": st.sampled_from([0.008, 0.0, 0.1]),
    "max_beta": st.sampled_from([0.999, 0.5, 0.05]),
})


def build_cosine(case: dict, ctx: Context) -> Inputs:
    return Inputs({"T": case["T"]}, {"s": case["s"], "max_beta": case["max_beta"]})


def judge_schedule_properties(inputs: Inputs, outcome) -> None:
    """0 < β_t ≤ max_beta for all t, so ᾱ is positive and strictly decreasing."""
    betas = as_tensor(outcome.value, "the result").to("cpu", torch.float64)
    cap = inputs.kwargs["max_beta"]
    if betas.ndim != 1 or betas.numel() != inputs.args["T"]:
        raise Mismatch(f"the result has shape {tuple(betas.shape)}; expected ({inputs.args['T']},)")
    if not bool(torch.isfinite(betas).all()):
        raise Mismatch("the schedule contains NaN or infinite values")
    if bool((betas > cap * (1 + 1e-12)).any()):
        worst = int(betas.argmax())
        raise Mismatch(f"β[{worst}] = {betas[worst].item():.6g} exceeds max_beta = {cap}: the cap is missing")
    if bool((betas <= 0).any()):
        worst = int(betas.argmin())
        raise Mismatch(f"β[{worst}] = {betas[worst].item():.6g} is not positive")


#: The cumulative product of T ≤ 1000 factors carries ≤ T·u relative error in
#: float32 (6e-5); a correct log-space version (exp of a cumulative sum of logs)
#: carries up to T·u·|Σ log α| ≈ 6e-4 at T = 1000. 2e-3 keeps a 3x margin, and the
#: off-by-one and missing-factor bugs still show (β_t reaches 0.02 and more).
CUMPROD_TOLERANCE = Tolerance(
    rtol32=2e-3, atol32=1e-9, rtol64=1e-9, atol64=1e-15,
    why="a cumulative product of up to 1000 factors, or its log-space equivalent",
)


@st.composite
def beta_cases(draw) -> dict:
    return {"T": draw(st.integers(1, 1000)), "schedule": draw(st.sampled_from(["linear", "cosine", "random"])),
            "dtype": draw(st.sampled_from(["float32", "float64"])), "seed": draw(st.integers(0, 2**16))}


def build_betas(case: dict, ctx: Context) -> Inputs:
    dtype = torch.float32 if case["dtype"] == "float32" else torch.float64
    if case["schedule"] == "random":
        g = torch.Generator().manual_seed(case["seed"])
        betas = 0.05 * torch.rand(case["T"], generator=g, dtype=torch.float64)
        note = f"{case['dtype']} tensor of shape ({case['T']},): uniform random β in [0, 0.05)"
    else:
        betas = ref.linear_beta_schedule(case["T"]) if case["schedule"] == "linear" else ref.cosine_beta_schedule(case["T"])
        note = schedule_note(case["schedule"], case["T"], dtype, "β")
    return Inputs({"betas": betas.to(dtype).to(ctx.device)}, notes={"betas": note})


# -- q_sample, q_step, q_posterior -------------------------------------------------------------


def build_q_sample(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs(
        {"x0": c["x"], "t": c["t"], "alphas_cumprod": c["alphas_cumprod"]},
        {"noise": c["noise"]},
        notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], c["schedule_dtype"])},
    )


def build_q_step(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs(
        {"x_prev": c["x"], "t": c["t"], "betas": c["betas"]},
        {"noise": c["noise"]},
        notes={"betas": schedule_note(case["schedule"], case["T"], c["schedule_dtype"], "β")},
    )


def build_q_posterior(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs(
        {"x0": c["x"], "xt": c["x2"], "t": c["t"], "betas": c["betas"]},
        notes={"betas": schedule_note(case["schedule"], case["T"], c["schedule_dtype"], "β")},
    )


def _q_sample_shifted(x0, t, alphas_cumprod, noise):
    """A diagnosis: ``alphas_cumprod[t - 1]`` (timesteps taken as one-based; t = 0 wraps to T − 1)."""
    return ref.q_sample(x0, t, torch.roll(alphas_cumprod, 1), noise)


def _q_sample_shifted_from_one(x0, t, alphas_cumprod, noise):
    """A diagnosis: ᾱ_{t−1} with ᾱ₋₁ = 1, where ᾱ_t belongs."""
    return ref.q_sample(x0, t, prepend_one(alphas_cumprod), noise)


def _q_sample_no_sqrt(x0, t, alphas_cumprod, noise):
    return extract(alphas_cumprod, t, x0) * x0 + extract(1 - alphas_cumprod, t, x0) * noise


def _q_step_no_sqrt(x_prev, t, betas, noise):
    return extract(1 - betas, t, x_prev) * x_prev + extract(betas, t, x_prev) * noise


def _q_posterior_unclipped(x0, xt, t, betas):
    mean, variance, _ = ref.q_posterior(x0, xt, t, betas)
    return mean, variance, torch.log(variance)


# -- laws --------------------------------------------------------------------------------------

#: Each law check splits its level 1e-6 over five tests (Bonferroni): the mean z-test and the
#: χ² variance test of the first call are exact for Gaussian residuals; the three correlation
#: tests (between the two calls, between batch elements, between coordinates of the first call)
#: use the Chernoff bound of grader.stats.product_z.
LAW_ALPHA = 1e-6
LAW_BATTERY = Battery(per_call=("mean", "variance"), on_calls=(0,), between_calls=True, batch=0, coordinates=0)
LAW_DERIVATION = ("five tests at 2e-7 each (Bonferroni): the pooled mean z and the χ² of the variance are exact "
                  "for i.i.d. N(0, 1) residuals, the three correlation tests are Chernoff bounds")


def _law_data(ctx: Context, tag: str, batch: int, dim: int, T: int, kind: str):
    """Data x₀ (B, D) in float32, timesteps cycling over every t with 0, 1, T − 1 first, and the schedule."""
    g = ctx.generator(tag)
    x0 = (2 * torch.randn((batch, dim), generator=g, dtype=torch.float64)).to(torch.float32)
    firsts = [0, 1, T - 1]
    rest = torch.randint(0, T, (batch - len(firsts),), generator=g).tolist()
    t = torch.tensor(firsts + rest, dtype=torch.long)
    betas = ref.linear_beta_schedule(T) if kind == "linear" else ref.cosine_beta_schedule(T)
    return x0, t, betas


def _marginal(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple:
    """q(x_t | x₀) = N(√ᾱ_t·x₀, 1 − ᾱ_t) per element, in float64: the law both checks test."""
    x0, ac = x0.to(torch.float64), alphas_cumprod.to(torch.float64)
    return extract(ac.sqrt(), t, x0) * x0, extract(1 - ac, t, x0).expand_as(x0)


def q_sample_draw(ctx: Context) -> LawDraw:
    """q_sample with noise=None, called twice on 128 × 512 = 65,536 scalars, each value standardised."""
    x0, t, betas = _law_data(ctx, "q_sample law", 128, 512, 1000, "linear")
    ac = ref.compute_alphas_cumprod(betas)
    inputs = Inputs({"x0": x0.to(ctx.device), "t": t.to(ctx.device), "alphas_cumprod": ac.to(ctx.device)},
                    notes={"x0": "float32 (128, 512), N(0, 4) entries", "t": "0, 1, 999, then uniform",
                           "alphas_cumprod": "linear schedule, T = 1000 (float64)"})
    law = _marginal(x0, t, ac)
    return LawDraw([Sample(inputs, law, what="q_sample's result"), Sample(inputs, law, what="q_sample's second result")])


def iterate_q_step(ns, x0, t, betas):
    """Probe: run q_step (noise=None) over steps 0..t of each batch element; return x_t."""
    x = x0
    shape = (-1,) + (1,) * (x0.ndim - 1)
    for s in range(int(t.max()) + 1):
        stepped = ns.q_step(x, torch.full_like(t, s), betas)
        x = torch.where((t >= s).reshape(shape), stepped, x)
    return x


def q_step_chain_draw(ctx: Context) -> LawDraw:
    """q_step iterated t + 1 times (cosine schedule, T = 20, β capped at the end) vs q(x_t | x_0)."""
    x0, t, betas = _law_data(ctx, "q_step chain law", 128, 512, 20, "cosine")
    law = _marginal(x0, t, ref.compute_alphas_cumprod(betas))
    inputs = Inputs({"x0": x0.to(ctx.device), "t": t.to(ctx.device), "betas": betas.to(ctx.device)},
                    notes={"x0": "float32 (128, 512), N(0, 4) entries", "t": "0, 1, 19, then uniform",
                           "betas": "cosine schedule, T = 20 (float64)"})
    return LawDraw([Sample(inputs, law, what="x_t after iterating q_step"),
                    Sample(inputs, law, what="x_t after iterating q_step again")],
                   note="x_t is q_step applied at steps 0, 1, …, t starting from x₀; its law must be q(x_t | x₀).")


# -- the exercise ------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="q_sampler",
    title="The forward process",
    functions=(
        ("linear_beta_schedule", ("T", "beta_start", "beta_end")),
        ("cosine_beta_schedule", ("T", "s", "max_beta")),
        ("compute_alphas_cumprod", ("betas",)),
        ("q_sample", ("x0", "t", "alphas_cumprod", "noise")),
        ("q_step", ("x_prev", "t", "betas", "noise")),
        ("q_posterior", ("x0", "xt", "t", "betas")),
    ),
    checks=(
        Agreement(
            function="linear_beta_schedule", cases=linear_cases, build=build_linear,
            reference=ref.linear_beta_schedule, dtype_from=torch.float64, points=1, dtype_points=1,
            examples=({"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}, {"T": 1, "beta_start": 1e-4, "beta_end": 0.02}),
        ),
        Agreement(
            function="cosine_beta_schedule", cases=cosine_cases, build=build_cosine,
            reference=ref.cosine_beta_schedule, dtype_from=torch.float64, points=2, dtype_points=1,
            examples=({"T": 1000, "s": 0.008, "max_beta": 0.999}, {"T": 10, "s": 0.008, "max_beta": 0.05}),
        ),
        Property(
            function="cosine_beta_schedule", cases=cosine_cases, build=build_cosine,
            aspects=(Aspect("0 < β_t ≤ max_beta (so ᾱ_t decreases and stays positive)", 2,
                            judge_schedule_properties),),
            examples=({"T": 1000, "s": 0.008, "max_beta": 0.999}, {"T": 50, "s": 0.008, "max_beta": 0.05}),
        ),
        Agreement(
            function="compute_alphas_cumprod", cases=beta_cases(), build=build_betas,
            reference=ref.compute_alphas_cumprod, tolerance=CUMPROD_TOLERANCE,
            dtype_from="betas", device_from="betas", points=1, dtype_points=1,
            examples=({"T": 1000, "schedule": "linear", "dtype": "float64", "seed": 0},
                      {"T": 1, "schedule": "random", "dtype": "float32", "seed": 0}),
            diagnoses=(Diagnosis(lambda betas: prepend_one(ref.compute_alphas_cumprod(betas)),
                                 "your ᾱ_t is ᾱ_{t−1}: the product must include step t itself (ᾱ_0 = 1 − β_0)"),
                       Diagnosis(lambda betas: torch.cumprod(betas, 0),
                                 "this is the product of the β's; ᾱ is the product of α = 1 − β")),
        ),
        Agreement(
            function="q_sample", cases=diffusion_cases(), build=build_q_sample, reference=ref.q_sample, tolerance=SCHEDULE_TOLERANCE,
            dtype_from="x0", device_from="x0", points=3, dtype_points=1, examples=boundary_cases(),
            diagnoses=(Diagnosis(_q_sample_shifted, "your output matches alphas_cumprod[t − 1] in place of "
                                 "alphas_cumprod[t] (ᾱ_{t−1} for ᾱ_t): timesteps are zero-based and ᾱ_t includes "
                                 "step t; at t = 0, [t − 1] even wraps around to the last timestep"),
                       Diagnosis(_q_sample_shifted_from_one, "your output matches ᾱ_{t−1} in place of ᾱ_t: "
                                 "timesteps are zero-based and ᾱ_t includes step t"),
                       Diagnosis(_q_sample_no_sqrt, "ᾱ_t and 1 − ᾱ_t are variances: the coefficients are their square roots")),
        ),
        Law(
            function="q_sample", name="with noise=None, the output follows N(√ᾱ_t·x₀, (1 − ᾱ_t)·I)",
            draw=q_sample_draw, battery=LAW_BATTERY, tag="law", alpha=LAW_ALPHA, derivation=LAW_DERIVATION, points=2,
        ),
        Agreement(
            function="q_step", cases=diffusion_cases(), build=build_q_step, reference=ref.q_step, tolerance=SCHEDULE_TOLERANCE,
            dtype_from="x_prev", device_from="x_prev", points=2, dtype_points=1, examples=boundary_cases(),
            diagnoses=(Diagnosis(_q_step_no_sqrt, "1 − β_t and β_t are variances: scale by their square roots"),),
        ),
        Law(
            function="q_step", name="q_step iterated over steps 0…t follows q(x_t | x₀)", probe=iterate_q_step,
            draw=q_step_chain_draw, battery=LAW_BATTERY, tag="chain", alpha=LAW_ALPHA, derivation=LAW_DERIVATION,
            points=2,
        ),
        Agreement(
            function="q_posterior", cases=diffusion_cases(min_T=2), build=build_q_posterior,
            reference=ref.q_posterior, tolerance=SCHEDULE_TOLERANCE, outputs=("mean", "variance", "log_variance"),
            broadcastable=frozenset({"variance", "log_variance"}),
            dtype_from="xt", device_from="xt", points=3, dtype_points=1, examples=boundary_cases(),
            diagnoses=(Diagnosis(_q_posterior_unclipped, "at t = 0 the posterior variance β̃_0 is 0, so its log is −∞: "
                                 "use β̃_1 there (the clipped log-variance of improved-diffusion)"),),
        ),
    ),
)
