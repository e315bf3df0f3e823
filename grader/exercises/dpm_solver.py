"""Checks of exercise 11, dpm_solver: λ, the timesteps, the first-order and 2M steps, the sampler, its order.

Point budget (29): dpm_lambda 3 (values 2, dtype 1), dpm_solver_timesteps 4 (values 3, LongTensor 1),
dpm_solver_first_order_step 4 (values 3, dtype 1), dpm_solver_2m_step 4 (values 3, dtype 1),
dpm_solver_sample 14 (from a given x_T: values 3, dtype 1, model calls 1; the first and the last step
first order and the others 2M, read off the states the model saw: 1 + 1 + 1; the measured order of
convergence ≈ 2: 2; the generator 1 + 1; the exact law from a drawn x_T: 2).

Two tiers, as in ddim. **Deterministic**: every function but the draw of x_T is deterministic, so the
steps and the sampler from a given x_T are compared with the reference on hypothesis-drawn inputs,
with the optimal ε-model of Gaussian data (``reference.toy``), relative to the size of the terms
each update adds up (``reference.laws.dpm_solver_chain_terms_size``): x̂₀ = (x − σε)/α divides by α
(2·10⁴ at the end of the cosine schedule). The order of convergence is a property of the student's
sampler on a problem whose exact solution is known (the exact flow of the probability-flow ODE of
Gaussian data). **On the exact law**: without x_T the sampler draws x_T itself, so its output is
tested against its exact law (``reference.laws.dpm_solver_sample_law``, an affine map of x_T) by
one :class:`Law` check at level 1e-6: the exercise's false-failure probability is at most 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from grader.checks import (Agreement, Aspect, Context, Diagnosis, Inputs, Law, LawDraw, Mismatch, ModelCalls,
                           Property, Reproducible, Sample, Tolerance, Traced, as_tensor, as_tuple, compare,
                           output_aspect)
from grader.exercises import Exercise
from grader.exercises._common import (DTYPES, SAMPLER_LAW, data_shapes, dtypes, gaussian, gaussian_params, horizons,
                                      schedule_alphas_cumprod, schedule_note, schedules, seeds)
from reference import dpm_solver as ref
from reference import laws
from reference.laws import alpha_bar
from reference.toy import GaussianData

# -- tolerances ----------------------------------------------------------------------------------

#: λ = ½ log ᾱ − ½ log(1 − ᾱ) from a given ᾱ: 1 − ᾱ is exact in floating point for ᾱ ≥ ½ (Sterbenz)
#: and the logs err by a few ulps, so any sound grouping (log(ᾱ/(1 − ᾱ))/2, log √ᾱ − log √(1 − ᾱ),
#: log1p) agrees to ~4u relative to the terms |½ log ᾱ| + |½ log(1 − ᾱ)|: 1e-5 in float32
#: (u = 6e-8, a 40x margin) and 1e-12 in float64 (u = 1.1e-16). A factor 2 (the full log-SNR)
#: or a sign is off by 100 %.
LAMBDA_TOLERANCE = Tolerance(rtol32=1e-5, atol32=1e-6, rtol64=1e-12, atol64=1e-12,
                             why="a few ulps of the two logarithms, relative to their size")

#: The steps x′ = (σ′/σ)·x − α′(e^{−h} − 1)·D add terms that can be much larger than x′, so round-off is
#: relative to M = Σ |terms| (and, along the sampler, to the terms carried by the chain's slopes:
#: ``laws.dpm_solver_chain_terms_size``). In float32 the coefficients of a correct implementation lose
#: up to u/(1 − ᾱ) relative where a float64 schedule is cast first (σ near t = 0: 1.5e-3 at t = 0 of the
#: cosine schedule, as SCHEDULE_TOLERANCE), and e^{−h} − 1 formed as exp(−h) − 1 rather than expm1 loses
#: u/h ≤ 6e-6 for h ≥ 0.01 (consecutive timesteps): 3e-3·M keeps a 2x margin (measured: correct float32
#: steps and samplers, float32 schedules included, stay below 1e-6·M; tests/exercises/test_dpm_solver_checks.py
#: requires a tenth of the tolerance). In float64
#: the same analysis gives ~1e-12·M; 1e-9·M leaves 1000x. Hypothesis draws float64 cases and the boundary
#: examples run in both dtypes, so a wrong coefficient (≥ 1e-4 relative) is caught at full precision.
TERMS_TOLERANCE = Tolerance(rtol32=3e-3, atol32=1e-6, rtol64=1e-9, atol64=1e-12,
                            why="relative to the size of the update's terms: float32 coefficients lose up to "
                                "u/(1 − ᾱ_0) ≈ 1.5e-3, x̂₀ amplifies by 1/α_t")
#: Matching a known mistake (a hint, never a grade) on every input, float64 ones included.
DIAGNOSIS_TOLERANCE = Tolerance(rtol32=1e-2, atol32=1e-3, rtol64=1e-7, atol64=1e-9,
                                why="matching a known mistake on every input; float32 cases are ill-conditioned")
DETERMINISTIC = {"tolerance": TERMS_TOLERANCE, "scale_what": "the size of the update's terms",
                 "diagnosis_tolerance": DIAGNOSIS_TOLERANCE}

# -- dpm_lambda ----------------------------------------------------------------------------------


@st.composite
def lambda_cases(draw) -> dict:
    T = draw(horizons)
    return {"T": T, "schedule": draw(schedules), "dtype": draw(dtypes), "seed": draw(seeds),
            "shape": draw(st.sampled_from([(), (1,), (5,), (2, 3)]))}


LAMBDA_EXAMPLES = tuple({"T": 1000, "schedule": kind, "dtype": dtype, "seed": 0, "shape": (7,)}
                        for kind in ("linear", "cosine") for dtype in ("float64", "float32"))


def build_lambda(case: dict, ctx: Context) -> Inputs:
    """ᾱ at timesteps drawn from the case's seed, the first ones t = 0 and T − 1 (the extremes of λ)."""
    ac = schedule_alphas_cumprod(case["schedule"], case["T"])
    g = torch.Generator().manual_seed(case["seed"])
    n = math.prod(case["shape"])
    ts = torch.cat([torch.tensor([0, case["T"] - 1]), torch.randint(0, case["T"], (max(n - 2, 0),), generator=g)])[:n]
    value = ac[ts].reshape(case["shape"]).to(DTYPES[case["dtype"]]).to(ctx.device)
    return Inputs({"alpha_cumprod": value}, notes={"alpha_cumprod": f"{case['dtype']} ᾱ_t at t = {ts.tolist()} "
                                                                    f"({case['schedule']} schedule, T = {case['T']})"})


def lambda_terms(inputs: Inputs) -> torch.Tensor:
    a = inputs.arguments()["alpha_cumprod"].to("cpu", torch.float64)
    return 0.5 * (a.log().abs() + (-a).log1p().abs())


LAMBDA_DIAGNOSES = (
    Diagnosis(lambda a: 2 * ref.dpm_lambda(a), "your λ is the full log-SNR log(ᾱ/(1 − ᾱ)); λ = log α − log σ with "
                                               "α = √ᾱ, σ = √(1 − ᾱ): half of it"),
    Diagnosis(lambda a: -ref.dpm_lambda(a), "your λ has the wrong sign: λ = log α − log σ grows towards the data"),
    Diagnosis(lambda a: 0.5 * torch.log(a), "your λ is log α alone; subtract log σ = ½ log(1 − ᾱ)"),
)

# -- dpm_solver_timesteps --------------------------------------------------------------------------


@st.composite
def timestep_cases(draw) -> dict:
    T = draw(st.one_of(st.integers(2, 40), st.integers(41, 1000), st.sampled_from([1000, 999, 100])))
    return {"T": T, "num_steps": draw(st.one_of(st.integers(1, min(T - 1, 60)), st.integers(1, T - 1)))}


TIMESTEP_EXAMPLES = tuple({"T": T, "num_steps": n} for T, n in ((1000, 20), (1000, 1), (1000, 999), (10, 9), (17, 7),
                                                                   (1000, 27), (2, 1), (1000, 3)))


def _np_timesteps(T: int, n: int, count: int, keep: slice, reverse: bool = True) -> torch.Tensor:
    values = np.linspace(0, T - 1, count).round()
    return torch.from_numpy((values[::-1] if reverse else values)[keep].astype(np.int64).copy())


TIMESTEP_DIAGNOSES = (
    Diagnosis(lambda T, num_steps: _np_timesteps(T, num_steps, num_steps + 1, slice(1, None), reverse=False),
              "your timesteps are in ascending order (the reversed ones without 0); the sampler walks them from "
              "T − 1 down"),
    Diagnosis(lambda T, num_steps: _np_timesteps(T, num_steps, num_steps + 1, slice(None)),
              "you kept the last entry, 0: the timesteps are round(linspace(0, T − 1, num_steps + 1)) reversed "
              "*without* their last entry (the last step goes from the smallest one to the data)"),
    Diagnosis(lambda T, num_steps: _np_timesteps(T, num_steps, num_steps + 1, slice(None, -1), reverse=False),
              "your timesteps were cut before being reversed: reverse round(linspace(0, T − 1, num_steps + 1)) "
              "first, then drop its last entry"),
    Diagnosis(lambda T, num_steps: _np_timesteps(T, num_steps, num_steps, slice(None)),
              "round(linspace(0, T − 1, num_steps)) is DDIM's linspace spacing; DPM-Solver takes num_steps + 1 "
              "points and drops the last, 0"),
)


def judge_timesteps(inputs: Inputs, outcome) -> None:
    """diffusers' set_timesteps, exactly (any integer dtype here; the dtype is its own test)."""
    T, n = inputs.args["T"], inputs.args["num_steps"]
    expected = ref.dpm_solver_timesteps(T, n).tolist()
    got = as_tensor(outcome.value, "the result")
    values = got.detach().to("cpu").flatten().tolist()
    if got.is_floating_point() and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    if got.ndim != 1 or got.numel() != n:
        raise Mismatch(f"the result has shape {tuple(got.shape)}; expected ({n},), one entry per model evaluation",
                       got=str(values[:64]), expected=str(expected[:64]))
    if values != expected:
        wrong = [i for i, (a, b) in enumerate(zip(values, expected)) if a != b]
        raise Mismatch(f"the timesteps differ from diffusers' at {len(wrong)} of {n} positions, first at index "
                       f"{wrong[0]}: got {values[wrong[0]]}, expected {expected[wrong[0]]}",
                       got=str(values[:64]), expected=str(expected[:64]))


# -- the two steps -----------------------------------------------------------------------------------


def _schedule(case: dict, ctx: Context) -> tuple[torch.Tensor, torch.dtype, torch.dtype]:
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    ac = schedule_alphas_cumprod(case["schedule"], case["T"])
    return ac.to(schedule_dtype).to(ctx.device), dtype, schedule_dtype


@st.composite
def step_cases(draw, second_order: bool = False) -> dict:
    """t and t_prev < t (−1 often, for the first-order step); for 2M also t_last > t and t_prev ≥ 0."""
    T = draw(st.one_of(st.integers(3, 12), st.sampled_from([50, 1000])))
    if second_order:
        t = draw(st.integers(1, T - 2))
        t_prev, t_last = draw(st.integers(0, t - 1)), draw(st.integers(t + 1, T - 1))
    else:
        t = draw(st.integers(0, T - 1))
        t_prev, t_last = draw(st.one_of(st.just(-1), st.integers(-1, t - 1))), None
    return {"T": T, "schedule": draw(schedules), "shape": draw(data_shapes), "dtype": draw(dtypes),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "t": t, "t_prev": t_prev, "t_last": t_last,
            "seed": draw(seeds)}


def _step_examples(triples: tuple) -> tuple:
    return tuple({"T": 1000, "schedule": kind, "shape": (3, 2), "dtype": dtype, "schedule_dtype": "float64", "t": t,
                  "t_prev": t_prev, "t_last": t_last, "seed": 0} for kind in ("linear", "cosine")
                 for dtype in ("float64", "float32") for t, t_prev, t_last in triples)


#: T − 1 and 0 to the data (σ_prev = 0, h = ∞), consecutive steps at both ends, a large skip.
FIRST_ORDER_EXAMPLES = _step_examples(((999, -1, None), (0, -1, None), (999, 998, None), (1, 0, None),
                                       (999, 499, None), (52, 0, None)))
#: The 2M step at linspace(…, 20 steps) positions, at both ends, and consecutive timesteps.
SECOND_ORDER_EXAMPLES = _step_examples(((946, 894, 999), (105, 53, 158), (53, 0, 105), (998, 997, 999), (2, 1, 3)))


def build_step(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    x0, xt, x0_last = (gaussian(case["shape"], g, dtype, ctx) for _ in range(3))
    args = {"x0_pred": x0}
    if case["t_last"] is not None:
        args["x0_pred_last"] = x0_last
    args.update({"t": case["t"], "t_prev": case["t_prev"]})
    if case["t_last"] is not None:
        args["t_last"] = case["t_last"]
    args.update({"xt": xt, "alphas_cumprod": ac})
    return Inputs(args, notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype),
                               "x0_pred": f"N(0, 1) draws, {case['dtype']}"})


def _coefficients(ac: torch.Tensor, t: int, t_prev: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(σ′/σ, α′·(e^{−h} − 1), λ_t) in float64."""
    a, a_prev = alpha_bar(ac, t), alpha_bar(ac, t_prev)
    lam, lam_prev = ref.dpm_lambda(a), ref.dpm_lambda(a_prev)
    return ((1 - a_prev) / (1 - a)).sqrt(), a_prev.sqrt() * torch.expm1(lam - lam_prev), lam


def step_terms(inputs: Inputs) -> torch.Tensor:
    """Σ |terms| of the step, from its float64 inputs: |σ′/σ·x| + |α′(e^{−h} − 1)|·(|D₀| + ½|D₁|)."""
    a = inputs.arguments()
    ac = a["alphas_cumprod"].to("cpu")
    ratio, phi, lam = _coefficients(ac, a["t"], a["t_prev"])
    xt, x0 = a["xt"].to("cpu"), a["x0_pred"].to("cpu")
    size = ratio * xt.abs() + phi.abs() * x0.abs()
    if "t_last" in a:
        h = ref.dpm_lambda(alpha_bar(ac, a["t_prev"])) - lam
        r = (lam - ref.dpm_lambda(alpha_bar(ac, a["t_last"]))) / h
        size = size + 0.5 * phi.abs() * (x0.abs() + a["x0_pred_last"].to("cpu").abs()) / r.abs()
    return size


def _first_order(x0_pred, t, t_prev, xt, ac, *, sign=1.0, ratio_power=1.0, alpha_of="prev", lam_scale=1.0):
    """The first-order step with one known mistake switched on (float64, for diagnoses)."""
    a, a_prev = alpha_bar(ac, t), alpha_bar(ac, t_prev)
    h = lam_scale * (ref.dpm_lambda(a_prev) - ref.dpm_lambda(a))
    alpha = (a_prev if alpha_of == "prev" else a).sqrt()
    return ((1 - a_prev) / (1 - a)).sqrt() ** ratio_power * xt - alpha * torch.expm1(-sign * h) * x0_pred


def _with(**mistake):
    return lambda x0_pred, t, t_prev, xt, ac: _first_order(x0_pred, t, t_prev, xt, ac, **mistake)


FIRST_ORDER_DIAGNOSES = (
    Diagnosis(_with(sign=-1.0), "your step matches e^{h} − 1 in place of e^{−h} − 1: h = λ_prev − λ_t > 0 and the "
                                "coefficient of x̂₀ is −α_prev(e^{−h} − 1) = α_prev(1 − e^{−h})"),
    Diagnosis(_with(ratio_power=-1.0), "the coefficient of x_t is σ_prev/σ_t (< 1, towards the data): yours is "
                                       "inverted"),
    Diagnosis(_with(alpha_of="t"), "the coefficient of x̂₀ is −α_prev(e^{−h} − 1): yours uses α_t"),
    Diagnosis(_with(lam_scale=2.0), "your h is twice λ_prev − λ_t: λ is half the log-SNR, log α − log σ"),
)


def _second_order(x0_pred, x0_pred_last, t, t_prev, t_last, xt, ac, *, invert_r=False, half=0.5, d1_sign=1.0):
    ratio, phi, lam = _coefficients(ac, t, t_prev)
    h = ref.dpm_lambda(alpha_bar(ac, t_prev)) - lam
    r = (lam - ref.dpm_lambda(alpha_bar(ac, t_last))) / h
    d1 = d1_sign * (x0_pred - x0_pred_last) * (r if invert_r else 1 / r)
    return ratio * xt - phi * x0_pred - half * phi * d1


def _with2(**mistake):
    return lambda *args: _second_order(*args, **mistake)


SECOND_ORDER_DIAGNOSES = (
    Diagnosis(_with2(invert_r=True), "your D₁ multiplies by r: D₁ = (x̂₀ − x̂₀_last)/r with r = (λ_t − λ_last)/h"),
    Diagnosis(_with2(half=1.0), "the correction is −½·α_prev(e^{−h} − 1)·D₁: yours has no ½"),
    Diagnosis(_with2(d1_sign=-1.0), "D₁ = (x̂₀ − x̂₀_last)/r, the newer prediction first: yours has the wrong sign"),
    Diagnosis(lambda x0, x0_last, t, t_prev, t_last, xt, ac: ref.dpm_solver_first_order_step(x0, t, t_prev, xt, ac),
              "your step is the first-order one: the 2M step adds −½·α_prev(e^{−h} − 1)·D₁"),
)

# -- dpm_solver_sample from a given x_T: values, model calls ----------------------------------------------


def eps_model(ctx: Context, mean, var, ac, dtype: torch.dtype, record: bool = True) -> dict:
    """The optimal ε-model of N(mean, diag(var)) with schedule ``ac``, evaluated in ``dtype`` in the student's process."""
    return ctx.model_spec("gaussian_eps", record=record, dtype=dtype, mean=mean, var=var, alphas_cumprod=ac)


@st.composite
def chain_cases(draw, max_steps: int = 25) -> dict:
    T = draw(st.one_of(st.integers(2, 12), st.sampled_from([50, 1000])))
    return {"T": T, "num_steps": draw(st.integers(1, min(T - 1, max_steps))), "schedule": draw(schedules),
            "shape": draw(data_shapes), "dtype": draw(dtypes), "schedule_dtype": draw(st.sampled_from(["float64", "data"])),
            "seed": draw(seeds)}


CHAIN_EXAMPLES = tuple({"T": 1000, "num_steps": n, "schedule": kind, "shape": (3, 2), "dtype": dtype,
                        "schedule_dtype": "float64", "seed": 0}
                       for kind in ("linear", "cosine") for dtype in ("float64", "float32") for n in (20, 3, 2, 1)) + (
    {"T": 10, "num_steps": 9, "schedule": "linear", "shape": (3, 2), "dtype": "float64", "schedule_dtype": "float64",
     "seed": 0},)


def build_sample(case: dict, ctx: Context, record: bool = True) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    mean, var = gaussian_params(case["shape"][1:], g, 1e-3, 10**0.5)
    x_T = gaussian(case["shape"], g, dtype, ctx)
    notes = {"eps_model": f"the optimal ε-model of Gaussian data N(μ, diag(s²)) over shape {tuple(case['shape'][1:])} "
                          f"(means ~ N(0, 1), variances in [0.001, 3]; {case['schedule']} schedule, T = {case['T']})",
             "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)}
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, dtype, record), "shape": tuple(case["shape"]),
                   "alphas_cumprod": ac, "num_steps": case["num_steps"]}, {"x_T": x_T}, notes=notes)


def model_data(a: dict) -> GaussianData:
    """The Gaussian data of the model spec, in float64 on the CPU: exactly the values the student's model uses."""
    params = a["eps_model"]["params"]
    return GaussianData(params["mean"].to("cpu", torch.float64), params["var"].to("cpu", torch.float64))


def chain_terms(inputs: Inputs) -> torch.Tensor:
    a = inputs.arguments()
    return laws.dpm_solver_chain_terms_size(model_data(a), a["alphas_cumprod"].to("cpu"), a["num_steps"],
                                            a["x_T"].to("cpu"))


MODEL_CALLS = ModelCalls(
    expected=lambda i: [(t, i.kwargs["x_T"].shape[0]) for t in
                        ref.dpm_solver_timesteps(i.args["alphas_cumprod"].shape[0], i.args["num_steps"]).tolist()],
    order="blocks", model="eps_model",
    what=lambda i: f"one evaluation of every sample at each of dpm_solver_timesteps({len(i.args['alphas_cumprod'])}, "
                   f"{i.args['num_steps']}), from the largest")


def _sampler_with(step_of):
    """A known mistake's sampler (from x_T): ``step_of(i, n)`` says which step i of n is: "first", "2m" or "2m-wrap"."""

    def wrong(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None):
        ts = ref.dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
        x, x0_last = x_T, torch.zeros_like(x_T)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            a = alphas_cumprod[t]
            eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            kind = step_of(i, len(ts))
            if kind == "first":
                x = ref.dpm_solver_first_order_step(x0, t, t_prev, x, alphas_cumprod)
            else:
                x = ref.dpm_solver_2m_step(x0, x0_last, t, t_prev, ts[i - 1], x, alphas_cumprod)
            x0_last = x0
        return x

    return wrong


SAMPLE_DIAGNOSES = (
    Diagnosis(_sampler_with(lambda i, n: "first"),
              "your sampler matches first-order steps everywhere (DDIM): the steps between the first and the last "
              "are 2M steps, with the x̂₀ of the step before"),
    Diagnosis(_sampler_with(lambda i, n: "first" if i == n - 1 else "2m"),
              "your first step is a 2M step: there is no previous x̂₀ yet, so the first step is first order"),
)

# -- dpm_solver_sample: which steps are first order, read off the states -------------------------------------

TRACED = Traced("dpm_solver_sample", model=0)

#: Each step is judged from the student's own state before it (the model's inputs), so one wrong step is named
#: alone. float64 throughout; the tolerance is TERMS_TOLERANCE's float64 one relative to the step's terms.
STEP_KIND_CASES = st.fixed_dictionaries({"T": st.just(1000), "num_steps": st.integers(3, 8), "schedule": schedules,
                                         "shape": st.just((4, 3)), "dtype": st.just("float64"),
                                         "schedule_dtype": st.just("float64"), "seed": seeds})
STEP_KIND_EXAMPLES = ({"T": 1000, "num_steps": 5, "schedule": "linear", "shape": (4, 3), "dtype": "float64",
                       "schedule_dtype": "float64", "seed": 0},)


def _states(inputs: Inputs, outcome) -> tuple[list[int], list[torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor]:
    a = inputs.arguments()
    out, states, _ = TRACED.states(outcome.value, a["x_T"].shape[0], tuple(a["x_T"].shape))
    ac = a["alphas_cumprod"].to("cpu", torch.float64)
    ts = ref.dpm_solver_timesteps(ac.shape[0], a["num_steps"]).tolist()
    if len(states) != len(ts):
        raise Mismatch(f"the model was evaluated on {len(states)} full batches; expected {len(ts)}, one per timestep")
    model = model_data(a).eps_model(ac)
    x0s = []
    for x, t in zip(states, ts):
        alpha, sigma = ac[t].sqrt(), (1 - ac[t]).sqrt()
        x0s.append((x - sigma * model(x, torch.full((x.shape[0],), t))) / alpha)
    result = as_tensor(out, "dpm_solver_sample's result").detach().to("cpu", torch.float64)
    return ts, states, result, x0s, ac


def _judge_transition(ts, states, result, x0s, ac, i, second_order: bool, what: str) -> None:
    t, t_prev = ts[i], ts[i + 1] if i + 1 < len(ts) else -1
    got = states[i + 1] if i + 1 < len(ts) else result
    if second_order:
        expected = ref.dpm_solver_2m_step(x0s[i], x0s[i - 1], t, t_prev, ts[i - 1], states[i], ac)
    else:
        expected = ref.dpm_solver_first_order_step(x0s[i], t, t_prev, states[i], ac)
    ratio, phi, lam = _coefficients(ac, t, t_prev)
    scale = ratio * states[i].abs() + phi.abs() * x0s[i].abs()
    if second_order:
        r = (lam - ref.dpm_lambda(alpha_bar(ac, ts[i - 1]))) / (ref.dpm_lambda(alpha_bar(ac, t_prev)) - lam)
        scale = scale + 0.5 * phi.abs() * (x0s[i].abs() + x0s[i - 1].abs()) / r.abs()
    compare(got, expected, TERMS_TOLERANCE, f"{what} (from t = {t} to {t_prev}), computed from your state at t = {t}",
            scale=scale, scale_what="the size of the step's terms")


def judge_first_step(inputs: Inputs, outcome) -> None:
    ts, states, result, x0s, ac = _states(inputs, outcome)
    _judge_transition(ts, states, result, x0s, ac, 0, False, "the first step, first order")


def judge_last_step(inputs: Inputs, outcome) -> None:
    ts, states, result, x0s, ac = _states(inputs, outcome)
    _judge_transition(ts, states, result, x0s, ac, len(ts) - 1, False,
                      "the last step to the data, first order (it returns x̂₀)")


def judge_middle_steps(inputs: Inputs, outcome) -> None:
    ts, states, result, x0s, ac = _states(inputs, outcome)
    for i in range(1, len(ts) - 1):
        _judge_transition(ts, states, result, x0s, ac, i, True, f"step {i + 1} of {len(ts)}, a 2M step")


# -- dpm_solver_sample: the measured order of convergence --------------------------------------------------

#: The problem: Gaussian data (8 coordinates, s² from 0.05 to 4, means in [−1, 1]), whose probability-flow ODE
#: has the exact affine flow ``laws.pf_ode_flow``, on a schedule linear in λ from 5 to −5 over T = 961
#: (``laws.lambda_uniform_alphas_cumprod``): with 40, 80 and 160 steps (divisors of T − 1 = 960) every step
#: has the same h = 10/N and r = 1, the regime the order is defined in; on the course's schedules the λ-steps
#: near t = 0 do not shrink with N (λ ≈ −½ log t there) and the measured slopes wander between 1 and 2.
#: The error is measured against ``laws.dpm_solver_exact_endpoint``: the exact flow to the last timestep, then
#: the last first-order step to the data, whose own O(σ²) shrinkage (it returns E[x₀ | x], not the ODE's
#: endpoint) would otherwise make every sampler look first order. The first step, first order, errs by O(h²)
#: locally, the same order as 2M's global error: it does not lower the order. Measured (reference, every
#: seed's data): p = 1.96–1.99 for DPM-Solver++(2M), 0.97–0.99 for DDIM (every step first order). The band
#: [1.6, 2.4] is ±0.4 around 2: ten times the pre-asymptotic deviation, and DDIM's 1 is 0.6 beyond it.
#: Errors at 160 steps are ≥ 1e-5 data standard deviations, 1e9 times float64 round-off, so the slope is
#: that of the method; the inputs are float64.
ORDER_STEPS = (40, 80, 160)
ORDER_T = 961
ORDER_BAND = (1.6, 2.4)


def order_runs(ns, eps_model, shape, alphas_cumprod, num_steps, x_T, _function, _step_counts):
    """Probe: the sampler from one x_T with each step count (``num_steps`` is the first)."""
    return tuple(getattr(ns, _function)(eps_model, shape, alphas_cumprod, n, x_T=x_T) for n in _step_counts)


def build_order(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    mean = 2 * torch.rand(8, generator=g, dtype=torch.float64) - 1
    var = 10 ** torch.linspace(math.log10(0.05), math.log10(4.0), 8, dtype=torch.float64)
    ac = laws.lambda_uniform_alphas_cumprod(ORDER_T)
    x_T = torch.randn((16, 8), generator=g, dtype=torch.float64).to(ctx.device)
    inputs = Inputs({"eps_model": eps_model(ctx, mean, var, ac, torch.float64, record=False), "shape": (16, 8),
                     "alphas_cumprod": ac.to(ctx.device), "num_steps": ORDER_STEPS[0], "x_T": x_T},
                    notes={"eps_model": "the optimal ε-model of Gaussian data, 8 coordinates, s² from 0.05 to 4",
                           "alphas_cumprod": f"a schedule linear in λ from 5 to −5, T = {ORDER_T} (float64)",
                           "num_steps": f"{', '.join(map(str, ORDER_STEPS))} (one run each)"})
    inputs.hidden.update({"_function": "dpm_solver_sample", "_step_counts": ORDER_STEPS})
    return inputs


def judge_order(inputs: Inputs, outcome) -> None:
    a = inputs.arguments()
    data, ac, x_T = model_data(a), a["alphas_cumprod"].to("cpu"), a["x_T"].to("cpu")
    outs = as_tuple(outcome.value, tuple(f"{n} steps" for n in ORDER_STEPS), "the runs' results")
    errors = []
    for n, out in zip(ORDER_STEPS, outs):
        x = as_tensor(out, f"dpm_solver_sample's result with {n} steps").detach().to("cpu", torch.float64)
        if tuple(x.shape) != tuple(x_T.shape) or not bool(torch.isfinite(x).all()):
            raise Mismatch(f"with {n} steps the result has shape {tuple(x.shape)} or non-finite values")
        errors.append(float(((x - laws.dpm_solver_exact_endpoint(data, ac, n, x_T)) / data.var.sqrt()).abs().max()))
    if min(errors) <= 0:
        raise Mismatch("the error against the ODE's exact solution is 0: the order cannot be measured")
    p = laws.convergence_order(ORDER_STEPS, errors)
    shown = ", ".join(f"{n} steps: {e:.2e}" for n, e in zip(ORDER_STEPS, errors))
    if not ORDER_BAND[0] <= p <= ORDER_BAND[1]:
        hint = " (first order: is every step a DDIM step?)" if 0.6 <= p <= 1.4 else ""
        raise Mismatch(f"the measured order is {p:.2f}{hint}; DPM-Solver++(2M) is second order, so its error falls "
                       f"as NFE^(−2) and the order must lie in [{ORDER_BAND[0]}, {ORDER_BAND[1]}]. Errors against the "
                       f"ODE's exact solution (data standard deviations): {shown}", got=f"{p:.3f}", expected="≈ 2")


# -- dpm_solver_sample: the generator and the exact law -----------------------------------------------------

#: As in ddim: with num_steps = 1 the output moves by √ᾱ·s²/(ᾱs² + 1 − ᾱ) ≈ 6e-3·s² per unit of x_T, close to
#: float32's resolution, so s² ≥ 1 and ≥ 8 elements make two seeds' samples differ (P(equal) ≤ 1e-24).
GENERATOR_MIN_ELEMENTS = 8
SAME_SEED = "without x_T, draws from `generator`: the same seed gives the same samples"
REPRODUCIBLE = Reproducible("dpm_solver_sample", other_seed=True,
                            advice="dpm_solver_sample must draw x_T from `generator` alone, never from torch's "
                                   "global random state (torch.randn(shape, generator=generator))")


@st.composite
def generator_cases(draw) -> dict:
    T = draw(st.sampled_from([10, 50, 1000]))
    return {"T": T, "num_steps": draw(st.integers(1, min(T - 1, 8))),
            "shape": draw(data_shapes.filter(lambda s: math.prod(s) >= GENERATOR_MIN_ELEMENTS)), "seed": draw(seeds)}


GENERATOR_EXAMPLES = ({"T": 1000, "num_steps": 4, "shape": (4, 2), "seed": 0},
                      {"T": 1000, "num_steps": 1, "shape": (8,), "seed": 0})


def build_generators(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac = schedule_alphas_cumprod("linear", case["T"]).to(ctx.device)
    mean, var = gaussian_params(case["shape"][1:], g, 1.0, 10**0.5)  # s² ≥ 1: see GENERATOR_MIN_ELEMENTS
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, torch.get_default_dtype(), record=False),
                   "shape": tuple(case["shape"]), "alphas_cumprod": ac, "num_steps": case["num_steps"]},
                  {"generator": ctx.generator_spec(seed=case["seed"])},
                  notes={"eps_model": f"the optimal ε-model of Gaussian data over shape {tuple(case['shape'][1:])}",
                         "alphas_cumprod": schedule_note("linear", case["T"], torch.float64)})


#: 16 coordinates, means of both signs, variances from 1e-4 to 3 (ddim's law data): the output's spread is
#: P·1 with P from ~1e-2 to ~1.7, so a wrongly drawn x_T (another scale, shared by the batch, uniform) or
#: a wrong map shows. Two calls of 4096 samples, 10 steps, SAMPLER_LAW's battery at 1e-6.
LAW_MEAN = torch.tensor([1.5, -1.0, 0.5, -0.25, 2.0, 0.0, -1.5, 1.0, -0.5, 0.25, -2.0, 0.75, 1.25, -0.75, 0.1, -0.1],
                        dtype=torch.float64)
LAW_VAR = 10 ** torch.linspace(-4.0, 0.5, 16, dtype=torch.float64)
LAW_BATCH, LAW_STEPS = 4096, 10


def sample_draw(ctx: Context) -> LawDraw:
    """dpm_solver_sample with x_T = None, 10 steps: the output is P·x_T + Q with x_T ~ N(0, I), exactly Gaussian.

    Power (65,536 residuals a call, each of the nine tests at 1.1e-7: |z| ≤ 5.3), on the bug catalogue: x_T
    drawn uniform on [0, 1) (torch.rand) shifts every residual by P·½/P = ½ a standard deviation, a pooled
    mean z of 128 (measured) and a mean square of 0.33; caught on every seed (P(miss) < 1e-15).
    """
    ac = schedule_alphas_cumprod("linear", 1000)
    law = laws.dpm_solver_sample_law(GaussianData(LAW_MEAN, LAW_VAR), ac, LAW_STEPS)
    samples = [Sample(Inputs({"eps_model": eps_model(ctx, LAW_MEAN, LAW_VAR, ac, torch.get_default_dtype(), False),
                              "shape": (LAW_BATCH, 16), "alphas_cumprod": ac.to(ctx.device), "num_steps": LAW_STEPS},
                             {"generator": ctx.generator_spec("sample law", i)},
                             notes={"eps_model": "the optimal ε-model of Gaussian data N(μ, diag(s²)), 16 coordinates, "
                                                 "s² from 1e-4 to 3", "alphas_cumprod": "linear schedule, T = 1000"}),
                      law, label, what, (LAW_BATCH, 16))
               for i, (label, what) in enumerate((("first call", "dpm_solver_sample's result"),
                                                  ("second call", "dpm_solver_sample's second result")))]
    return LawDraw(samples, note="Each output was standardised by the exact law of DPM-Solver++(2M) over 10 steps "
                                 "from x_T ~ N(0, I) (an affine map of x_T), on Gaussian data with the optimal ε-model.")


# -- the exercise ------------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="dpm_solver",
    title="DPM-Solver++(2M): the probability-flow ODE in λ",
    functions=(
        ("dpm_lambda", ("alpha_cumprod",)),
        ("dpm_solver_timesteps", ("T", "num_steps")),
        ("dpm_solver_first_order_step", ("x0_pred", "t", "t_prev", "xt", "alphas_cumprod")),
        ("dpm_solver_2m_step", ("x0_pred", "x0_pred_last", "t", "t_prev", "t_last", "xt", "alphas_cumprod")),
        ("dpm_solver_sample", ("eps_model", "shape", "alphas_cumprod", "num_steps", "generator", "x_T")),
    ),
    checks=(
        Agreement(function="dpm_lambda", cases=lambda_cases(), build=build_lambda, examples=LAMBDA_EXAMPLES,
                  reference=ref.dpm_lambda, tolerance=LAMBDA_TOLERANCE, scale=lambda_terms,
                  scale_what="the size of ½ log ᾱ and ½ log(1 − ᾱ)", dtype_from="alpha_cumprod",
                  device_from="alpha_cumprod", points=2, dtype_points=1, diagnoses=LAMBDA_DIAGNOSES,
                  diagnosis_tolerance=DIAGNOSIS_TOLERANCE),
        Property(
            function="dpm_solver_timesteps", cases=timestep_cases(), examples=TIMESTEP_EXAMPLES,
            build=lambda case, ctx: Inputs({"T": case["T"], "num_steps": case["num_steps"]}),
            max_examples=60, diagnoses=TIMESTEP_DIAGNOSES,
            aspects=(Aspect("equal diffusers' linspace timesteps", 3, judge_timesteps),
                     output_aspect("a LongTensor on the CPU", 1, dtype=torch.long, device=torch.device("cpu"),
                                   gated_by=("equal diffusers' linspace timesteps",),
                                   dtype_source="timesteps are a LongTensor (torch.long), so that they index "
                                                "alphas_cumprod and go to the model as they are")),
        ),
        Agreement(function="dpm_solver_first_order_step", cases=step_cases(), build=build_step,
                  examples=FIRST_ORDER_EXAMPLES, max_examples=40, reference=ref.dpm_solver_first_order_step,
                  scale=step_terms, points=3, dtype_from="xt", device_from="xt", dtype_points=1,
                  dtype_what="output dtype and device follow xt", diagnoses=FIRST_ORDER_DIAGNOSES, **DETERMINISTIC),
        Agreement(function="dpm_solver_2m_step", cases=step_cases(second_order=True), build=build_step,
                  examples=SECOND_ORDER_EXAMPLES, max_examples=40, reference=ref.dpm_solver_2m_step,
                  scale=step_terms, points=3, dtype_from="xt", device_from="xt", dtype_points=1,
                  dtype_what="output dtype and device follow xt", diagnoses=SECOND_ORDER_DIAGNOSES, **DETERMINISTIC),
        Agreement(function="dpm_solver_sample", cases=chain_cases(), build=build_sample, examples=CHAIN_EXAMPLES,
                  reference=ref.dpm_solver_sample, scale=chain_terms,
                  what="from a given x_T it matches the reference", points=3, max_examples=30,
                  dtype_from="x_T", device_from="x_T", dtype_points=1, dtype_what="output dtype and device follow x_T",
                  extra_aspects=(MODEL_CALLS.aspect("calls the model once per sample at each timestep, in order"),),
                  diagnoses=SAMPLE_DIAGNOSES, **DETERMINISTIC),
        Property(function="dpm_solver_sample", cases=STEP_KIND_CASES,
                 build=lambda case, ctx: TRACED.inputs(build_sample(case, ctx, record=False)),
                 examples=STEP_KIND_EXAMPLES, max_examples=4, probe=TRACED.probe,
                 aspects=(Aspect("the first step is first order (no previous x̂₀ yet)", 1, judge_first_step),
                          Aspect("the last step, to the data, is first order", 1, judge_last_step),
                          Aspect("every other step is a 2M step with the previous x̂₀", 1, judge_middle_steps))),
        Property(function="dpm_solver_sample", cases=st.fixed_dictionaries({"seed": seeds}), build=build_order,
                 examples=({"seed": 0},), max_examples=1, probe=order_runs,
                 aspects=(Aspect(f"measured order of convergence ≈ 2 on Gaussian data ({', '.join(map(str, ORDER_STEPS))} "
                                 "steps against the ODE's exact solution)", 2, judge_order, shrink=False),)),
        Property(
            function="dpm_solver_sample", cases=generator_cases(), build=REPRODUCIBLE.build(build_generators),
            examples=GENERATOR_EXAMPLES, max_examples=4, probe=REPRODUCIBLE.probe,
            aspects=(REPRODUCIBLE.aspect(SAME_SEED, shape=lambda inputs: inputs.args["shape"], finite=True),
                     REPRODUCIBLE.form_aspect(
                         "without x_T, x_T is drawn in the default dtype on the generator's device", dtype="default",
                         device="generator", why=": without x_T, x_T is drawn in the default dtype on the generator's "
                                                 "device, as ddim_sample's, and the samples keep its dtype",
                         gated_by=(SAME_SEED,))),
        ),
        Law(function="dpm_solver_sample", name="with x_T drawn, the samples follow the exact law of the sampler",
            draw=sample_draw, tag="sample law", points=2, **SAMPLER_LAW),
    ),
)
