"""Checks of exercise 5, ddim: timesteps, σ_t(η), one DDIM step, the sampler, inversion.

Point budget (31): ddim_timesteps 4, ddim_sigma 3, ddim_step 6 (of which 2 for "η = 1 is
DDPM"), ddim_sample 11 (η = 0 values 3, dtype 1, model calls 1, the generator 1 + 1, two
law checks 2 + 2), ddim_invert 7 (values 3, round trip 2, dtype 1, model calls 1).

Two tiers (README, "How grading works" → "Statistics"). **Deterministic**: ddim_step with its noise
injected, ddim_sample with η = 0 from a given x_T, and ddim_invert are compared with the
reference on hypothesis-drawn inputs, with the optimal ε-model of Gaussian data
(``reference.toy``), relative to the *size of the terms* of each update carried through the
chain (``reference.laws.ddim_chain_terms_size``): DDIM divides by √ᾱ_t (2·10⁴ at the end of
the cosine schedule), so no tolerance relative to the output alone is both safe for float32
and tight elsewhere. **On the exact law**: ddim_sample with η > 0 draws its own noise, so
its output is tested against the exact law of the discretised sampler on Gaussian data
(``reference.laws.ddim_sample_law``) by two :class:`Law` checks at level 1e-6 each: the
exercise's false-failure probability is at most 2e-6 (Bonferroni).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from grader.checks import (Agreement, Aspect, Context, Diagnosis, Inputs, Law, LawDraw, Mismatch, ModelCalls,
                           Property, Reproducible, Sample, Tolerance, as_tensor, compare, output_aspect)
from grader.exercises import Exercise
from grader.exercises._common import (DTYPES, SCHEDULE_TOLERANCE, data_shapes, dtypes, gaussian, gaussian_params, horizons,
                                      schedule_alphas_cumprod, schedule_note, schedules, seeds, SAMPLER_LAW)
from reference import ddim as ref
from reference import laws
from reference.laws import alpha_bar
from reference.toy import GaussianData

SPACINGS = ("leading", "trailing", "linspace")

# -- tolerances ----------------------------------------------------------------------------------

#: DDIM's update x' = √ᾱ'·(x − √(1 − ᾱ)·ε)/√ᾱ + √(1 − ᾱ' − σ²)·ε + σ·z is a sum of
#: terms that can be large and cancel (1/√ᾱ_t reaches 157 at the end of the linear
#: schedule and 2·10⁴ at the end of the cosine one), so the round-off of a correct
#: implementation is bounded relative to M = Σ |terms| (``laws.ddim_terms_size``), not to
#: |x'|. In float32 each coefficient of a correct implementation is accurate to
#: u/(1 − ᾱ) relative (u = 6e-8), up to 1.5e-3 at t = 0 of the cosine schedule when
#: a float64 schedule is cast to float32 before 1 − ᾱ is formed (the same loss as
#: SCHEDULE_TOLERANCE), and every other operation adds a few u: 3e-3·M keeps a 2x
#: margin (measured: correct float32 steps, samplers and inversions, one that casts the
#: schedule first included, stay below 3e-5·M). In float64 the same analysis gives
#: ~1e-12·M; 1e-9·M leaves 1000x. Along a chain the bound is carried through the later
#: steps' slopes (``laws.ddim_chain_terms_size``). Hypothesis draws float64 cases and every
#: boundary example is run in float64 too, so a wrong coefficient (≥ 1e-4 relative) is
#: caught at full precision.
TERMS_TOLERANCE = Tolerance(rtol32=3e-3, atol32=1e-6, rtol64=1e-9, atol64=1e-12,
                            why="relative to the size of the update's terms: float32 coefficients lose up to "
                                "u/(1 − ᾱ_0) ≈ 1.5e-3, x̂₀ amplifies by 1/√ᾱ_t")

#: Matching a known mistake (a hint, never a grade): the wrong formula must reproduce
#: the student's values on every input, float64 ones included (at 1e-7 relative), so a
#: looser float32 level only lets ill-conditioned float32 cases agree.
DIAGNOSIS_TOLERANCE = Tolerance(rtol32=1e-2, atol32=1e-3, rtol64=1e-7, atol64=1e-9,
                                why="matching a known mistake on every input; float32 cases of DDIM are ill-conditioned")
#: What the deterministic checks share: the term-size tolerance (with ``scale=``) and the diagnosis tolerance.
DETERMINISTIC = {"tolerance": TERMS_TOLERANCE, "scale_what": "the size of the update's terms",
                 "diagnosis_tolerance": DIAGNOSIS_TOLERANCE}

#: Inversion followed by η = 0 sampling with the same steps is not the identity: the
#: inversion evaluates ε at the start of each step, sampling at its end, a first-order
#: error. On the round-trip cases (T = 1000, num_steps ≥ 200, data means in [−2, 2] and
#: variances in [0.1, 3], |x₀ − μ| ≤ 3 std) the exact error of a correct inversion, an
#: affine function of (μ, x₀) computed with reference.laws, is at most 0.152 data standard
#: deviations (tests/exercises/test_ddim_checks.py checks this over the whole case space);
#: 0.3 leaves a 2x margin, and float32 round-off adds < 1e-4.
ROUND_TRIP_STDS = 0.3
ROUND_TRIP = Tolerance(rtol32=ROUND_TRIP_STDS, atol32=0.0, rtol64=ROUND_TRIP_STDS, atol64=0.0,
                       why="2x the exact first-order error of a correct inversion, in data standard deviations")

# -- ddim_timesteps ------------------------------------------------------------------------------


@st.composite
def timestep_cases(draw) -> dict:
    T = draw(st.one_of(st.integers(1, 40), st.integers(41, 1000), st.sampled_from([1000, 999, 100])))
    num_steps = draw(st.one_of(st.integers(1, min(T, 60)), st.integers(1, T)))
    return {"T": T, "num_steps": num_steps, "spacing": draw(st.sampled_from(SPACINGS))}


TIMESTEP_EXAMPLES = tuple({"T": T, "num_steps": n, "spacing": s} for s in SPACINGS
                          for T, n in ((1000, 50), (1000, 1), (10, 10), (10, 3), (17, 7), (1000, 61), (1000, 3), (1, 1)))


def _only(which: str, wrong):
    """A mistake of one spacing: the reference's timesteps for the others (a diagnosis must match every input)."""

    def mistake(T, num_steps, spacing="leading"):
        return wrong(T, num_steps) if spacing == which else ref.ddim_timesteps(T, num_steps, spacing)

    return mistake


TIMESTEP_DIAGNOSES = (
    Diagnosis(lambda T, num_steps, spacing: ref.ddim_timesteps(T, num_steps, spacing).flip(0),
              "your timesteps are in ascending order; DDIM visits them from the noisiest down (descending)"),
    Diagnosis(_only("leading", lambda T, n: ref.ddim_timesteps(T, n, "leading") + 1),
              "your leading timesteps are one too large (diffusers' steps_offset = 1); the course's leading ones "
              "start at 0"),
    Diagnosis(_only("leading", lambda T, n: torch.arange(0, T, max(T // n, 1)).flip(0)),
              "arange(0, T, T // num_steps) has more than num_steps entries when num_steps does not divide T; "
              "take arange(num_steps) · (T // num_steps)"),
    *(Diagnosis(_only("trailing", wrong), "your trailing timesteps are one too large: round(arange(T, 0, "
                "−T/num_steps)) − 1, the −1 makes T − 1 the first")
      for wrong in (lambda T, n: ref.ddim_timesteps(T, n, "trailing") + 1,
                    lambda T, n: torch.from_numpy(np.round(np.arange(T, 0, -T / n)).astype(np.int64)))),
    Diagnosis(_only("linspace", lambda T, n: torch.from_numpy(np.linspace(0, T, n).round()[::-1].astype(np.int64))),
              "linspace runs from 0 to T − 1, the last valid timestep, not to T"),
    Diagnosis(_only("trailing", lambda T, n: torch.from_numpy(np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)),
              "arange(T, 0, −T/num_steps) with a float step can overshoot by one entry through round-off (diffusers "
              "then ends with a spurious −1); keep the first num_steps entries"),
)


def judge_timesteps(inputs: Inputs, outcome) -> None:
    """The values of diffusers' set_timesteps, exactly (any integer dtype here; the dtype is its own test)."""
    T, n, spacing = inputs.args["T"], inputs.args["num_steps"], inputs.kwargs["spacing"]
    expected = ref.ddim_timesteps(T, n, spacing).tolist()
    got = as_tensor(outcome.value, "the result")
    values = got.detach().to("cpu").flatten().tolist()
    if got.is_floating_point() and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    if got.ndim != 1 or got.numel() != n:
        raise Mismatch(f"the result has shape {tuple(got.shape)}; expected ({n},), one entry per sampling step",
                       got=str(values[:64]), expected=str(expected[:64]))
    if values != expected:
        wrong = [i for i, (a, b) in enumerate(zip(values, expected)) if a != b]
        raise Mismatch(f"the timesteps differ from the expected ones at {len(wrong)} of {n} positions, first at "
                       f"index {wrong[0]}: got {values[wrong[0]]}, expected {expected[wrong[0]]}",
                       got=str(values[:64]), expected=str(expected[:64]))


# -- ddim_sigma ------------------------------------------------------------------------------------


@st.composite
def sigma_cases(draw) -> dict:
    T, batch, pairs = draw(horizons), draw(st.integers(0, 5)), []  # batch 0: 0-dim tensors
    for _ in range(max(batch, 1)):
        t = draw(st.integers(0, T - 1))
        pairs.append((t, draw(st.one_of(st.just(-1), st.just(t - 1), st.integers(-1, t - 1)))))
    return {"T": T, "schedule": draw(schedules), "pairs": tuple(pairs), "scalar": batch == 0, "dtype": draw(dtypes),
            "eta": draw(st.sampled_from([0.0, 1.0, 0.5, 0.3]))}


SIGMA_EXAMPLES = tuple(
    {"T": 1000, "schedule": kind, "pairs": ((999, 998), (1, 0), (0, -1), (500, 480), (999, -1)), "scalar": False,
     "dtype": dtype, "eta": eta}
    for kind in ("linear", "cosine") for dtype in ("float64", "float32") for eta in (1.0, 0.5)
) + ({"T": 10, "schedule": "linear", "pairs": ((5, 2),), "scalar": True, "dtype": "float64", "eta": 0.0},)


def build_sigma(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    ac = schedule_alphas_cumprod(case["schedule"], case["T"])
    a_t = torch.stack([alpha_bar(ac, t) for t, _ in case["pairs"]])
    a_prev = torch.stack([alpha_bar(ac, p) for _, p in case["pairs"]])
    if case["scalar"]:
        a_t, a_prev = a_t[0], a_prev[0]
    ts, prevs = (", ".join(str(pair[i]) for pair in case["pairs"]) for i in (0, 1))
    return Inputs({"alpha_cumprod_t": a_t.to(dtype).to(ctx.device), "alpha_cumprod_prev": a_prev.to(dtype).to(ctx.device),
                   "eta": case["eta"]},
                  notes={"alpha_cumprod_t": f"{case['dtype']} ᾱ_t at t = [{ts}] ({case['schedule']} schedule, "
                                            f"T = {case['T']})",
                         "alpha_cumprod_prev": f"{case['dtype']} ᾱ_prev at t_prev = [{prevs}] (ᾱ = 1 for t_prev = −1)"})


SIGMA_DIAGNOSES = (
    Diagnosis(lambda a_t, a_prev, eta: ref.ddim_sigma(a_t, a_prev, eta**2),
              "your σ matches η² in place of η: η multiplies the standard deviation, not the variance"),
    Diagnosis(lambda a_t, a_prev, eta: eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev),
              "your σ matches σ²: both factors are under square roots"),
    Diagnosis(lambda a_t, a_prev, eta: eta * ((1 - a_t) / (1 - a_prev)).sqrt() * (1 - a_t / a_prev).sqrt(),
              "the first factor is √((1 − ᾱ_prev)/(1 − ᾱ_t)): yours has the ratio inverted"),
    Diagnosis(lambda a_t, a_prev, eta: eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_prev / a_t).abs().sqrt(),
              "the second factor is √(1 − ᾱ_t/ᾱ_prev), with ᾱ_t/ᾱ_prev = α's product over the skipped steps, "
              "which is ≤ 1"),
)

# -- ddim_step -------------------------------------------------------------------------------------


def _schedule(case: dict, ctx: Context) -> tuple[torch.Tensor, torch.dtype, torch.dtype]:
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    ac = schedule_alphas_cumprod(case["schedule"], case["T"])
    return ac.to(schedule_dtype).to(ctx.device), dtype, schedule_dtype


@st.composite
def step_cases(draw, ddpm: bool = False) -> dict:
    """One DDIM step: any t and t_prev < t (−1 often), η in {0, 0.2, 0.5, 1}; for ``ddpm``, t_prev = t − 1 and η = 1."""
    T = draw(horizons)
    t = draw(st.integers(0, T - 1))
    if ddpm:
        t_prev, eta = t - 1, 1.0
    else:
        t_prev = draw(st.one_of(st.just(-1), st.integers(-1, t - 1)))
        eta = draw(st.sampled_from([0.0, 1.0, 0.5, 0.2]))
    return {"T": T, "schedule": draw(schedules), "shape": draw(data_shapes), "dtype": draw(dtypes),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])),
            "t": t, "t_prev": t_prev, "eta": eta, "seed": draw(seeds)}


def _step_examples(pairs: tuple, etas: tuple) -> tuple:
    return tuple({"T": 1000, "schedule": kind, "shape": (3, 2), "dtype": dtype, "schedule_dtype": "float64", "t": t,
                  "t_prev": t_prev, "eta": eta, "seed": 0} for kind in ("linear", "cosine")
                 for dtype in ("float64", "float32") for (t, t_prev), eta in zip(pairs, etas))


#: t = 0 and T − 1 to t_prev = −1 (ᾱ_prev = 1, σ = 0), consecutive steps at both ends with η = 1, a skip with η = ½.
STEP_EXAMPLES = _step_examples(((999, -1), (0, -1), (999, 998), (1, 0), (500, 480), (999, 899)),
                               (0.0, 1.0, 1.0, 1.0, 0.5, 0.0))
DDPM_EXAMPLES = _step_examples(((999, 998), (1, 0), (0, -1), (500, 499)), (1.0, 1.0, 1.0, 1.0))


def build_step(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    eps, xt, noise = (gaussian(case["shape"], g, dtype, ctx) for _ in range(3))
    return Inputs({"eps": eps, "t": case["t"], "t_prev": case["t_prev"], "xt": xt, "alphas_cumprod": ac},
                  {"eta": case["eta"], "noise": noise},
                  notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)})


def step_terms(a: Inputs) -> torch.Tensor:
    """The size of the step's terms (``laws.ddim_terms_size``), from its float64 inputs."""
    a = a.arguments()
    a_t, a_prev = alpha_bar(a["alphas_cumprod"], a["t"]), alpha_bar(a["alphas_cumprod"], a["t_prev"])
    sigma = ref.ddim_sigma(a_t, a_prev, a["eta"]) if a["eta"] else torch.zeros((), dtype=torch.float64)
    return laws.ddim_terms_size(a["xt"], a["eps"], a_t, a_prev, sigma, a["noise"]).cpu()


def ddpm_step(eps, t, t_prev, xt, alphas_cumprod, eta=1.0, noise=None):
    """DDPM's ancestral step, from the posterior (``laws.ddpm_ancestral_step``), for t_prev = t − 1 and η = 1."""
    return laws.ddpm_ancestral_step(eps, t, xt, alphas_cumprod, noise)


def _wrong_step(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None, *, direction_sigma=True, x0_power=0.5,
                wrap=False, direction_noise=False, sigma_always=False):
    """The step with one known mistake switched on (float64, for diagnoses).

    ``sigma_always`` computes σ even for η = 0, as students do: 0·NaN = NaN where ᾱ_prev < ᾱ_t.
    """
    a_t = alpha_bar(alphas_cumprod, t)
    a_prev = alphas_cumprod[t_prev].double() if (wrap and t_prev < 0) else alpha_bar(alphas_cumprod, t_prev)
    sigma = ref.ddim_sigma(a_t, a_prev, eta) if (eta or sigma_always) else torch.zeros((), dtype=torch.float64)
    x0_hat = (xt - (1 - a_t).sqrt() * eps) / a_t**x0_power
    direction = (1 - a_prev - (sigma**2 if direction_sigma else 0)).clamp(min=0).sqrt()
    z = noise if noise is not None else torch.zeros_like(xt)
    return a_prev.sqrt() * x0_hat + direction * (z if direction_noise else eps) + sigma * z


def _step_with(**mistake):
    return lambda *a, **k: _wrong_step(*a, **k, **mistake)


_WRAP_HINT = "at t_prev = −1 you used alphas_cumprod[−1] = ᾱ_{T−1} ≈ 0; ᾱ_prev = 1 there (the clean data)"

STEP_DIAGNOSES = (
    Diagnosis(_step_with(direction_sigma=False),
              "your step matches the direction term √(1 − ᾱ_prev)·ε: with noise σ·z the direction must give up that "
              "variance, √(1 − ᾱ_prev − σ²)·ε, or x_prev has too much variance"),
    Diagnosis(_step_with(x0_power=1.0), "your x̂₀ divides by ᾱ_t: x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t"),
    Diagnosis(_step_with(wrap=True), _WRAP_HINT),
    Diagnosis(_step_with(wrap=True, sigma_always=True),
              _WRAP_HINT + " (and since ᾱ_{T−1} < ᾱ_t, σ = η·…·√(1 − ᾱ_t/ᾱ_prev) is NaN, even times η = 0)"),
    Diagnosis(_step_with(direction_noise=True),
              "your direction term points along the fresh noise z; it points along the predicted ε"),
)

# -- ddim_sample and ddim_invert: the deterministic checks -----------------------------------------


def _chain(case: dict, ctx: Context, min_log10_var: float = -3.0) -> tuple:
    """A chain case's generator, schedule, data dtype, Gaussian data (μ ~ N(0, 1), s² log-uniform in
    [10^min_log10_var, 10^0.5]) and notes."""
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    mean, var = gaussian_params(case["shape"][1:], g, 10**min_log10_var, 10**0.5)
    notes = {"eps_model": f"the optimal ε-model of Gaussian data N(μ, diag(s²)) over shape {tuple(case['shape'][1:])} "
                          f"(means ~ N(0, 1), variances in [{10**min_log10_var:g}, 3]; {case['schedule']} schedule, "
                          f"T = {case['T']})",
             "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)}
    return g, ac, dtype, mean, var, notes


def eps_model(ctx: Context, mean, var, ac, dtype: torch.dtype, record: bool = True) -> dict:
    """The optimal ε-model of N(mean, diag(var)) with schedule ``ac``, evaluated in ``dtype`` in the student's process."""
    return ctx.model_spec("gaussian_eps", record=record, dtype=dtype, mean=mean, var=var, alphas_cumprod=ac)


@st.composite
def chain_cases(draw, max_steps: int = 25) -> dict:
    T = draw(horizons)
    return {"T": T, "num_steps": draw(st.integers(1, min(T, max_steps))), "spacing": draw(st.sampled_from(SPACINGS)),
            "schedule": draw(schedules), "shape": draw(data_shapes), "dtype": draw(dtypes),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "generator": draw(st.booleans()),
            "seed": draw(seeds)}


def _chain_examples() -> tuple:
    base = {"T": 1000, "shape": (3, 2), "schedule_dtype": "float64", "generator": True, "seed": 0}
    cases = [{**base, "num_steps": n, "spacing": s, "schedule": kind, "dtype": dtype} for kind in ("linear", "cosine")
             for dtype in ("float64", "float32") for n, s in ((10, "leading"), (3, "trailing"), (1, "trailing"))]
    # Gaps that are not T // num_steps: linspace 9, 4, 0 and trailing 9, 7, 4, 1 (T = 10); every step (T = 10).
    cases += [{**base, "T": 10, "num_steps": n, "spacing": s, "schedule": "linear", "dtype": "float64"}
              for n, s in ((3, "linspace"), (4, "trailing"), (10, "leading"))]
    return tuple(cases)


CHAIN_EXAMPLES = _chain_examples()


def build_sample(case: dict, ctx: Context) -> Inputs:
    g, ac, dtype, mean, var, notes = _chain(case, ctx)
    kwargs = {"eta": 0.0, "spacing": case["spacing"], "x_T": gaussian(case["shape"], g, dtype, ctx)}
    if case["generator"]:
        kwargs["generator"] = ctx.generator_spec(seed=case["seed"])
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, dtype), "shape": tuple(case["shape"]),
                   "alphas_cumprod": ac, "num_steps": case["num_steps"]}, kwargs, notes=notes)


def build_invert(case: dict, ctx: Context) -> Inputs:
    g, ac, dtype, mean, var, notes = _chain(case, ctx)
    x0 = (mean + var.sqrt() * torch.randn(case["shape"], generator=g, dtype=torch.float64)).to(dtype).to(ctx.device)
    notes["x0"] = f"draws of the data, {case['dtype']} tensor of shape {tuple(x0.shape)}"
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, dtype), "x0": x0, "alphas_cumprod": ac,
                   "num_steps": case["num_steps"]}, {"spacing": case["spacing"]}, notes=notes)


def model_data(a: dict) -> GaussianData:
    """The Gaussian data of the model spec, in float64 on the CPU: exactly the values the student's model uses."""
    params = a["eps_model"]["params"]
    return GaussianData(params["mean"].to("cpu", torch.float64), params["var"].to("cpu", torch.float64))


def chain_terms(inputs: Inputs, start: str, moves) -> torch.Tensor:
    """The chain's term size (``laws.ddim_chain_terms_size``) from float64 inputs, walking ``moves(T, n, spacing)``."""
    a = inputs.arguments()
    ac = a["alphas_cumprod"].to("cpu")
    return laws.ddim_chain_terms_size(model_data(a), ac, moves(ac.shape[0], a["num_steps"], a["spacing"]),
                                      a[start].to("cpu"))


def model_calls(descending: bool) -> ModelCalls:
    """Every sample evaluated once at each timestep (any batching), from the first of the walk to its last."""

    def walk(inputs: Inputs) -> list:
        a = inputs.arguments()
        ts = ref.ddim_timesteps(a["alphas_cumprod"].shape[0], a["num_steps"], a["spacing"])
        return [(t, (a["x_T"] if "x_T" in a else a["x0"]).shape[0]) for t in (ts if descending else ts.flip(0)).tolist()]

    return ModelCalls(expected=walk, order="ends", model="eps_model",
                      what=lambda i: f"ddim_timesteps({len(i.args['alphas_cumprod'])}, {i.args['num_steps']}, "
                                     f"{i.kwargs['spacing']!r})")


def _sample_mistake(moves_of):
    """A known mistake's sampler (η = 0, from x_T): it walks ``moves_of(T, num_steps, spacing)``."""

    def wrong(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
        return laws.ddim_run_moves(eps_model, x_T, alphas_cumprod, moves_of(alphas_cumprod.shape[0], num_steps, spacing))

    return wrong


def _pairs(ts: list) -> list:
    """(previous, current) along ``ts``, the previous of the first being −1 (the data)."""
    return [(ts[i - 1] if i else -1, t) for i, t in enumerate(ts)]


def _invert_mistake(moves_of):
    def wrong(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
        return laws.ddim_run_moves(eps_model, x0, alphas_cumprod, moves_of(alphas_cumprod.shape[0], num_steps, spacing))

    return wrong


SAMPLE_DIAGNOSES = (
    Diagnosis(_sample_mistake(lambda T, n, s: laws.ddim_sample_moves(T, n, s)[:-1]),
              "your sampler stops at the last timestep of ddim_timesteps; one more step goes from there to the data "
              "(t_prev = −1, ᾱ_prev = 1)"),
    Diagnosis(_sample_mistake(lambda T, n, s: [m if m[1] >= 0 else (m[0], T - 1, m[2])
                                               for m in laws.ddim_sample_moves(T, n, s)]),
              "your last step goes to alphas_cumprod[−1] = ᾱ_{T−1} ≈ 0; it goes to the data, ᾱ_prev = 1"),
    Diagnosis(_sample_mistake(lambda T, n, s: [(t, t - T // n, t) for t in ref.ddim_timesteps(T, n, s).tolist()]),
              "your sampler steps from t to t − T // num_steps (diffusers' convention); the course steps from each "
              "entry of ddim_timesteps to the next one"),
)

INVERT_DIAGNOSES = (
    Diagnosis(_invert_mistake(lambda T, n, s: [(f, t, max(f, 0)) for f, t, _ in laws.ddim_invert_moves(T, n, s)]),
              "your inversion evaluates ε at the current timestep; as in diffusers' DDIMInverseScheduler it is "
              "evaluated at the target timestep (the current sample, the next timestep)"),
    Diagnosis(_invert_mistake(lambda T, n, s: laws.ddim_invert_moves(T, n, s)[1:]),
              "your inversion treats x₀ as the sample at the first timestep; it starts from the data, ᾱ = 1, and its "
              "first step goes to the first timestep"),
    Diagnosis(_invert_mistake(lambda T, n, s: [(f, t, t) for f, t in _pairs(ref.ddim_timesteps(T, n, s).tolist())]),
              "your inversion walks the timesteps from the largest down; it walks them up, from the smallest "
              "(ddim_timesteps reversed)"),
)

# -- ddim_invert: the round trip -------------------------------------------------------------------


@st.composite
def round_trip_cases(draw) -> dict:
    return {"T": 1000, "num_steps": draw(st.sampled_from([200, 250, 500])), "spacing": draw(st.sampled_from(SPACINGS)),
            "schedule": draw(schedules), "shape": (draw(st.integers(1, 8)), draw(st.integers(1, 4))),
            "dtype": draw(dtypes), "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "seed": draw(seeds)}


ROUND_TRIP_EXAMPLES = tuple({"T": 1000, "num_steps": 200, "spacing": s, "schedule": kind, "shape": (8, 4),
                             "dtype": "float32", "schedule_dtype": "float64", "seed": 0}
                            for s, kind in (("leading", "linear"), ("trailing", "cosine"), ("linspace", "cosine")))


def build_round_trip(case: dict, ctx: Context) -> Inputs:
    """Data with means in [−2, 2], variances in [0.1, 3], x₀ within 3 standard deviations (see ROUND_TRIP_STDS)."""
    g, ac, dtype, mean, var, notes = _chain(case, ctx, min_log10_var=-1.0)
    mean = mean.clamp(-2, 2)
    z = torch.randn(case["shape"], generator=g, dtype=torch.float64).clamp(-3, 3)
    x0 = (mean + var.sqrt() * z).to(dtype).to(ctx.device)
    notes.update(eps_model=notes["eps_model"].replace("means ~ N(0, 1)", "means in [−2, 2]"),
                 x0=f"draws of the data within 3 standard deviations, {case['dtype']} tensor of shape {tuple(x0.shape)}")
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, dtype, record=False), "x0": x0, "alphas_cumprod": ac,
                   "num_steps": case["num_steps"]}, {"spacing": case["spacing"]}, notes=notes)


def judge_round_trip(inputs: Inputs, outcome) -> None:
    """η = 0 sampling (the reference, in float64) from the student's x_T returns x₀ within ROUND_TRIP_STDS stds."""
    a = inputs.in_float64().arguments()
    data, x0 = model_data(a), a["x0"].to("cpu")
    x_T = as_tensor(outcome.value, "ddim_invert's result")
    if tuple(x_T.shape) != tuple(x0.shape):
        raise Mismatch(f"ddim_invert's result has shape {tuple(x_T.shape)}; expected {tuple(x0.shape)}")
    model = data.eps_model(a["eps_model"]["params"]["alphas_cumprod"].to("cpu"))
    moves = laws.ddim_sample_moves(a["alphas_cumprod"].shape[0], a["num_steps"], a["spacing"])
    x_rec = laws.ddim_run_moves(model, x_T.detach().to("cpu", torch.float64), a["alphas_cumprod"].to("cpu"), moves)
    compare(x_rec, x0, ROUND_TRIP, f"x₀ reconstructed by DDIM sampling (η = 0, the same {a['num_steps']} "
            f"{a['spacing']!r} steps) from your x_T", scale=data.var.sqrt(), scale_what="the data's standard deviation")


# -- ddim_sample: the generator ------------------------------------------------------------------

#: "Another seed gives other samples" must hold for a correct sampler, so the samples must depend on x_T. With
#: η = 0 they barely do: one step from t = T − 1 (ᾱ ≈ 4e-5) maps x_T to E[x₀ | x_T], which moves by √ᾱ·s²/(ᾱs² +
#: 1 − ᾱ) ≈ 6e-3·s² per unit of x_T, while float32 resolves x₀ = (x_T − √(1 − ᾱ)·ε̂)/√ᾱ only to ulp(x_T)/√ᾱ ≈ 1e-5:
#: with s² down to 1e-3 a one-element sample from two seeds came out identical (seed 145 of the 200-seed
#: calibration). So s² ≥ 1 and at least 8 elements: per element two seeds agree with probability ≤
#: P(|Δx_T| < 1e-5/6e-3) ≈ 1e-3 (Δx_T ~ N(0, 2)), all 8 (independent) elements with probability ≤ 1e-24.
GENERATOR_MIN_ELEMENTS = 8
SAME_SEED = "without x_T, draws from `generator`: the same seed gives the same samples"
REPRODUCIBLE = Reproducible(
    "ddim_sample", other_seed=True,
    advice="ddim_sample must draw x_T (and, for η > 0, every step's noise) from `generator` alone, never from "
           "torch's global random state (torch.randn(..., generator=generator))")


@st.composite
def generator_cases(draw) -> dict:
    T = draw(st.sampled_from([10, 50, 1000]))
    return {"T": T, "num_steps": draw(st.integers(1, min(T, 8))), "spacing": draw(st.sampled_from(SPACINGS)),
            "eta": draw(st.sampled_from([0.0, 0.5, 1.0])),
            "shape": draw(data_shapes.filter(lambda s: math.prod(s) >= GENERATOR_MIN_ELEMENTS)), "seed": draw(seeds)}


GENERATOR_EXAMPLES = ({"T": 1000, "num_steps": 4, "spacing": "trailing", "eta": 0.0, "shape": (4, 2), "seed": 0},
                      {"T": 1000, "num_steps": 1, "spacing": "trailing", "eta": 0.0, "shape": (8,), "seed": 0},
                      {"T": 1000, "num_steps": 4, "spacing": "leading", "eta": 1.0, "shape": (4, 2), "seed": 0})


def build_generators(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac = schedule_alphas_cumprod("linear", case["T"]).to(ctx.device)
    mean, var = gaussian_params(case["shape"][1:], g, 1.0, 10**0.5)  # s² ≥ 1: see GENERATOR_MIN_ELEMENTS
    return Inputs({"eps_model": eps_model(ctx, mean, var, ac, torch.get_default_dtype(), record=False),
                   "shape": tuple(case["shape"]), "alphas_cumprod": ac, "num_steps": case["num_steps"]},
                  {"eta": case["eta"], "spacing": case["spacing"], "generator": ctx.generator_spec(seed=case["seed"])},
                  notes={"eps_model": f"the optimal ε-model of Gaussian data over shape {tuple(case['shape'][1:])}",
                         "alphas_cumprod": schedule_note("linear", case["T"], torch.float64)})


# -- ddim_sample: the law checks ----------------------------------------------------------------------

#: The data of the law checks: 16 independent coordinates with means of both signs and
#: variances from 1e-4 to 3. The tiny variances magnify any error of x̂₀ or of the last
#: step (the output's spread there is ~1e-2 or less, so a bias of that size is a whole
#: standard deviation); the large ones carry most of the injected noise.
LAW_MEAN = torch.tensor([1.5, -1.0, 0.5, -0.25, 2.0, 0.0, -1.5, 1.0, -0.5, 0.25, -2.0, 0.75, 1.25, -0.75, 0.1, -0.1],
                        dtype=torch.float64)
LAW_VAR = 10 ** torch.linspace(-4.0, 0.5, 16, dtype=torch.float64)

LAW_BATCH = 4096  # × 16 coordinates = 65,536 standardised residuals per call
LAW = SAMPLER_LAW
LAW_NOTES = {"eps_model": "the optimal ε-model of Gaussian data N(μ, diag(s²)), 16 coordinates, s² from 1e-4 to 3",
             "alphas_cumprod": "linear schedule, T = 1000 (float64)"}


def _law_inputs(ctx: Context, dtype: torch.dtype, num_steps: int, **kwargs) -> Inputs:
    ac = schedule_alphas_cumprod("linear", 1000)
    return Inputs({"eps_model": eps_model(ctx, LAW_MEAN, LAW_VAR, ac, dtype, record=False), "shape": (LAW_BATCH, 16),
                   "alphas_cumprod": ac.to(ctx.device), "num_steps": num_steps}, kwargs, notes=dict(LAW_NOTES))


def single_transition_draw(ctx: Context) -> LawDraw:
    """ddim_sample from a fixed x_T with two steps: σ_t(η) enters only in the first, so the law isolates η.

    "trailing", T = 1000, num_steps = 2: 999 → 499 adds σ·z, 499 → data is deterministic
    (σ = 0 where ᾱ_prev = 1). From a fixed x_T the whole spread of the output is σ times
    the last step's slope, so any error in σ (η², a wrong ratio, a missing √) or in the
    noise (uniform, shared, reused) shows at full strength. Called with η = 0.5 and η = 1.

    Power (65,536 residuals per call, each test at 1.1e-7: |z| ≤ 5.3, mean square within
    [0.971, 1.030], standard error √(2/n) ≈ 0.0055), measured on the bug catalogue: η² at
    η = ½ gives a mean square of 0.29; the direction without −σ² 1.08 at η = ½ (9 standard
    errors beyond the bound) and 1.95 at η = 1; uniform noise a mean z of 128; noise shared
    by the batch a batch correlation z of 250: each caught on every seed (P(miss) < 1e-15).
    """
    x_T = torch.randn((LAW_BATCH, 16), generator=ctx.generator("ddim single transition law"),
                      dtype=torch.float64).to(torch.float32)
    data, ac = GaussianData(LAW_MEAN, LAW_VAR), schedule_alphas_cumprod("linear", 1000)
    samples = []
    for i, eta in enumerate((0.5, 1.0)):
        inputs = _law_inputs(ctx, torch.float32, 2, eta=eta, spacing="trailing",
                             generator=ctx.generator_spec("single", i), x_T=x_T.to(ctx.device))
        inputs.notes["x_T"] = "float32 (4096, 16), fixed N(0, 1) draws"
        samples.append(Sample(inputs, laws.ddim_sample_law(data, ac, 2, eta, "trailing", x_T=x_T.double()),
                              f"η = {eta:g}", f"ddim_sample's result (η = {eta:g})", (LAW_BATCH, 16)))
    return LawDraw(samples, note="Each output was standardised by its exact law: the two steps 999 → 499 → data "
                                 "from the given x_T, on Gaussian data with the optimal ε-model (η = 0.5 and η = 1).")


def sample_draw(ctx: Context) -> LawDraw:
    """ddim_sample with x_T = None and η = 1 over four "linspace" steps: the start and three noisy transitions.

    Timesteps 999, 666, 333, 0: x_T ~ N(0, I) is drawn by the student, then three steps
    add noise (the last, 0 → data, does not). The exact law of the output is N(m, v) per
    coordinate (reference.laws.ddim_sample_law); two calls with different generator seeds.

    Power (as in :func:`single_transition_draw`), on the bug catalogue: one noise reused for
    every step gives a mean square of 1.53; uniform noise a mean z of 158; noise shared by
    the batch a batch correlation z of 326; global noise of the wrong shape 212; the
    direction without −σ² a mean square of 4.3: all caught on every seed.
    """
    law = laws.ddim_sample_law(GaussianData(LAW_MEAN, LAW_VAR), schedule_alphas_cumprod("linear", 1000), 4, 1.0,
                               "linspace")
    samples = [Sample(_law_inputs(ctx, torch.get_default_dtype(), 4, eta=1.0, spacing="linspace",
                                  generator=ctx.generator_spec("sample law", i)),
                      law, label, what, (LAW_BATCH, 16))
               for i, (label, what) in enumerate((("first call", "ddim_sample's result"),
                                                  ("second call", "ddim_sample's second result")))]
    return LawDraw(samples, note="Each output was standardised by the exact law of DDIM with η = 1 over the timesteps "
                                 "999, 666, 333, 0 from x_T ~ N(0, I), on Gaussian data with the optimal ε-model.")


# -- the exercise ------------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="ddim",
    title="DDIM: η, timestep spacings and inversion",
    functions=(
        ("ddim_timesteps", ("T", "num_steps", "spacing")),
        ("ddim_sigma", ("alpha_cumprod_t", "alpha_cumprod_prev", "eta")),
        ("ddim_step", ("eps", "t", "t_prev", "xt", "alphas_cumprod", "eta", "noise")),
        ("ddim_sample", ("eps_model", "shape", "alphas_cumprod", "num_steps", "eta", "spacing", "generator", "x_T")),
        ("ddim_invert", ("eps_model", "x0", "alphas_cumprod", "num_steps", "spacing")),
    ),
    checks=(
        Property(
            function="ddim_timesteps", cases=timestep_cases(), examples=TIMESTEP_EXAMPLES,
            build=lambda case, ctx: Inputs({"T": case["T"], "num_steps": case["num_steps"]}, {"spacing": case["spacing"]}),
            max_examples=60, diagnoses=TIMESTEP_DIAGNOSES,
            aspects=(Aspect("equal diffusers' timesteps for every spacing", 3, judge_timesteps),
                     output_aspect("a LongTensor on the CPU", 1, dtype=torch.long, device=torch.device("cpu"),
                                   gated_by=("equal diffusers' timesteps for every spacing",),
                                   dtype_source="timesteps are a LongTensor (torch.long), so that they index "
                                                "alphas_cumprod and go to the model as they are")),
        ),
        Agreement(
            function="ddim_sigma", cases=sigma_cases(), build=build_sigma, examples=SIGMA_EXAMPLES,
            reference=ref.ddim_sigma, tolerance=SCHEDULE_TOLERANCE, dtype_from="alpha_cumprod_t",
            device_from="alpha_cumprod_t", points=2, dtype_points=1, diagnoses=SIGMA_DIAGNOSES,
        ),
        Agreement(
            function="ddim_step", cases=step_cases(), build=build_step, examples=STEP_EXAMPLES, max_examples=40,
            reference=ref.ddim_step, scale=step_terms, what="matches the reference (noise injected)", points=3,
            dtype_from="xt", device_from="xt", dtype_points=1, dtype_what="output dtype and device follow xt",
            diagnoses=STEP_DIAGNOSES, **DETERMINISTIC),
        Agreement(
            function="ddim_step", cases=step_cases(ddpm=True), build=build_step, examples=DDPM_EXAMPLES,
            reference=ddpm_step, scale=step_terms, what="with η = 1 and t_prev = t − 1 it is DDPM's ancestral step",
            points=2, diagnoses=STEP_DIAGNOSES, **DETERMINISTIC),
        Agreement(
            function="ddim_sample", cases=chain_cases(), build=build_sample, examples=CHAIN_EXAMPLES,
            reference=ref.ddim_sample, scale=lambda inputs: chain_terms(inputs, "x_T", laws.ddim_sample_moves),
            what="with η = 0 and a given x_T it matches the reference", points=3,
            dtype_from="x_T", device_from="x_T", dtype_points=1, dtype_what="output dtype and device follow x_T",
            extra_aspects=(model_calls(descending=True).aspect(
                "calls the model once per sample at each timestep, from the largest"),),
            diagnoses=SAMPLE_DIAGNOSES, **DETERMINISTIC),
        Property(
            function="ddim_sample", cases=generator_cases(), build=REPRODUCIBLE.build(build_generators),
            examples=GENERATOR_EXAMPLES, max_examples=6, probe=REPRODUCIBLE.probe,
            aspects=(REPRODUCIBLE.aspect(SAME_SEED, shape=lambda inputs: inputs.args["shape"], finite=True),
                     REPRODUCIBLE.form_aspect(
                         "without x_T, x_T is drawn in the default dtype on the generator's device", dtype="default",
                         device="generator", why=": without x_T, x_T is drawn in the default dtype on the generator's "
                                                 "device, like pc_sample's start, and the samples keep its dtype",
                         gated_by=(SAME_SEED,))),
        ),
        Law(function="ddim_sample", name="with η > 0, one noisy step from a fixed x_T follows the exact law",
            draw=single_transition_draw, tag="single transition law", points=2, **LAW),
        Law(function="ddim_sample", name="with η = 1 and x_T drawn, the samples follow the exact law of the sampler",
            draw=sample_draw, tag="sample law", points=2, **LAW),
        Agreement(
            function="ddim_invert", cases=chain_cases(), build=build_invert, examples=CHAIN_EXAMPLES,
            reference=ref.ddim_invert, scale=lambda inputs: chain_terms(inputs, "x0", laws.ddim_invert_moves), points=3,
            dtype_from="x0", device_from="x0", dtype_points=1, dtype_what="output dtype and device follow x0",
            extra_aspects=(model_calls(descending=False).aspect(
                "calls the model once per sample at each timestep, from the smallest"),),
            diagnoses=INVERT_DIAGNOSES, **DETERMINISTIC),
        Property(
            function="ddim_invert", cases=round_trip_cases(), build=build_round_trip, examples=ROUND_TRIP_EXAMPLES,
            max_examples=3,
            aspects=(Aspect(f"η = 0 sampling from its x_T returns x₀ within {ROUND_TRIP_STDS} standard deviations", 2,
                            judge_round_trip),),
        ),
    ),
)
