"""Checks of exercise 5, ddim: timesteps, σ_t(η), one DDIM step, the sampler, inversion.

Point budget (31): ddim_timesteps 4, ddim_sigma 3, ddim_step 6 (of which 2 for "η = 1 is
DDPM"), ddim_sample 11 (η = 0 values 3, dtype 1, model calls 1, the generator 1 + 1, two
statistical tests 2 + 2), ddim_invert 7 (values 3, round trip 2, dtype 1, model calls 1).

Two tiers (grading.md, "Statistical tests"):

* **Deterministic.** ddim_step gets its noise injected; ddim_sample with η = 0 and a given
  x_T is deterministic; ddim_invert always is. All are compared with the reference on
  hypothesis-drawn inputs, with the optimal ε-model of Gaussian data (``reference.toy``)
  where a model is needed. Tolerances are relative to the *size of the terms* of each
  update, carried through the chain (:func:`step_size`, :func:`chain_size`), because DDIM
  divides by √ᾱ_t: at t = T − 1 of the cosine schedule 1/√ᾱ_t ≈ 2·10⁴, and no tolerance
  relative to the output alone is both safe for float32 and tight elsewhere.
* **Statistical, on the exact law.** ddim_sample with η > 0 draws its own noise in its
  own order, so its output is compared with the exact law of the *discretised* sampler
  on Gaussian data (``reference.laws.ddim_sample_law``), by pooled z- and χ²-tests on
  standardised residuals. Two checks at level 1e-6 each: the exercise's false-failure
  probability is at most 2e-6 (Bonferroni).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
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
    Statistical,
    StatReport,
    Tolerance,
    as_tensor,
    as_tuple,
    dtype_device_aspect,
    value_of,
)
from grader.checks.base import format_tensor
from grader.exercises import Exercise
from grader.exercises._common import (
    DTYPES,
    SCHEDULE_TOLERANCE,
    data_shapes,
    gaussian,
    horizons,
    schedule_betas,
    schedule_note,
)
from grader.sandbox import wire
from grader.stats import mean_z, product_z, variance_chi2
from reference import ddim as ref
from reference import laws
from reference.q_sampler import compute_alphas_cumprod, q_posterior
from reference.toy import GaussianData

SPACINGS = ("leading", "trailing", "linspace")

# -- tolerances ----------------------------------------------------------------------------------

#: DDIM's update x' = √ᾱ'·(x − √(1 − ᾱ)·ε)/√ᾱ + √(1 − ᾱ' − σ²)·ε + σ·z is a sum of
#: terms that can be large and cancel (1/√ᾱ_t reaches 157 at the end of the linear
#: schedule and 2·10⁴ at the end of the cosine one), so the round-off of a correct
#: implementation is bounded relative to M = Σ |terms| (:func:`step_size`), not to
#: |x'|. In float32 each coefficient of a correct implementation is accurate to
#: u/(1 − ᾱ) relative (u = 6e-8), up to 1.5e-3 at t = 0 of the cosine schedule when
#: a float64 schedule is cast to float32 before 1 − ᾱ is formed (the same loss as
#: SCHEDULE_TOLERANCE), and every other operation adds a few u: 3e-3·M keeps a 2x
#: margin (measured: correct float32 steps, samplers and inversions, one that casts the
#: schedule first included, stay below 3e-5·M). In float64 the same analysis gives
#: ~1e-12·M; 1e-9·M leaves 1000x. Along
#: a chain the bound is carried through the later steps' slopes (:func:`chain_size`).
#: Hypothesis draws float64 cases and every boundary example is run in float64 too,
#: so a wrong coefficient (≥ 1e-4 relative) is caught at full precision.
TERMS_TOLERANCE = Tolerance(
    rtol32=3e-3, atol32=1e-6, rtol64=1e-9, atol64=1e-12,
    why="relative to the size of the update's terms: float32 coefficients lose up to u/(1 − ᾱ_0) ≈ 1.5e-3, "
        "x̂₀ amplifies by 1/√ᾱ_t",
)

#: Matching a known mistake (a hint, never a grade): the wrong formula must reproduce
#: the student's values on every input, float64 ones included (at 1e-7 relative), so a
#: looser float32 level only lets ill-conditioned float32 cases agree.
DIAGNOSIS_TOLERANCE = Tolerance(
    rtol32=1e-2, atol32=1e-3, rtol64=1e-7, atol64=1e-9,
    why="matching a known mistake on every input; float32 cases of DDIM are ill-conditioned",
)

#: Inversion followed by η = 0 sampling with the same steps is not the identity: the
#: inversion evaluates ε at the start of each step, sampling at its end, a first-order
#: error. On the round-trip cases (T = 1000, num_steps ≥ 200, data means in [−2, 2] and
#: variances in [0.1, 3], |x₀ − μ| ≤ 3 std) the exact error of a correct inversion, an
#: affine function of (μ, x₀) computed with reference.laws, is at most 0.152 data standard
#: deviations (tests/exercises/test_ddim_checks.py checks this over the whole case space);
#: 0.3 leaves a 2x margin, and float32 round-off adds < 1e-4.
ROUND_TRIP_STDS = 0.3


@dataclass(frozen=True)
class DDIMProperty(Property):
    """A :class:`Property` whose diagnoses are matched at :data:`DIAGNOSIS_TOLERANCE`.

    :class:`Property` matches diagnoses at ``getattr(self, "tolerance", …)``; DDIM's float32
    cases need the looser level (see :data:`DIAGNOSIS_TOLERANCE`).
    """

    tolerance: Tolerance = DIAGNOSIS_TOLERANCE


def alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """ᾱ_t as a float64 0-dim tensor, with ᾱ_t = 1 for t < 0."""
    if t < 0:
        return torch.ones((), dtype=torch.float64, device=alphas_cumprod.device)
    return alphas_cumprod[t].to(torch.float64)


def step_size(xt, eps, a_t, a_prev, sigma=0.0, noise=None) -> torch.Tensor:
    """M = Σ |terms| of √ᾱ_prev·(x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t + √(1 − ᾱ_prev − σ²)·ε + σ·z (float64)."""
    ratio = (a_prev / a_t).sqrt()
    size = ratio * (xt.abs() + (1 - a_t).sqrt() * eps.abs()) + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps.abs()
    if noise is not None:
        size = size + abs(sigma) * noise.abs()
    return size


def chain_size(data: GaussianData, alphas_cumprod: torch.Tensor, moves: list, x: torch.Tensor) -> torch.Tensor:
    """The size that round-off along a chain of η = 0 DDIM moves is relative to (float64).

    ``moves`` are ``(t_from, t_to, t_eval)``: the model is evaluated at ``t_eval``. Each
    move is affine per coordinate with the optimal ε (reference.laws), x' = A·x + b; an
    error δ made at a move is carried as A·δ by every later one, so the size is
    S' = |A|·S + M, with M the size of the move's terms (:func:`step_size`) plus those
    of the model's own ε = √n·(x − m)/v, whose round-off is relative to √n·(|x| + |m|)/v.
    """
    model = data.eps_model(alphas_cumprod)
    size = torch.zeros_like(x)
    for t_from, t_to, t_eval in moves:
        t_batch = torch.full((x.shape[0],), t_eval, dtype=torch.long, device=x.device)
        a_from, a_to, a_eval = (alpha_bar(alphas_cumprod, t) for t in (t_from, t_to, t_eval))
        eps = model(x, t_batch)
        x_next = ref.ddim_step(eps, t_from, t_to, x, alphas_cumprod)
        slope = ref.ddim_step(model(x + 1, t_batch), t_from, t_to, x + 1, alphas_cumprod) - x_next  # exact: affine
        m, v = data.noised(a_eval.sqrt(), 1 - a_eval, x)
        eps_size = (1 - a_eval).sqrt() * (x.abs() + m.abs()) / v
        eps_coefficient = (a_to / a_from).sqrt() * (1 - a_from).sqrt() + (1 - a_to).sqrt()
        size = slope.abs() * size + step_size(x, eps, a_from, a_to) + eps_coefficient * eps_size
        x = x_next
    return size


def compare_sized(got: Any, expected: torch.Tensor, size: torch.Tensor, tolerance: Tolerance, what: str) -> None:
    """Raise :class:`Mismatch` unless |got − expected| ≤ atol + rtol·size everywhere (same shape)."""
    got = as_tensor(got, what)
    if not got.is_floating_point():
        raise Mismatch(f"{what} has dtype {got.dtype}; a floating-point tensor was expected")
    if tuple(got.shape) != tuple(expected.shape):
        raise Mismatch(f"{what} has shape {tuple(got.shape)}; expected {tuple(expected.shape)}",
                       got=f"shape {tuple(got.shape)}", expected=f"shape {tuple(expected.shape)}")
    rtol, atol = tolerance.for_dtype(got.dtype)
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    allowed = atol + rtol * size.detach().to("cpu", torch.float64)
    diff = (g - e).abs()
    bad = ~(diff <= allowed)  # NaN counts as bad
    if not bool(bad.any()):
        return
    excess = torch.where(bad, torch.nan_to_num(diff / allowed, nan=float("inf")), torch.zeros_like(diff))
    flat = int(excess.flatten().argmax())
    index = [int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)] if e.ndim else []
    got_at, expected_at, allowed_at = g.flatten()[flat].item(), e.flatten()[flat].item(), allowed.flatten()[flat].item()
    headline = (f"{what} contains {got_at}" if not math.isfinite(got_at) else f"{what} differs from the expected values")
    raise Mismatch(
        f"{headline}: {int(bad.sum())} of {e.numel()} entries are off; the worst is at index {index}: "
        f"got {got_at:.8g}, expected {expected_at:.8g} (allowed |got − expected| ≤ {allowed_at:.3g}, "
        f"i.e. {rtol:g} of the size of the update's terms, for {str(got.dtype).replace('torch.', '')})",
        got=_show(g), expected=_show(e),
    )


def _show(t: torch.Tensor, limit: int = 64) -> str:
    if t.numel() <= limit:
        return format_tensor(t)
    return f"{format_tensor(t.flatten()[:limit])[:-1]}, …] (first {limit} of {t.numel()} entries, flattened)"


# -- ddim_timesteps ------------------------------------------------------------------------------


@st.composite
def timestep_cases(draw) -> dict:
    T = draw(st.one_of(st.integers(1, 40), st.integers(41, 1000), st.sampled_from([1000, 999, 100])))
    num_steps = draw(st.one_of(st.integers(1, min(T, 60)), st.integers(1, T)))
    return {"T": T, "num_steps": num_steps, "spacing": draw(st.sampled_from(SPACINGS))}


TIMESTEP_EXAMPLES = tuple(
    {"T": T, "num_steps": n, "spacing": s}
    for s in SPACINGS
    for T, n in ((1000, 50), (1000, 1), (10, 10), (10, 3), (17, 7), (1000, 61), (1000, 3), (1, 1))
)


def build_timesteps(case: dict, ctx: Context) -> Inputs:
    return Inputs({"T": case["T"], "num_steps": case["num_steps"]}, {"spacing": case["spacing"]})


def _leading_plus_one(T, num_steps, spacing):
    return ref.ddim_timesteps(T, num_steps, "leading") + 1


def _trailing_without_minus_one(T, num_steps, spacing):
    return ref.ddim_timesteps(T, num_steps, "trailing") + 1


def _linspace_to_T(T, num_steps, spacing):
    import numpy as np

    return torch.from_numpy(np.linspace(0, T, num_steps).round().astype(np.int64)[::-1].copy())


def _trailing_overshoot(T, num_steps, spacing):
    import numpy as np

    return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)


def _arange_by_ratio(T, num_steps, spacing):
    return torch.arange(0, T, max(T // num_steps, 1)).flip(0)


#: Known mistakes of ddim_timesteps: (spacing it applies to, the wrong values, the hint).
TIMESTEP_MISTAKES = (
    ("any", lambda T, n, s: ref.ddim_timesteps(T, n, s).flip(0),
     "your timesteps are in ascending order; DDIM visits them from the noisiest down (descending)"),
    ("leading", _leading_plus_one,
     "your leading timesteps are one too large (diffusers' steps_offset = 1); the course's leading ones start at 0"),
    ("leading", _arange_by_ratio,
     "arange(0, T, T // num_steps) has more than num_steps entries when num_steps does not divide T; "
     "take arange(num_steps) · (T // num_steps)"),
    ("trailing", _trailing_without_minus_one,
     "your trailing timesteps are one too large: round(arange(T, 0, −T/num_steps)) − 1, the −1 makes T − 1 the first"),
    ("linspace", _linspace_to_T, "linspace runs from 0 to T − 1, the last valid timestep, not to T"),
    ("trailing", _trailing_overshoot,
     "arange(T, 0, −T/num_steps) with a float step can overshoot by one entry through round-off (diffusers then "
     "ends with a spurious −1); keep the first num_steps entries"),
)


def _timestep_hint(T: int, n: int, spacing: str, got: list) -> str:
    for applies, wrong, hint in TIMESTEP_MISTAKES:
        if applies not in ("any", spacing):
            continue
        try:
            if wrong(T, n, spacing).tolist() == got:
                return f" Hint: {hint}."
        except Exception:  # noqa: BLE001 -- a mistake that does not apply to this input
            continue
    return ""


def judge_timesteps(inputs: Inputs, outcome) -> None:
    """The values of diffusers' set_timesteps, exactly (any integer dtype here; the dtype is its own test)."""
    T, n, spacing = inputs.args["T"], inputs.args["num_steps"], inputs.kwargs["spacing"]
    expected = ref.ddim_timesteps(T, n, spacing).tolist()
    got = as_tensor(outcome.value, "the result")
    values = got.detach().to("cpu").flatten().tolist()
    if got.is_floating_point() and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    hint = _timestep_hint(T, n, spacing, values) if got.ndim == 1 else ""
    if got.ndim != 1 or got.numel() != n:
        raise Mismatch(f"the result has shape {tuple(got.shape)}; expected ({n},), one entry per sampling step.{hint}",
                       got=str(values[:64]), expected=str(expected[:64]))
    if values != expected:
        wrong = [i for i, (a, b) in enumerate(zip(values, expected)) if a != b]
        raise Mismatch(f"the timesteps differ from the expected ones at {len(wrong)} of {n} positions, first at "
                       f"index {wrong[0]}: got {values[wrong[0]]}, expected {expected[wrong[0]]}.{hint}",
                       got=str(values[:64]), expected=str(expected[:64]))


def judge_timesteps_dtype(inputs: Inputs, outcome) -> None:
    got = as_tensor(outcome.value, "the result")
    if got.dtype != torch.long:
        raise Mismatch(f"the result has dtype {got.dtype}; timesteps are a LongTensor (torch.long), "
                       "so that they index alphas_cumprod and go to the model as they are")
    if got.device.type != "cpu":
        raise Mismatch(f"the result is on {got.device}; the timesteps live on the CPU")


# -- ddim_sigma ------------------------------------------------------------------------------------


@st.composite
def sigma_cases(draw) -> dict:
    T = draw(horizons)
    batch = draw(st.integers(0, 5))  # 0: 0-dim tensors
    pairs = []
    for _ in range(max(batch, 1)):
        t = draw(st.integers(0, T - 1))
        pairs.append((t, draw(st.one_of(st.just(-1), st.just(t - 1), st.integers(-1, t - 1)))))
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "pairs": tuple(pairs),
            "scalar": batch == 0, "dtype": draw(st.sampled_from(["float32", "float64"])),
            "eta": draw(st.sampled_from([0.0, 1.0, 0.5, 0.3]))}


SIGMA_EXAMPLES = tuple(
    {"T": 1000, "schedule": kind, "pairs": ((999, 998), (1, 0), (0, -1), (500, 480), (999, -1)), "scalar": False,
     "dtype": dtype, "eta": eta}
    for kind in ("linear", "cosine") for dtype in ("float64", "float32") for eta in (1.0, 0.5)
) + ({"T": 10, "schedule": "linear", "pairs": ((5, 2),), "scalar": True, "dtype": "float64", "eta": 0.0},)


def build_sigma(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    ac = compute_alphas_cumprod(schedule_betas(case["schedule"], case["T"]))
    a_t = torch.stack([alpha_bar(ac, t) for t, _ in case["pairs"]])
    a_prev = torch.stack([alpha_bar(ac, p) for _, p in case["pairs"]])
    if case["scalar"]:
        a_t, a_prev = a_t[0], a_prev[0]
    ts = ", ".join(str(t) for t, _ in case["pairs"])
    prevs = ", ".join(str(p) for _, p in case["pairs"])
    return Inputs(
        {"alpha_cumprod_t": a_t.to(dtype).to(ctx.device), "alpha_cumprod_prev": a_prev.to(dtype).to(ctx.device),
         "eta": case["eta"]},
        notes={"alpha_cumprod_t": f"{case['dtype']} ᾱ_t at t = [{ts}] ({case['schedule']} schedule, T = {case['T']})",
               "alpha_cumprod_prev": f"{case['dtype']} ᾱ_prev at t_prev = [{prevs}] (ᾱ = 1 for t_prev = −1)"},
    )


def _sigma_eta_squared(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return ref.ddim_sigma(alpha_cumprod_t, alpha_cumprod_prev, eta**2)


def _sigma_ratio_inverted(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta * ((1 - alpha_cumprod_t) / (1 - alpha_cumprod_prev)).sqrt() * (1 - alpha_cumprod_t / alpha_cumprod_prev).sqrt()


def _sigma_squared(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta * (1 - alpha_cumprod_prev) / (1 - alpha_cumprod_t) * (1 - alpha_cumprod_t / alpha_cumprod_prev)


def _sigma_flipped_fraction(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta * ((1 - alpha_cumprod_prev) / (1 - alpha_cumprod_t)).sqrt() * (1 - alpha_cumprod_prev / alpha_cumprod_t).abs().sqrt()


SIGMA_DIAGNOSES = (
    Diagnosis(_sigma_eta_squared, "your σ matches η² in place of η: η multiplies the standard deviation, not the variance"),
    Diagnosis(_sigma_squared, "your σ matches σ²: both factors are under square roots"),
    Diagnosis(_sigma_ratio_inverted, "the first factor is √((1 − ᾱ_prev)/(1 − ᾱ_t)): yours has the ratio inverted"),
    Diagnosis(_sigma_flipped_fraction, "the second factor is √(1 − ᾱ_t/ᾱ_prev), with ᾱ_t/ᾱ_prev = α's product over "
                                       "the skipped steps, which is ≤ 1"),
)

# -- ddim_step -------------------------------------------------------------------------------------


def _schedule(case: dict, ctx: Context) -> tuple[torch.Tensor, torch.dtype, torch.dtype]:
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    ac = compute_alphas_cumprod(schedule_betas(case["schedule"], case["T"]))
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
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": draw(data_shapes),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])),
            "t": t, "t_prev": t_prev, "eta": eta, "seed": draw(st.integers(0, 2**16))}


def _step_examples(pairs: tuple, etas: tuple) -> tuple:
    return tuple(
        {"T": 1000, "schedule": kind, "shape": (3, 2), "dtype": dtype, "schedule_dtype": "float64",
         "t": t, "t_prev": t_prev, "eta": eta, "seed": 0}
        for kind in ("linear", "cosine") for dtype in ("float64", "float32")
        for (t, t_prev), eta in zip(pairs, etas)
    )


#: t = 0 and T − 1 to t_prev = −1 (ᾱ_prev = 1, σ = 0), consecutive steps at both ends with η = 1, a skip with η = ½.
STEP_EXAMPLES = _step_examples(((999, -1), (0, -1), (999, 998), (1, 0), (500, 480), (999, 899)),
                               (0.0, 1.0, 1.0, 1.0, 0.5, 0.0))
DDPM_EXAMPLES = _step_examples(((999, 998), (1, 0), (0, -1), (500, 499)), (1.0, 1.0, 1.0, 1.0))


def build_step(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    eps, xt, noise = (gaussian(case["shape"], g, dtype, ctx) for _ in range(3))
    return Inputs(
        {"eps": eps, "t": case["t"], "t_prev": case["t_prev"], "xt": xt, "alphas_cumprod": ac},
        {"eta": case["eta"], "noise": noise},
        notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)},
    )


def _step_parts(inputs: Inputs) -> dict:
    """The step's inputs in float64 with ᾱ_t, ᾱ_prev, σ."""
    a = inputs.in_float64().arguments()
    a_t, a_prev = alpha_bar(a["alphas_cumprod"], a["t"]), alpha_bar(a["alphas_cumprod"], a["t_prev"])
    sigma = ref.ddim_sigma(a_t, a_prev, a["eta"]) if a["eta"] else torch.zeros((), dtype=torch.float64)
    return {**a, "a_t": a_t, "a_prev": a_prev, "sigma": sigma}


def _step_terms_size(p: dict) -> torch.Tensor:
    return step_size(p["xt"], p["eps"], p["a_t"], p["a_prev"], p["sigma"], p["noise"]).cpu()


def judge_step_values(inputs: Inputs, outcome) -> None:
    p = _step_parts(inputs)
    expected = inputs.call_reference(ref.ddim_step)
    compare_sized(outcome.value, expected, _step_terms_size(p), TERMS_TOLERANCE, "the result")


def judge_step_is_ddpm(inputs: Inputs, outcome) -> None:
    """With t_prev = t − 1 and η = 1: μ̃_t(x̂₀, x_t) + √β̃_t·z from the DDPM posterior (reference.q_sampler)."""
    p = _step_parts(inputs)
    ac, t, xt = p["alphas_cumprod"], p["t"], p["xt"]
    x0_hat = (xt - (1 - p["a_t"]).sqrt() * p["eps"]) / p["a_t"].sqrt()
    previous = torch.cat([torch.ones(1, dtype=ac.dtype, device=ac.device), ac[:-1]])
    betas = 1 - ac / previous
    mean, variance, _ = q_posterior(x0_hat, xt, torch.full((xt.shape[0],), t, dtype=torch.long, device=xt.device), betas)
    expected = mean + variance.sqrt() * p["noise"]
    compare_sized(outcome.value, expected, _step_terms_size(p), TERMS_TOLERANCE,
                  "the result (DDPM's ancestral step μ̃_t(x̂₀, x_t) + √β̃_t·z was expected)")


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


_WRAP_HINT = "at t_prev = −1 you used alphas_cumprod[−1] = ᾱ_{T−1} ≈ 0; ᾱ_prev = 1 there (the clean data)"

STEP_DIAGNOSES = (
    Diagnosis(lambda *a, **k: _wrong_step(*a, **k, direction_sigma=False),
              "your step matches the direction term √(1 − ᾱ_prev)·ε: with noise σ·z the direction must give up that "
              "variance, √(1 − ᾱ_prev − σ²)·ε, or x_prev has too much variance"),
    Diagnosis(lambda *a, **k: _wrong_step(*a, **k, x0_power=1.0),
              "your x̂₀ divides by ᾱ_t: x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t"),
    Diagnosis(lambda *a, **k: _wrong_step(*a, **k, wrap=True), _WRAP_HINT),
    Diagnosis(lambda *a, **k: _wrong_step(*a, **k, wrap=True, sigma_always=True),
              _WRAP_HINT + " (and since ᾱ_{T−1} < ᾱ_t, σ = η·…·√(1 − ᾱ_t/ᾱ_prev) is NaN, even times η = 0)"),
    Diagnosis(lambda *a, **k: _wrong_step(*a, **k, direction_noise=True),
              "your direction term points along the fresh noise z; it points along the predicted ε"),
)

# -- ddim_sample and ddim_invert: the deterministic checks -----------------------------------------


def _gaussian_data(shape: tuple, g: torch.Generator, min_log10_var: float = -3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) float64 of the data shape: means N(0, 1), variances log-uniform in [10^min, 10^0.5]."""
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    log10_var = min_log10_var + (0.5 - min_log10_var) * torch.rand(shape, generator=g, dtype=torch.float64)
    return mean, 10**log10_var


def model_spec(mean: torch.Tensor, var: torch.Tensor, ac: torch.Tensor, dtype: torch.dtype, ctx: Context,
               record: bool = True) -> dict:
    """The optimal ε-model of N(mean, diag(var)) with schedule ``ac``, evaluated in ``dtype`` in the student's process."""
    return wire.model_spec("gaussian_eps", record=record, mean=mean.to(dtype).to(ctx.device),
                           var=var.to(dtype).to(ctx.device), alphas_cumprod=ac.to(dtype).to(ctx.device))


def _model_note(shape: tuple, case: dict) -> str:
    return (f"the optimal ε-model of Gaussian data N(μ, diag(s²)) over shape {tuple(shape[1:])} "
            f"(means ~ N(0, 1), variances in [1e-3, 3]; {case['schedule']} schedule, T = {case['T']})")


@st.composite
def chain_cases(draw, max_steps: int = 25) -> dict:
    T = draw(horizons)
    return {"T": T, "num_steps": draw(st.integers(1, min(T, max_steps))),
            "spacing": draw(st.sampled_from(SPACINGS)), "schedule": draw(st.sampled_from(["linear", "cosine"])),
            "shape": draw(data_shapes), "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "generator": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**16))}


def _chain_examples() -> tuple:
    base = {"T": 1000, "shape": (3, 2), "schedule_dtype": "float64", "generator": True, "seed": 0}
    cases = [
        {**base, "num_steps": n, "spacing": s, "schedule": kind, "dtype": dtype}
        for kind in ("linear", "cosine") for dtype in ("float64", "float32")
        for n, s in ((10, "leading"), (3, "trailing"), (1, "trailing"))
    ]
    # Gaps that are not T // num_steps: linspace 9, 4, 0 and trailing 9, 7, 4, 1 (T = 10); every step (T = 10).
    cases += [{**base, "T": 10, "num_steps": n, "spacing": s, "schedule": "linear", "dtype": "float64"}
              for n, s in ((3, "linspace"), (4, "trailing"), (10, "leading"))]
    return tuple(cases)


CHAIN_EXAMPLES = _chain_examples()


def build_sample(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    mean, var = _gaussian_data(case["shape"][1:], g)
    x_T = gaussian(case["shape"], g, dtype, ctx)
    kwargs = {"eta": 0.0, "spacing": case["spacing"], "x_T": x_T}
    if case["generator"]:
        kwargs["generator"] = wire.generator_spec(case["seed"], str(ctx.device))
    return Inputs(
        {"eps_model": model_spec(mean, var, ac, dtype, ctx), "shape": tuple(case["shape"]), "alphas_cumprod": ac,
         "num_steps": case["num_steps"]},
        kwargs,
        notes={"eps_model": _model_note(case["shape"], case),
               "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)},
    )


def build_invert(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    mean, var = _gaussian_data(case["shape"][1:], g)
    x0 = (mean + var.sqrt() * torch.randn(case["shape"], generator=g, dtype=torch.float64)).to(dtype).to(ctx.device)
    return Inputs(
        {"eps_model": model_spec(mean, var, ac, dtype, ctx), "x0": x0, "alphas_cumprod": ac,
         "num_steps": case["num_steps"]},
        {"spacing": case["spacing"]},
        notes={"eps_model": _model_note(case["shape"], case), "x0": "draws of the data, "
               + _describe_short(x0), "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)},
    )


def _describe_short(x: torch.Tensor) -> str:
    return f"{str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"


def _data_and_schedule(inputs: Inputs) -> tuple[GaussianData, torch.Tensor, dict]:
    """The model's Gaussian data and the sampler's ᾱ, in float64 on the CPU, and the float64 arguments.

    The data is read back from the model spec, so it holds the values the student's model
    uses (rounded to float32 in float32 cases), exactly.
    """
    a = inputs.in_float64().arguments()
    params = a["eps_model"]["params"]
    return GaussianData(params["mean"].to("cpu"), params["var"].to("cpu")), a["alphas_cumprod"].to("cpu"), a


def _sample_moves(T: int, num_steps: int, spacing: str) -> list:
    ts = ref.ddim_timesteps(T, num_steps, spacing).tolist()
    return [(t, ts[i + 1] if i + 1 < len(ts) else -1, t) for i, t in enumerate(ts)]


def _invert_moves(T: int, num_steps: int, spacing: str) -> list:
    ts = ref.ddim_timesteps(T, num_steps, spacing).flip(0).tolist()
    return [(ts[i - 1] if i else -1, t, t) for i, t in enumerate(ts)]


def _model_of(data: GaussianData, inputs: Inputs) -> Callable:
    """The float64 model the student's model spec stands for (its own ᾱ, in float64)."""
    return data.eps_model(inputs.in_float64().args["eps_model"]["params"]["alphas_cumprod"].to("cpu"))


def judge_sample_values(inputs: Inputs, outcome) -> None:
    data, ac, a = _data_and_schedule(inputs)
    x_T = a["x_T"].to("cpu")
    expected = ref.ddim_sample(_model_of(data, inputs), None, ac, a["num_steps"], 0.0, a["spacing"], None, x_T)
    size = chain_size(data, ac, _sample_moves(ac.shape[0], a["num_steps"], a["spacing"]), x_T)
    compare_sized(outcome.value, expected, size, TERMS_TOLERANCE, "the result")


def judge_invert_values(inputs: Inputs, outcome) -> None:
    data, ac, a = _data_and_schedule(inputs)
    x0 = a["x0"].to("cpu")
    expected = ref.ddim_invert(_model_of(data, inputs), x0, ac, a["num_steps"], a["spacing"])
    size = chain_size(data, ac, _invert_moves(ac.shape[0], a["num_steps"], a["spacing"]), x0)
    compare_sized(outcome.value, expected, size, TERMS_TOLERANCE, "the result")


def judge_model_calls(descending: bool) -> Callable:
    """An aspect judge: the model evaluated every sample once at each timestep, in the right order.

    Any batching is accepted (one call per step for the batch, or a loop over samples):
    per timestep of ``ddim_timesteps`` the calls must cover B sample-evaluations in all,
    with t a LongTensor of shape (batch,), and the first and last calls must be at the
    first and last timestep of the walk (largest first for sampling, smallest for inversion).
    """

    def judge(inputs: Inputs, outcome) -> None:
        a = inputs.arguments()
        T, n, spacing = a["alphas_cumprod"].shape[0], a["num_steps"], a["spacing"]
        walk = ref.ddim_timesteps(T, n, spacing)
        walk = (walk if descending else walk.flip(0)).tolist()
        batch = (a["x_T"] if "x_T" in a else a["x0"]).shape[0]
        calls = outcome.model_calls[0] if outcome.model_calls else []
        where = f"ddim_timesteps({T}, {n}, {spacing!r})"
        if not calls:
            raise Mismatch("eps_model was never called")
        counts: Counter = Counter()
        for number, call in enumerate(calls, start=1):
            level = call.get("level")
            if not isinstance(level, torch.Tensor) or level.dtype != torch.long or tuple(level.shape) != (call["batch"],):
                shown = "nothing" if level is None else (
                    "a single number (not one timestep per sample)" if isinstance(level, torch.Tensor) and level.ndim == 0
                    else f"a {str(level.dtype).replace('torch.', '')} tensor of shape {tuple(level.shape)}"
                    if isinstance(level, torch.Tensor) else type(level).__name__)
                raise Mismatch(f"call {number} of eps_model passed t as {shown} for a batch of {call['batch']}; "
                               "the model takes t as a LongTensor of shape (B,), one timestep per sample "
                               "(torch.full((B,), t, dtype=torch.long, device=x.device))")
            counts.update(level.tolist())
        expected = Counter({t: batch for t in walk})
        if counts != expected:
            extra = sorted(set(counts) - set(expected))
            missing = sorted(set(expected) - set(counts))
            detail = []
            if extra:
                detail.append(f"at timesteps that are not in {where}: {extra[:8]}")
            if missing:
                detail.append(f"never at {missing[:8]}")
            wrong = [t for t in walk if t in counts and counts[t] != batch]
            if wrong:
                detail.append(f"{counts[wrong[0]]} sample-evaluations at t = {wrong[0]} instead of {batch}")
            raise Mismatch(f"eps_model made {sum(counts.values())} sample-evaluations in {len(calls)} calls; expected "
                           f"{n} per sample ({n * batch} for a batch of {batch}), one at each of {where} = "
                           f"{walk[:12]}{' …' if n > 12 else ''}: " + "; ".join(detail))
        first, last = calls[0]["level"].tolist()[0], calls[-1]["level"].tolist()[0]
        if (first, last) != (walk[0], walk[-1]):
            raise Mismatch(f"the first model call is at t = {first} and the last at t = {last}; "
                           f"{'sampling' if descending else 'inversion'} walks {where} "
                           f"{'down from' if descending else 'up from'} t = {walk[0]} to t = {walk[-1]}")

    return judge


def _run_moves(eps_model, x, alphas_cumprod, moves):
    for t_from, t_to, t_eval in moves:
        eps = eps_model(x, torch.full((x.shape[0],), t_eval, dtype=torch.long, device=x.device))
        x = ref.ddim_step(eps, t_from, t_to, x, alphas_cumprod)
    return x


def _sample_moves_of(alphas_cumprod, num_steps, spacing):
    return _sample_moves(alphas_cumprod.shape[0], num_steps, spacing)


def _sample_without_last_step(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                              generator=None, x_T=None):
    return _run_moves(eps_model, x_T, alphas_cumprod, _sample_moves_of(alphas_cumprod, num_steps, spacing)[:-1])


def _sample_last_to_wrapped(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                            generator=None, x_T=None):
    moves = _sample_moves_of(alphas_cumprod, num_steps, spacing)
    t, _, e = moves[-1]
    return _run_moves(eps_model, x_T, alphas_cumprod, moves[:-1] + [(t, alphas_cumprod.shape[0] - 1, e)])


def _sample_fixed_offsets(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                          generator=None, x_T=None):
    offset = alphas_cumprod.shape[0] // num_steps
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    return _run_moves(eps_model, x_T, alphas_cumprod, [(t, t - offset, t) for t in ts])


SAMPLE_DIAGNOSES = (
    Diagnosis(_sample_without_last_step, "your sampler stops at the last timestep of ddim_timesteps; one more step "
                                         "goes from there to the data (t_prev = −1, ᾱ_prev = 1)"),
    Diagnosis(_sample_last_to_wrapped, "your last step goes to alphas_cumprod[−1] = ᾱ_{T−1} ≈ 0; it goes to the data, "
                                       "ᾱ_prev = 1"),
    Diagnosis(_sample_fixed_offsets, "your sampler steps from t to t − T // num_steps (diffusers' convention); the "
                                     "course steps from each entry of ddim_timesteps to the next one"),
)


def _invert_eps_at_current(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    moves = _invert_moves(alphas_cumprod.shape[0], num_steps, spacing)
    return _run_moves(eps_model, x0, alphas_cumprod, [(f, t, max(f, 0)) for f, t, _ in moves])


def _invert_without_first_step(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    moves = _invert_moves(alphas_cumprod.shape[0], num_steps, spacing)
    return _run_moves(eps_model, x0, alphas_cumprod, moves[1:])


def _invert_downwards(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    return _run_moves(eps_model, x0, alphas_cumprod, [(ts[i - 1] if i else -1, t, t) for i, t in enumerate(ts)])


INVERT_DIAGNOSES = (
    Diagnosis(_invert_eps_at_current, "your inversion evaluates ε at the current timestep; as in diffusers' "
                                      "DDIMInverseScheduler it is evaluated at the target timestep (the current sample, "
                                      "the next timestep)"),
    Diagnosis(_invert_without_first_step, "your inversion treats x₀ as the sample at the first timestep; it starts "
                                          "from the data, ᾱ = 1, and its first step goes to the first timestep"),
    Diagnosis(_invert_downwards, "your inversion walks the timesteps from the largest down; it walks them up, from "
                                 "the smallest (ddim_timesteps reversed)"),
)

# -- ddim_invert: the round trip -------------------------------------------------------------------


@st.composite
def round_trip_cases(draw) -> dict:
    return {"T": 1000, "num_steps": draw(st.sampled_from([200, 250, 500])), "spacing": draw(st.sampled_from(SPACINGS)),
            "schedule": draw(st.sampled_from(["linear", "cosine"])),
            "shape": (draw(st.integers(1, 8)), draw(st.integers(1, 4))),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "seed": draw(st.integers(0, 2**16))}


ROUND_TRIP_EXAMPLES = tuple(
    {"T": 1000, "num_steps": 200, "spacing": s, "schedule": kind, "shape": (8, 4), "dtype": "float32",
     "schedule_dtype": "float64", "seed": 0}
    for s, kind in (("leading", "linear"), ("trailing", "cosine"), ("linspace", "cosine"))
)


def build_round_trip(case: dict, ctx: Context) -> Inputs:
    """Data with means in [−2, 2], variances in [0.1, 3], x₀ within 3 standard deviations (see ROUND_TRIP_STDS)."""
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    mean, var = _gaussian_data(case["shape"][1:], g, min_log10_var=-1.0)
    mean = mean.clamp(-2, 2)
    z = torch.randn(case["shape"], generator=g, dtype=torch.float64).clamp(-3, 3)
    x0 = (mean + var.sqrt() * z).to(dtype).to(ctx.device)
    return Inputs(
        {"eps_model": model_spec(mean, var, ac, dtype, ctx, record=False), "x0": x0, "alphas_cumprod": ac,
         "num_steps": case["num_steps"]},
        {"spacing": case["spacing"]},
        notes={"eps_model": f"the optimal ε-model of Gaussian data N(μ, diag(s²)), μ in [−2, 2], s² in [0.1, 3] "
                            f"({case['schedule']} schedule, T = 1000)",
               "x0": "draws of the data within 3 standard deviations, " + _describe_short(x0),
               "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)},
    )


def judge_round_trip(inputs: Inputs, outcome) -> None:
    """η = 0 sampling (the reference, in float64) from the student's x_T returns x₀ within ROUND_TRIP_STDS stds."""
    data, ac, a = _data_and_schedule(inputs)
    x0 = a["x0"].to("cpu")
    x_T = as_tensor(outcome.value, "ddim_invert's result")
    if tuple(x_T.shape) != tuple(x0.shape):
        raise Mismatch(f"ddim_invert's result has shape {tuple(x_T.shape)}; expected {tuple(x0.shape)}")
    x_T = x_T.detach().to("cpu", torch.float64)
    x_rec = ref.ddim_sample(_model_of(data, inputs), None, ac, a["num_steps"], 0.0, a["spacing"], None, x_T)
    error = torch.nan_to_num((x_rec - x0).abs() / data.var.sqrt(), nan=float("inf"))
    flat = int(error.flatten().argmax())
    worst = float(error.flatten()[flat])
    if not worst <= ROUND_TRIP_STDS:
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat), error.shape)]
        raise Mismatch(
            f"DDIM sampling (η = 0, the same {a['num_steps']} {a['spacing']!r} steps) from your x_T does not return x₀: "
            f"the worst entry, at index {index}, is {worst:.3g} data standard deviations off (x₀ = "
            f"{x0.flatten()[flat].item():.6g}, reconstructed {x_rec.flatten()[flat].item():.6g}); a correct inversion "
            f"reconstructs every entry within {ROUND_TRIP_STDS} standard deviations here (its only error is the "
            "first-order mismatch between inverting and sampling)",
            got=_show(x_rec), expected=_show(x0),
        )


# -- ddim_sample: the generator ------------------------------------------------------------------


def sample_with_seeds(ns, eps_model, shape, alphas_cumprod, num_steps, eta, spacing, first, again, other):
    """Probe: ddim_sample without x_T with generators ``first`` and ``again`` (one seed) and ``other`` (another).

    Returns the three samples and the name of the process's default dtype.
    """
    samples = tuple(ns.ddim_sample(eps_model, shape, alphas_cumprod, num_steps, eta=eta, spacing=spacing, generator=g)
                    for g in (first, again, other))
    return samples + (str(torch.get_default_dtype()),)


#: "Another seed gives other samples" must hold for a correct sampler, so the samples must depend on x_T.
#: With η = 0 they barely do: one step from t = T − 1 (ᾱ ≈ 4e-5) maps x_T to E[x₀ | x_T], which moves by
#: √ᾱ·s²/(ᾱs² + 1 − ᾱ) ≈ 6e-3·s² per unit of x_T, while float32 resolves x₀ = (x_T − √(1 − ᾱ)·ε̂)/√ᾱ only to
#: ulp(x_T)/√ᾱ ≈ 1e-5. With data variances s² down to 1e-3 a one-element sample from two seeds came out
#: identical (seed 145 of the 200-seed calibration). So these cases use s² ≥ 1 and at least 8 elements:
#: per element two seeds agree with probability ≤ P(|Δx_T| < 1e-5/6e-3) ≈ 1e-3 (Δx_T ~ N(0, 2)), and all 8
#: (independent) elements agree with probability ≤ 1e-24.
GENERATOR_MIN_ELEMENTS = 8


@st.composite
def generator_cases(draw) -> dict:
    T = draw(st.sampled_from([10, 50, 1000]))
    return {"T": T, "num_steps": draw(st.integers(1, min(T, 8))), "spacing": draw(st.sampled_from(SPACINGS)),
            "eta": draw(st.sampled_from([0.0, 0.5, 1.0])),
            "shape": draw(data_shapes.filter(lambda s: math.prod(s) >= GENERATOR_MIN_ELEMENTS)),
            "seed": draw(st.integers(0, 2**16))}


GENERATOR_EXAMPLES = ({"T": 1000, "num_steps": 4, "spacing": "trailing", "eta": 0.0, "shape": (4, 2), "seed": 0},
                      {"T": 1000, "num_steps": 1, "spacing": "trailing", "eta": 0.0, "shape": (8,), "seed": 0},
                      {"T": 1000, "num_steps": 4, "spacing": "leading", "eta": 1.0, "shape": (4, 2), "seed": 0})


def build_generators(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac = compute_alphas_cumprod(schedule_betas("linear", case["T"])).to(ctx.device)
    mean, var = _gaussian_data(case["shape"][1:], g, min_log10_var=0.0)  # s² ≥ 1: see GENERATOR_MIN_ELEMENTS
    seed = case["seed"]
    device = str(ctx.device)
    return Inputs(
        {"eps_model": model_spec(mean, var, ac, torch.get_default_dtype(), ctx, record=False),
         "shape": tuple(case["shape"]), "alphas_cumprod": ac, "num_steps": case["num_steps"], "eta": case["eta"],
         "spacing": case["spacing"], "first": wire.generator_spec(seed, device),
         "again": wire.generator_spec(seed, device), "other": wire.generator_spec(seed + 1, device)},
        notes={"eps_model": f"the optimal ε-model of Gaussian data over shape {tuple(case['shape'][1:])}",
               "alphas_cumprod": schedule_note("linear", case["T"], torch.float64)},
    )


def _generator_samples(inputs: Inputs, outcome) -> list[torch.Tensor]:
    items = as_tuple(outcome.value, ("first", "again", "other", "default dtype"), "the probe's result")
    return [as_tensor(x, f"ddim_sample's result ({name})") for x, name in zip(items[:3], ("first", "again", "other"))]


def judge_generator_reproducible(inputs: Inputs, outcome) -> None:
    first, again, other = _generator_samples(inputs, outcome)
    shape = tuple(inputs.args["shape"])
    if tuple(first.shape) != shape:
        raise Mismatch(f"ddim_sample's result has shape {tuple(first.shape)}; expected {shape}")
    if not bool(torch.isfinite(first).all()):
        raise Mismatch("ddim_sample's result contains NaN or infinite values")
    if tuple(again.shape) != tuple(first.shape) or not torch.equal(first, again):
        raise Mismatch("two calls with generators seeded alike gave different samples: ddim_sample must draw x_T "
                       "(and, for η > 0, every step's noise) from `generator` alone, never from torch's global "
                       "random state (torch.randn(..., generator=generator))")
    if torch.equal(first, other):
        raise Mismatch("generators with different seeds gave the same samples: is ddim_sample reseeding, or ignoring "
                       "`generator`?")


def judge_generator_dtype(inputs: Inputs, outcome) -> None:
    first, _, _ = _generator_samples(inputs, outcome)
    default = outcome.value[3]
    device = inputs.args["first"]["device"]
    if str(first.dtype) != default:
        raise Mismatch(f"without x_T the result has dtype {first.dtype}; x_T is drawn in the default dtype "
                       f"({default}), like pc_sample's start, and the samples keep its dtype")
    if first.device.type != torch.device(device).type:
        raise Mismatch(f"without x_T the result is on {first.device}; x_T is drawn on the generator's device ({device})")


# -- ddim_sample: the statistical checks --------------------------------------------------------------

#: The data of the law checks: 16 independent coordinates with means of both signs and
#: variances from 1e-4 to 3. The tiny variances magnify any error of x̂₀ or of the last
#: step (the output's spread there is ~1e-2 or less, so a bias of that size is a whole
#: standard deviation); the large ones carry most of the injected noise.
LAW_MEAN = torch.tensor([1.5, -1.0, 0.5, -0.25, 2.0, 0.0, -1.5, 1.0, -0.5, 0.25, -2.0, 0.75, 1.25, -0.75, 0.1, -0.1],
                        dtype=torch.float64)
LAW_VAR = 10 ** torch.linspace(-4.0, 0.5, 16, dtype=torch.float64)

#: 4096 samples × 16 coordinates = 65,536 standardised residuals per call.
LAW_BATCH = 4096

LAW_ALPHA = 1e-6
LAW_TESTS = 9
LAW_DERIVATION = (
    "nine tests at 1.1e-7 each (Bonferroni): per call, the pooled mean z (exactly N(0, 1)), the χ² of the squared "
    "residuals (exactly χ²(65,536)) and the χ² of the 16 per-coordinate mean z's (exactly χ²(16)); across the two "
    "calls, three correlation tests (between calls, between batch elements, between coordinates: Chernoff bounds)"
)


def _law_tests(r1: torch.Tensor, r2: torch.Tensor, alpha: float, labels: tuple[str, str]) -> list:
    """The nine tests of a law check on two calls' residuals ``(B, 16)``."""
    a = alpha / LAW_TESTS
    tests = []
    for r, label in zip((r1, r2), labels):
        per_coordinate = r.sum(0) / math.sqrt(r.shape[0])  # (16,) exactly N(0, 1) each
        tests += [
            mean_z(r, a, f"z of the mean ({label})"),
            variance_chi2(r, a, f"mean of squared residuals ({label})"),
            variance_chi2(per_coordinate, a, f"mean square of the 16 per-coordinate mean z's ({label})"),
        ]
    half = r1.shape[0] // 2
    both = torch.cat([r1, r2], 1)
    tests += [
        product_z(r1, r2, a, "correlation between the two calls"),
        product_z(both[:half], both[half: 2 * half], a, "correlation between batch elements"),
        product_z(both[:, 0::2], both[:, 1::2], a, "correlation between coordinates"),
    ]
    return tests


def _standardise(value: Any, law: tuple[torch.Tensor, torch.Tensor], shape: tuple, what: str) -> torch.Tensor:
    x = as_tensor(value, what)
    if tuple(x.shape) != shape:
        raise Mismatch(f"{what} has shape {tuple(x.shape)}; expected {shape}")
    if not x.is_floating_point():
        raise Mismatch(f"{what} has dtype {x.dtype}; a floating-point tensor was expected")
    mean, var = law
    return (x.detach().to("cpu", torch.float64) - mean) / var.sqrt()


def _law_schedule() -> torch.Tensor:
    return compute_alphas_cumprod(schedule_betas("linear", 1000))


def single_transition_law(ctx: Context, alpha: float) -> StatReport:
    """ddim_sample from a fixed x_T with two steps: σ_t(η) enters only in the first, so the law isolates η.

    "trailing", T = 1000, num_steps = 2: 999 → 499 adds σ·z, 499 → data is deterministic
    (σ = 0 where ᾱ_prev = 1). From a fixed x_T the whole spread of the output is σ times
    the last step's slope, so any error in σ (η², a wrong ratio, a missing √) or in the
    noise (uniform, shared, reused) shows at full strength. Called with η = 0.5 and η = 1.

    Power (65,536 residuals per call, each test at 1.1e-7: |z| ≤ 5.3, mean square within
    [0.971, 1.030], whose own standard error is √(2/n) ≈ 0.0055), measured on the bug
    catalogue: η² at η = ½ gives a mean square of 0.29; the direction √(1 − ᾱ_prev)·ε
    without −σ² 1.08 at η = ½ (9 standard errors beyond the bound) and 1.95 at η = 1;
    uniform noise a mean z of 128; noise shared by the batch a batch correlation z of 250.
    Each is far enough beyond its threshold to be caught on every seed (a miss needs a
    ≥ 8-standard-error fluctuation, probability < 1e-15).
    """
    g = ctx.generator("ddim single transition law")
    ac = _law_schedule()
    data = GaussianData(LAW_MEAN, LAW_VAR)
    x_T = torch.randn((LAW_BATCH, 16), generator=g, dtype=torch.float64).to(torch.float32)
    spec = model_spec(LAW_MEAN, LAW_VAR, ac, torch.float32, ctx, record=False)
    inputs, laws_ = [], []
    for i, eta in enumerate((0.5, 1.0)):
        inputs.append(Inputs(
            {"eps_model": spec, "shape": (LAW_BATCH, 16), "alphas_cumprod": ac.to(ctx.device), "num_steps": 2},
            {"eta": eta, "spacing": "trailing", "generator": wire.generator_spec(ctx.seed_for("single", i) % 2**63,
                                                                                  str(ctx.device)),
             "x_T": x_T.to(ctx.device)},
            notes={"eps_model": "the optimal ε-model of Gaussian data N(μ, diag(s²)), 16 coordinates, s² from 1e-4 to 3",
                   "alphas_cumprod": "linear schedule, T = 1000 (float64)",
                   "x_T": "float32 (4096, 16), fixed N(0, 1) draws"},
        ))
        laws_.append(laws.ddim_sample_law(data, ac, 2, eta, "trailing", x_T=x_T.double()))
    first, second = ctx.call("ddim_sample", inputs, tag="single transition law")
    r1 = _standardise(value_of(first), laws_[0], (LAW_BATCH, 16), "ddim_sample's result (η = 0.5)")
    r2 = _standardise(value_of(second), laws_[1], (LAW_BATCH, 16), "ddim_sample's result (η = 1)")
    return StatReport(_law_tests(r1, r2, alpha, ("η = 0.5", "η = 1")), torch.cat([r1, r2]), inputs[0],
                      note="Each output was standardised by its exact law: the two steps 999 → 499 → data from the "
                           "given x_T, on Gaussian data with the optimal ε-model (η = 0.5 and η = 1).")


def sample_law(ctx: Context, alpha: float) -> StatReport:
    """ddim_sample with x_T = None and η = 1 over four "linspace" steps: the start and three noisy transitions.

    Timesteps 999, 666, 333, 0: x_T ~ N(0, I) is drawn by the student, then three steps
    add noise (the last, 0 → data, does not). The exact law of the output is N(m, v) per
    coordinate (reference.laws.ddim_sample_law); two calls with different generator seeds.

    Power (thresholds as in :func:`single_transition_law`), measured on the bug catalogue:
    one noise reused for every step gives a mean square of 1.53; uniform noise a mean z of
    158; noise shared by the batch a batch correlation z of 326; a sampler that ignores the
    generator (global noise of the wrong shape) 212; the direction without −σ² a mean square
    of 4.3. All are caught on every seed.
    """
    ac = _law_schedule()
    data = GaussianData(LAW_MEAN, LAW_VAR)
    spec = model_spec(LAW_MEAN, LAW_VAR, ac, torch.get_default_dtype(), ctx, record=False)
    inputs = [Inputs(
        {"eps_model": spec, "shape": (LAW_BATCH, 16), "alphas_cumprod": ac.to(ctx.device), "num_steps": 4},
        {"eta": 1.0, "spacing": "linspace",
         "generator": wire.generator_spec(ctx.seed_for("sample law", i) % 2**63, str(ctx.device))},
        notes={"eps_model": "the optimal ε-model of Gaussian data N(μ, diag(s²)), 16 coordinates, s² from 1e-4 to 3",
               "alphas_cumprod": "linear schedule, T = 1000 (float64)"},
    ) for i in range(2)]
    law = laws.ddim_sample_law(data, ac, 4, 1.0, "linspace")
    first, second = ctx.call("ddim_sample", inputs, tag="sample law")
    r1 = _standardise(value_of(first), law, (LAW_BATCH, 16), "ddim_sample's result")
    r2 = _standardise(value_of(second), law, (LAW_BATCH, 16), "ddim_sample's second result")
    return StatReport(_law_tests(r1, r2, alpha, ("first call", "second call")), torch.cat([r1, r2]), inputs[0],
                      note="Each output was standardised by the exact law of DDIM with η = 1 over the timesteps "
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
            function="ddim_timesteps", cases=timestep_cases(), build=build_timesteps, examples=TIMESTEP_EXAMPLES,
            max_examples=60,
            aspects=(Aspect("equal diffusers' timesteps for every spacing", 3, judge_timesteps),
                     Aspect("a LongTensor on the CPU", 1, judge_timesteps_dtype, shrink=False)),
        ),
        Agreement(
            function="ddim_sigma", cases=sigma_cases(), build=build_sigma, examples=SIGMA_EXAMPLES,
            reference=ref.ddim_sigma, tolerance=SCHEDULE_TOLERANCE, dtype_from="alpha_cumprod_t",
            device_from="alpha_cumprod_t", points=2, dtype_points=1, diagnoses=SIGMA_DIAGNOSES,
        ),
        DDIMProperty(
            function="ddim_step", cases=step_cases(), build=build_step, examples=STEP_EXAMPLES, max_examples=40,
            aspects=(Aspect("matches the reference (noise injected)", 3, judge_step_values),
                     dtype_device_aspect("xt", "xt", name="output dtype and device follow xt")),
            diagnoses=STEP_DIAGNOSES,
        ),
        DDIMProperty(
            function="ddim_step", cases=step_cases(ddpm=True), build=build_step, examples=DDPM_EXAMPLES,
            aspects=(Aspect("with η = 1 and t_prev = t − 1 it is DDPM's ancestral step", 2, judge_step_is_ddpm),),
            diagnoses=STEP_DIAGNOSES,
        ),
        DDIMProperty(
            function="ddim_sample", cases=chain_cases(), build=build_sample, examples=CHAIN_EXAMPLES,
            aspects=(Aspect("with η = 0 and a given x_T it matches the reference", 3, judge_sample_values),
                     dtype_device_aspect("x_T", "x_T", name="output dtype and device follow x_T"),
                     Aspect("calls the model once per sample at each timestep, from the largest", 1,
                            judge_model_calls(descending=True), shrink=False)),
            diagnoses=SAMPLE_DIAGNOSES,
        ),
        Property(
            function="ddim_sample", cases=generator_cases(), build=build_generators, examples=GENERATOR_EXAMPLES,
            max_examples=6, probe=sample_with_seeds,
            aspects=(Aspect("without x_T, draws from `generator`: the same seed gives the same samples", 1,
                            judge_generator_reproducible),
                     Aspect("without x_T, x_T is drawn in the default dtype on the generator's device", 1,
                            judge_generator_dtype, shrink=False)),
        ),
        Statistical(
            function="ddim_sample", name="with η > 0, one noisy step from a fixed x_T follows the exact law",
            procedure=single_transition_law, alpha=LAW_ALPHA, derivation=LAW_DERIVATION, points=2,
        ),
        Statistical(
            function="ddim_sample", name="with η = 1 and x_T drawn, the samples follow the exact law of the sampler",
            procedure=sample_law, alpha=LAW_ALPHA, derivation=LAW_DERIVATION, points=2,
        ),
        DDIMProperty(
            function="ddim_invert", cases=chain_cases(), build=build_invert, examples=CHAIN_EXAMPLES,
            aspects=(Aspect("matches the reference", 3, judge_invert_values),
                     dtype_device_aspect("x0", "x0", name="output dtype and device follow x0"),
                     Aspect("calls the model once per sample at each timestep, from the smallest", 1,
                            judge_model_calls(descending=False), shrink=False)),
            diagnoses=INVERT_DIAGNOSES,
        ),
        Property(
            function="ddim_invert", cases=round_trip_cases(), build=build_round_trip, examples=ROUND_TRIP_EXAMPLES,
            max_examples=3,
            aspects=(Aspect(f"η = 0 sampling from its x_T returns x₀ within {ROUND_TRIP_STDS} standard deviations", 2,
                            judge_round_trip),),
        ),
    ),
)
