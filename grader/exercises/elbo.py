"""Checks of exercise 2, elbo: the Gaussian KL, the discretised decoder, the terms of the bound, the bound.

Point budget (24): normal_kl 3 + 2 (KL ≥ 0, KL(p‖p) = 0); discretized_gaussian_log_likelihood 3 + 2 (the bins
sum to one, open-ended edge bins); prior_bpd 3; vlb_term_bpd 4 + 1 (the decoder exactly at t = 0); elbo_bpd 2
deterministic + 4 statistical. The decoder's normal CDF may be the exact one (erf) or improved-diffusion's
tanh approximation (curriculum §2): every check that sees a decoder term accepts both.

Statistical checks (2), each at level 1e-6: the submission's false-failure probability is ≤ 2e-6
(Bonferroni). elbo_bpd draws its own noise in its own order, so its value is judged against the exact law of
a one-sample ELBO estimate (T independent draws, in any order) for Gaussian data and its optimal ε-model
(:class:`reference.elbo.ElboLaw`, whose moment generating function is exact): Chernoff bounds give
thresholds at a guaranteed level (:data:`MEAN_DERIVATION`, :data:`BOUND_DERIVATION`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from hypothesis import strategies as st

from grader.checks import (DEFAULT_TOLERANCE, Agreement, Aspect, Context, Diagnosis, Inputs, Mismatch, Property,
                           Reproducible, Statistical, StatReport, Tolerance, as_tensor, as_tuple, compare,
                           dtype_device_aspect, output_aspect, show, value_of)
from grader.exercises import Exercise
from grader.exercises._common import DTYPES, case_tensors, data_shapes, dtypes, gaussian, horizons, schedule_betas, schedule_note, schedules, seeds
from grader.stats import Statistic
from reference import elbo as ref
from reference._broadcast import extract
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule, posterior_coefficients, q_posterior

LN2 = math.log(2.0)
GRID = ref.LEVELS  # the 256 levels of 8-bit data, −1 + 2k/255
level = GRID.tolist()  # level[k] = −1 + 2k/255 as a Python float


def notes_for_large(notes: dict, args: dict) -> dict:
    """Keep a note only where its tensor is too large to be shown by value (≤ 12 elements are shown)."""
    return {k: v for k, v in notes.items() if k not in args or args[k].numel() > 12}


# -- normal_kl ---------------------------------------------------------------------------------

#: KL = ½(e^r − r − 1 + Δμ²·e^{−logvar2}), r = logvar1 − logvar2, |logvar| ≤ 20, |mean| ≤ 10. Any
#: formula sums ~5 terms, each ≤ 2·KL + 1 + |logvar1| + |logvar2| (since e^r − r − 1 ≥ 0 and the Δμ²
#: term is ≤ 2·KL), so float32 evaluation errs by ≲ 8u·(2 + 2·40 + 4·KL) with u = 6e-8: ≤ 4e-5
#: absolute plus 2e-6 relative. 1e-4 absolute and relative leave a 2.5x margin where it is tightest (the
#: exp of r = ±40 adds 40u relative, inside the margin). float64 the same with u = 1.1e-16.
KL_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=1e-4, rtol64=1e-9, atol64=1e-10,
    why="~5 terms of size ≤ 2·KL + 1 + |logvar1| + |logvar2| ≤ 2·KL + 41, each within a few units of round-off",
)


@st.composite
def kl_cases(draw) -> dict:
    """Elementwise KL inputs: data shapes, dtypes, spreads of means and log-variances (≤ 20 in size)."""
    return {"preset": None, "shape": draw(data_shapes), "dtype": draw(dtypes),
            "mean_scale": draw(st.sampled_from([0.0, 0.1, 1.0, 10.0])),
            "logvar_scale": draw(st.sampled_from([0.0, 1.0, 5.0, 20.0])), "seed": draw(seeds)}


#: Extreme log-variances (variances from 2e-9 to 5e8) and a near-equal pair, one per element.
KL_EXTREMES = ((0.0, -20.0, 0.0, 20.0), (0.0, 20.0, 0.0, -20.0), (10.0, 0.0, -10.0, -20.0), (1.0, 1e-6, 1.0, 0.0),
               (-3.0, -20.0, 3.0, -20.0), (0.5, 20.0, 0.5, 20.0))
KL_EXAMPLES = tuple({"preset": "extremes", "shape": (len(KL_EXTREMES),), "dtype": d, "mean_scale": 0.0,
                     "logvar_scale": 0.0, "seed": 0} for d in ("float32", "float64"))


def build_kl(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    names = ("mean1", "logvar1", "mean2", "logvar2")
    if case["preset"] == "extremes":
        columns = torch.tensor(KL_EXTREMES, dtype=torch.float64).T
        values = {n: c.to(dtype).to(ctx.device) for n, c in zip(names, columns)}
        return Inputs(values, notes={n: f"{case['dtype']} {show(c)}" for n, c in zip(names, columns)})
    g = torch.Generator().manual_seed(case["seed"])
    values = {}
    for name in names:  # means within ±10, log-variances within ±20 (variances from 2e-9 to 5e8)
        scale, cap = (case["mean_scale"], 10.0) if name.startswith("mean") else (case["logvar_scale"], 20.0)
        values[name] = (scale * gaussian(case["shape"], g, torch.float64, ctx)).clamp(-cap, cap)
    if case["logvar_scale"] == 0.0 and case["mean_scale"] == 0.0:
        values["mean2"] = values["mean2"] + 0.5  # p and q still differ
    return Inputs({n: v.to(dtype) for n, v in values.items()})


def kl_both_ways(ns, mean1, logvar1, mean2, logvar2):
    """Probe: KL(p ‖ q) and KL(p ‖ p) for p = N(mean1, e^logvar1), q = N(mean2, e^logvar2)."""
    return ns.normal_kl(mean1, logvar1, mean2, logvar2), ns.normal_kl(mean1, logvar1, mean1, logvar1)


def kl_judge(index: int, call: str, wrong: Callable, rule: str) -> Callable:
    """A judge of item ``index`` of :func:`kl_both_ways`: elementwise, finite, nowhere ``wrong(kl, slack)`` (slack:
    the round-off a correct KL may show around 0, KL_TOLERANCE's absolute part for the dtype)."""

    def judge(inputs: Inputs, outcome) -> None:
        got = as_tensor(as_tuple(outcome.value, ("KL(p ‖ q)", "KL(p ‖ p)"), "the probe's result")[index], call)
        if got.shape != inputs.args["mean1"].shape:
            raise Mismatch(f"{call} has shape {tuple(got.shape)}; expected {tuple(inputs.args['mean1'].shape)}")
        kl, slack = got.detach().to("cpu", torch.float64), KL_TOLERANCE.for_dtype(got.dtype)[1]
        bad = (~torch.isfinite(kl) | wrong(kl, slack)).flatten()
        if bool(bad.any()):
            worst = int(bad.nonzero()[0])
            raise Mismatch(f"{call} = {kl.flatten()[worst].item():.6g} at flat index {worst}: {rule} (allowed "
                           f"round-off: {slack:g})")

    return judge


# -- discretized_gaussian_log_likelihood -------------------------------------------------------

#: Compared as probabilities, exp(result), with |Δp| ≤ 4e-4 in both dtypes. improved-diffusion's tanh
#: approximation of Φ errs by at most 1.79e-4 (at z ≈ ±2.59; reference.elbo and its tests measure it), and
#: a bin is a difference of two CDF values whose errors can have opposite signs (the error is odd in z), so
#: a tanh bin probability is within 2 × 1.79e-4 = 3.58e-4 of the exact one; an edge bin, one CDF value,
#: within 1.79e-4. float32 round-off adds ≤ 1e-6 (the standardised edges carry ~3u relative error and the
#: CDF's slope is ≤ 0.4). 4e-4 covers both with a 10% margin. Log-probabilities are not compared directly:
#: where p is small, either CDF error is large relative to p.
PROBABILITY_TOLERANCE = Tolerance(
    rtol32=0.0, atol32=4e-4, rtol64=0.0, atol64=4e-4,
    why="a bin is a difference of two CDF values, each within 1.79e-4 of Φ for the tanh approximation",
)


@st.composite
def dgll_cases(draw) -> dict:
    """8-bit data (edges included); standard deviations narrow (≤ a bin), mixed or broad (most bins tiny); means
    0–40 standard deviations from x (at 40, every probability underflows to 0)."""
    return {"preset": None, "shape": draw(data_shapes), "dtype": draw(dtypes),
            "scales": draw(st.sampled_from(["narrow", "mixed", "broad"])),
            "spread": draw(st.sampled_from([0.0, 0.5, 2.0, 40.0])), "edges": draw(st.booleans()), "seed": draw(seeds)}


SCALE_RANGES = {"narrow": (1e-3, 5e-3), "mixed": (1e-3, 1.0), "broad": (0.1, 2.0)}
#: Edge cases, one per element: the lowest and highest bins with means inside, at and beyond the edges,
#: a bin next to each edge, and bins where all the mass sits in one bin.
DGLL_EDGES = (  # (x, mean, standard deviation)
    (-1.0, -1.5, 0.3), (-1.0, -0.98, 0.01), (-1.0, 0.5, 0.5), (1.0, 1.3, 0.2), (1.0, 0.97, 0.02), (1.0, -0.5, 0.5),
    (level[1], level[1], 1e-3), (level[254], level[254] + 0.5 / 255, 1e-3), (0.0 + 1 / 255, 0.0, 0.005),
)
DGLL_EXAMPLES = tuple({"preset": "edges", "shape": (len(DGLL_EDGES),), "dtype": d, "scales": "mixed", "spread": 0.0,
                       "edges": True, "seed": 0} for d in ("float32", "float64"))


def grid_data(shape: tuple, g: torch.Generator, edges: bool) -> torch.Tensor:
    """float64 ``shape`` of levels −1 + 2k/255; with ``edges``, about a quarter of them at −1 or +1."""
    k = torch.randint(0, 256, shape, generator=g)
    if edges:
        u = torch.rand(shape, generator=g)
        k = torch.where(u < 0.125, torch.zeros_like(k), torch.where(u > 0.875, torch.full_like(k, 255), k))
    return GRID[k]


def build_dgll(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    if case["preset"] == "edges":
        x, mean, scale = torch.tensor(DGLL_EDGES, dtype=torch.float64).T
        log_scale = scale.log()
        notes = {"x": show(x), "mean": show(mean), "log_scale": f"log of {show(scale)}"}
    else:
        g = torch.Generator().manual_seed(case["seed"])
        shape = case["shape"]
        x = grid_data(shape, g, case["edges"])
        low, high = SCALE_RANGES[case["scales"]]
        log_scale = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(shape, generator=g, dtype=torch.float64)
        mean = x + case["spread"] * log_scale.exp() * torch.randn(shape, generator=g, dtype=torch.float64)
        notes = notes_for_large({"x": f"{case['dtype']} tensor of shape {shape}: levels −1 + 2k/255"
                                 + (", many at ±1" if case["edges"] else "")}, {"x": x})
    return Inputs({"x": x.to(dtype).to(ctx.device), "mean": mean.to(dtype).to(ctx.device),
                   "log_scale": log_scale.to(dtype).to(ctx.device)}, notes=notes)


DGLL_VALUES = "matches the reference (probabilities; the tanh-approximate CDF is accepted)"


def _log_probabilities(inputs: Inputs, outcome) -> torch.Tensor:
    """The result as float64 log-probabilities of x's shape, all finite, or :class:`Mismatch`."""
    got = as_tensor(outcome.value, "the result")
    shape = tuple(inputs.args["x"].shape)
    if tuple(got.shape) != shape or not got.is_floating_point():
        raise Mismatch(f"the result has shape {tuple(got.shape)} and dtype {got.dtype}; expected a floating-point "
                       f"tensor of shape {shape} (elementwise)")
    log_p = got.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(log_p).all()):
        bad = int((~torch.isfinite(log_p)).flatten().nonzero()[0])
        raise Mismatch(f"the result is {log_p.flatten()[bad].item()} at flat index {bad}: a log-probability must be "
                       "finite. Clamp each probability at 1e-12 before the log (far from the mean a bin's probability "
                       "is 0 in floating point, and log 0 = −∞).")
    return log_p


def judge_dgll_values(inputs: Inputs, outcome) -> None:
    """Finite log-probabilities ≤ 0 whose exponentials are the bin probabilities (either CDF)."""
    log_p = _log_probabilities(inputs, outcome)
    if bool((log_p > 1e-6).any()):
        bad = int(log_p.flatten().argmax())
        raise Mismatch(f"the result is {log_p.flatten()[bad].item():.6g} > 0 at flat index {bad}: a log-probability "
                       "of a bin is at most 0")
    expected = inputs.call_reference(ref.discretized_gaussian_log_likelihood)
    compare(log_p.exp(), expected.exp(), PROBABILITY_TOLERANCE, "exp(result), the bin probability,")


def _dgll_with(half_width: float, open_edges: bool) -> Callable:
    """A mistaken discretised likelihood: bins of another half-width, or closed edge bins."""

    def wrong(x, mean, log_scale):
        centered, inv, cdf = x - mean, torch.exp(-log_scale), torch.special.ndtr
        upper, lower = cdf(inv * (centered + half_width)), cdf(inv * (centered - half_width))
        inner = torch.log((upper - lower).clamp(min=1e-12))
        return inner if not open_edges else torch.where(x < -0.999, torch.log(upper.clamp(min=1e-12)), torch.where(
            x > 0.999, torch.log((1 - lower).clamp(min=1e-12)), inner))

    return wrong


@st.composite
def grid_cases(draw) -> dict:
    """The 256 bins: every row holds the whole grid, one mean and one scale per row."""
    return {"rows": draw(st.integers(1, 3)), "dtype": draw(dtypes), "mean_range": draw(st.sampled_from([1.0, 3.0])),
            "log_scale_range": draw(st.sampled_from([(math.log(1e-4), math.log(1e-2)), (math.log(1e-3), math.log(10.0))])),
            "seed": draw(seeds), "preset": None}


#: Means below, on and above the edges, and all the mass in one bin or in the edge bins.
GRID_PRESET = ((-3.0, 0.5), (-1.2, 0.05), (0.0, 1e-4), (level[100] + 1 / 255, 1e-4), (1.2, 0.05), (3.0, 10.0))
GRID_EXAMPLES = tuple({"rows": len(GRID_PRESET), "dtype": d, "mean_range": 0.0, "log_scale_range": (0.0, 0.0),
                       "seed": 0, "preset": "edges"} for d in ("float32", "float64"))


def build_grid(case: dict, ctx: Context) -> Inputs:
    dtype = DTYPES[case["dtype"]]
    rows = case["rows"]
    if case["preset"] == "edges":
        mean, scale = torch.tensor(GRID_PRESET, dtype=torch.float64).T
        log_scale = scale.log()
    else:
        g = torch.Generator().manual_seed(case["seed"])
        mean = case["mean_range"] * (2 * torch.rand(rows, generator=g, dtype=torch.float64) - 1)
        low, high = case["log_scale_range"]
        log_scale = low + (high - low) * torch.rand(rows, generator=g, dtype=torch.float64)
    x = GRID.expand(rows, 256)
    args = {"x": x, "mean": mean[:, None].expand(rows, 256), "log_scale": log_scale[:, None].expand(rows, 256)}
    notes = {"x": f"{case['dtype']} tensor of shape ({rows}, 256): every row holds the 256 levels −1 + 2k/255",
             "mean": f"one mean per row: {show(mean)}",
             "log_scale": f"one log-scale per row: log of {show(log_scale.exp())}"}
    return Inputs({k: v.contiguous().to(dtype).to(ctx.device) for k, v in args.items()}, notes=notes)


#: Σ_k P(k) telescopes to Φ(∞) − Φ(−∞) = 1 for any CDF, the tanh one included, except for: the clamp,
#: which can raise ≤ 255 bins to 1e-12 (≤ 2.6e-10); in float64, round-off of 256 terms (≤ 1e-12, see
#: tests/reference/test_elbo.py); in float32, the bin edges x_k + 1/255 and x_{k+1} − 1/255 that are equal
#: in exact arithmetic but not in float32 (≤ 1 ulp of x apart: a CDF gap of ≤ 0.4·6e-8/s, s ≥ 1e-4, at the
#: few bins near the mean) plus float32 rounding of each probability and of the sum (≤ 256 × 6e-8 = 1.5e-5).
#: 1e-3 (float32) and 1e-9 (float64) leave a margin of ≥ 4; a missing or doubled bin, or edges that are
#: not open-ended, move the sum by far more.
SUM_TOLERANCE = Tolerance(rtol32=0.0, atol32=1e-3, rtol64=0.0, atol64=1e-9,
                          why="the clamp, and float32 bin edges that are equal in exact arithmetic only")


def judge_sums_to_one(inputs: Inputs, outcome) -> None:
    """Σ over the 256 levels of exp(result) = 1 for every row."""
    total = _log_probabilities(inputs, outcome).exp().sum(1)
    try:
        compare(total, torch.ones_like(total), SUM_TOLERANCE, "the sums over the 256 levels (one per row)",
                dtype=outcome.value.dtype)
    except Mismatch as mismatch:
        raise Mismatch(f"{mismatch}. Each value x = −1 + 2k/255 owns the bin [x − 1/255, x + 1/255], except that "
                       "the lowest bin extends to −∞ and the highest to +∞.") from None


def judge_open_edges(inputs: Inputs, outcome) -> None:
    """P(x = −1) = Φ((−1 + 1/255 − μ)/s) and P(x = 1) = 1 − Φ((1 − 1/255 − μ)/s), within PROBABILITY_TOLERANCE."""
    p = _log_probabilities(inputs, outcome).exp()[:, [0, 255]]
    mean = inputs.args["mean"][:, :1].to("cpu", torch.float64)
    scale = inputs.args["log_scale"][:, :1].to("cpu", torch.float64).exp()
    edges = torch.special.ndtr(torch.cat([-1 + 1 / 255 - mean, mean - 1 + 1 / 255], 1) / scale)
    try:
        compare(p, edges, PROBABILITY_TOLERANCE, "the probabilities of the lowest and highest bins, (row, [x = −1, x = 1]),")
    except Mismatch as mismatch:
        raise Mismatch(f"{mismatch}. The edge bins are open-ended: x < −0.999 owns (−∞, −1 + 1/255] and x > 0.999 owns "
                       "[1 − 1/255, ∞), so that no probability falls outside the 256 levels.") from None


# -- prior_bpd ---------------------------------------------------------------------------------

#: L_T per element is ½(ᾱx² + (1 − ᾱ) − 1 − log(1 − ᾱ)) with ᾱ = ᾱ_{T−1}: terms of size ≤ ~35 for the
#: schedules drawn (|x| ≤ 5, |log(1 − ᾱ)| ≤ 8 for T ≥ 2), so float32 errs by ≲ 8u·35 ≈ 2e-5 nats ≈ 3e-5
#: bits/dim, whatever the grouping (1 − ᾱ − 1 cancels; expm1 or log1p do not have to be used). 1e-4
#: absolute and relative cover it with a 3x margin. float64: 1e-10 absolute is 10⁵ times its round-off.
PRIOR_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=1e-4, rtol64=1e-9, atol64=1e-10,
    why="terms of size ≤ ~35 that cancel to a small KL: a few units of round-off of those terms",
)


@st.composite
def prior_cases(draw) -> dict:
    T = max(draw(horizons), 2)
    return {"T": T, "schedule": draw(schedules), "shape": draw(data_shapes), "dtype": draw(dtypes),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "seed": draw(seeds)}


PRIOR_EXAMPLES = tuple({"T": T, "schedule": s, "shape": (3, 2), "dtype": d, "schedule_dtype": "float64", "seed": 0}
                       for T in (2, 10) for s in ("linear", "cosine") for d in ("float32", "float64"))


def build_prior(case: dict, ctx: Context) -> Inputs:
    c = case_tensors({**case, "t": ()}, ctx)  # x0 is its first N(0, I) draw from the case's seed
    return Inputs({"x0": c["x"], "alphas_cumprod": c["alphas_cumprod"]},
                  notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], c["schedule_dtype"])})


# -- vlb_term_bpd ------------------------------------------------------------------------------

#: Per row, a mean over dims of KL terms and decoder NLLs (nats, / ln 2), compared in bits/dim.
#: float64: the KL (μ̃ − μ_θ)²/(2σ²) + ½(e^r − 1 − r) of O(1) values and the log of bin probabilities
#: ≥ 1e-3 (see build_vlb) are within ~1e-13 relative. float32, with the schedule's coefficients computed
#: in float64 then cast (as taught in q_sampler): μ̃ errs by ~3u·(|c₁x₀| + |c₂x_t|) ≤ 1e-6, and the KL of a
#: mean offset of ½σ_θ·z by ≤ |z|·1e-6/σ_θ ≤ 2e-4·|z| relative at the smallest σ_θ (7e-3, t = 1 of the
#: linear schedule, T = 1000); a bin probability ≥ 1e-3 by ≤ 1e-4 relative. 2e-3 relative + 2e-4 absolute
#: cover that with a margin of ≥ 2 on the per-row means. (Computing μ̃ from a float32 ᾱ is ill-conditioned
#: there: 1 − ᾱ₀ = 1e-4 loses 3e-4 of its accuracy, and the KL amplifies μ̃'s error by |μ̃|/σ_θ ≈ 100.)
VLB_TOLERANCE = Tolerance(
    rtol32=2e-3, atol32=2e-4, rtol64=1e-9, atol64=1e-10,
    why="the KL of two close Gaussians amplifies the round-off of μ̃ by |μ̃|/σ; bin probabilities ≥ 1e-3",
)


@st.composite
def vlb_cases(draw) -> dict:
    """t = 0, 1 and T − 1 often; the model's log-variance per element, or per batch element ((B, 1, …))."""
    T = max(2, draw(horizons))
    shape = draw(data_shapes)
    return {"T": T, "schedule": draw(schedules), "shape": shape, "dtype": draw(dtypes),
            "t": tuple(draw(st.lists(st.sampled_from([0, 0, 1, T - 1]) | st.integers(0, T - 1),
                                     min_size=shape[0], max_size=shape[0]))),
            "log_variance_shape": draw(st.sampled_from(["full", "per-sample"])), "seed": draw(seeds)}


VLB_EXAMPLES = tuple({"T": T, "schedule": s, "shape": (4, 3), "dtype": d, "t": (0, 1, 0, T - 1),
                      "log_variance_shape": v, "seed": 0}
                     for T, s, d, v in ((10, "linear", "float32", "full"), (10, "cosine", "float64", "per-sample"),
                                        (1000, "linear", "float32", "per-sample"), (1000, "cosine", "float64", "full"),
                                        (2, "linear", "float64", "full")))


def build_vlb(case: dict, ctx: Context) -> Inputs:
    """8-bit x₀ (edges too), x_t ~ q(x_t | x₀), and a model a fraction of a σ off the posterior: log-variance
    log β̃_t (clipped) ± 0.5, mean μ̃ + ½σ_θ·z with z ~ N(0, 1) clamped to ±3. KL terms of 0.02–2 nats, and at
    t = 0 decoder bins of probability ≥ 1e-3."""
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    shape, B = case["shape"], case["shape"][0]
    betas = schedule_betas(case["schedule"], case["T"])
    t = torch.tensor(case["t"], dtype=torch.long)
    x0 = grid_data(shape, g, edges=True)
    xt = ref.q_sample(x0, t, compute_alphas_cumprod(betas), noise=torch.randn(shape, generator=g, dtype=torch.float64))
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    per = shape if case["log_variance_shape"] == "full" else (B, *([1] * (len(shape) - 1)))
    log_variance = extract(posterior_coefficients(betas)["posterior_log_variance_clipped"], t, x0)
    model_log_variance = log_variance + 0.5 * (2 * torch.rand(per, generator=g, dtype=torch.float64) - 1)
    z = torch.randn(shape, generator=g, dtype=torch.float64).clamp(-3, 3)
    model_mean = true_mean + 0.5 * (0.5 * model_log_variance).exp() * z
    move = {"model_mean": model_mean, "model_log_variance": model_log_variance, "x0": x0, "xt": xt}
    args = {k: v.to(dtype).to(ctx.device) for k, v in move.items()}
    args["t"] = t.to(ctx.device)
    args["betas"] = betas.to(ctx.device)
    notes = {"betas": schedule_note(case["schedule"], case["T"], torch.float64, "β"),
             "x0": f"{case['dtype']} tensor of shape {shape}: levels −1 + 2k/255, some at ±1",
             "model_log_variance": f"{case['dtype']} tensor of shape {per}: log β̃_t (clipped) ± 0.5"}
    return Inputs(args, notes=notes_for_large(notes, args))


@st.composite
def switch_cases(draw) -> dict:
    T = draw(st.sampled_from([2, 3, 10, 1000]))
    shape = (5, *draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    return {"T": T, "schedule": draw(schedules), "shape": shape, "dtype": draw(dtypes),
            "t": (0, 1, 0, min(2, T - 1), T - 1), "log_variance_shape": "per-sample", "seed": draw(seeds)}


SWITCH_EXAMPLES = tuple({"T": T, "schedule": "linear", "shape": (5, 3), "dtype": "float64",
                         "t": (0, 1, 0, min(2, T - 1), T - 1), "log_variance_shape": "per-sample", "seed": 1}
                        for T in (2, 1000))


def _vlb_reversed_kl(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(model_mean, model_log_variance, true_mean, true_log_variance).expand_as(x0)
    return torch.where(t == 0, ref.vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas),
                       kl.reshape(x0.shape[0], -1).mean(1) / LN2)


# -- elbo_bpd: deterministic -------------------------------------------------------------------


@st.composite
def elbo_cases(draw) -> dict:
    return {"T": draw(st.sampled_from([2, 3, 5, 10])), "schedule": draw(schedules), "shape": draw(data_shapes),
            "dtype": draw(dtypes), "seed": draw(seeds)}


ELBO_EXAMPLES = tuple({"T": T, "schedule": "linear", "shape": shape, "dtype": d, "seed": 0}
                      for T, shape, d in ((2, (3,), "float64"), (10, (2, 1, 2, 2), "float32")))


def build_elbo(case: dict, ctx: Context) -> Inputs:
    """Gaussian data's optimal ε-model (in the data's dtype), 8-bit x₀ drawn from the data, a short schedule."""
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    shape = case["shape"]
    mean = 0.6 * (2 * torch.rand(shape[1:], generator=g, dtype=torch.float64) - 1)
    var = 0.01 + 0.2 * torch.rand(shape[1:], generator=g, dtype=torch.float64)
    x0 = mean + var.sqrt() * torch.randn(shape, generator=g, dtype=torch.float64)
    x0 = ref.to_levels(x0)
    betas = schedule_betas(case["schedule"], case["T"])
    model = ctx.model_spec("gaussian_eps", mean=mean.to(dtype), var=var.to(dtype),
                           alphas_cumprod=compute_alphas_cumprod(betas))
    return Inputs({"eps_model": model, "x0": x0.to(dtype).to(ctx.device), "betas": betas.to(ctx.device)},
                  {"generator": ctx.generator_spec(seed=case["seed"])},
                  notes={"eps_model": "the optimal ε-model of Gaussian data N(μ, diag(s²)), in x0's dtype",
                         "betas": schedule_note(case["schedule"], case["T"], torch.float64, "β"),
                         "generator": f"torch.Generator(x0.device).manual_seed({case['seed']}), twice"})


#: Two runs with generators seeded alike (reproducibility is judged on them); the first run's result is
#: the one whose form is judged.
REPRODUCIBLE = Reproducible("elbo_bpd")  # two runs, generators seeded alike; the first run's form is judged
ELBO_FORM = output_aspect("returns (B,), finite, in x0's dtype and on its device", 1, shape=lambda i: (i.args["x0"].shape[0],),
                          dtype="x0", device="x0", finite=True, items=REPRODUCIBLE.first)


def judge_elbo_form(inputs: Inputs, outcome) -> None:
    """(B,), finite, in x0's dtype and on its device; a NaN or infinity comes with its usual cause."""
    try:
        ELBO_FORM.judge(inputs, outcome)
    except Mismatch as mismatch:
        hint = " At t = 0 the model's log-variance is the clipped log β̃₁ (β̃₀ = 0 has log −∞)." if "NaN" in str(mismatch) else ""
        raise Mismatch(f"{mismatch}{hint}") from None


# -- elbo_bpd: the exact law of the estimate ----------------------------------------------------

#: The schedule of the mean check, T = 10: β from 0.01 to 0.05 over nine steps, then a last step of 0.3.
#: It magnifies what a missing term costs: ᾱ_{T−1} ≈ 0.53, so L_T ≈ 0.28 bits/dim, and the last KL term
#: L_{T−1} ≈ 0.14 (with T = 1000 both are ~1e-5, invisible); β_0 = 0.01 keeps L_1's variance, which
#: dominates the estimate's, small. Against these, the check's threshold is ≈ 0.042 bits/dim.
LAW_BETAS = torch.cat([linear_beta_schedule(9, 0.01, 0.05), torch.tensor([0.3], dtype=torch.float64)])
#: Mean check: 4 rows of x₀ (16 coordinates each) × 1000 estimates each, one call per row: ≈ 0.15 s in all.
LAW_DIMS, LAW_ROWS, LAW_REPEATS = 16, 4, 1000
#: Bound check: one row of 8 near-point-mass coordinates × 1000 estimates, on a chain that ends in noise
#: (the cosine schedule, T = 20: ᾱ_{T−1} ≈ 6e-7), where the model's prior matches q(x_{T−1} | x₀) and the
#: ELBO is within a few 1e-3 bits/dim of the exact NLL: dropping any positive term puts it below.
BOUND_BETAS = cosine_beta_schedule(20)
BOUND_DIMS, BOUND_REPEATS = 8, 1000

MEAN_DERIVATION = (
    "two one-sided Chernoff bounds at 5e-7 each, with the exact moment generating function of one estimate "
    "(Gaussian data, optimal ε-model: each KL term is a scaled noncentral χ²₁, the decoder term a 1-D Gauss–Hermite "
    "integral), over the mean of all estimates; the test passes if the mean lies within the bounds for the "
    "erf-CDF decoder or within those for the tanh-CDF decoder, so either correct implementation fails with "
    "probability ≤ 1e-6. The p-value shown is the normal approximation with the exact variance"
)
BOUND_DERIVATION = (
    "for a correct implementation E[elbo_bpd] ≥ −log p_θ(x₀)/(D ln 2) (the ELBO is a bound), so the test (the mean "
    "of the estimates at least −log p_θ(x₀)/(D ln 2) minus the one-sided Chernoff threshold at 1e-6, exact moment "
    "generating function as in the mean check) fails only if the mean falls more than that threshold below its "
    "expectation; the bound is computed for the decoder CDF that the implementation uses (erf or tanh). The "
    "p-value shown is the one-sided normal approximation of the mean's deviation from its expectation"
)


def law_data(ctx: Context, tag: str, dims: int, rows: int, point_mass: bool) -> tuple[torch.Tensor, ...]:
    """float64 (μ, s², x₀): Gaussian data and ``rows`` 8-bit rows of x₀, drawn from the grading seed."""
    g = ctx.generator(tag)
    if point_mass:
        # Data concentrated on one level per coordinate (σ = 1e-3, a quarter of a bin), edges included:
        # the model's posterior almost equals the forward process and the ELBO is within ~1e-6 of the NLL.
        k = torch.randint(1, 255, (dims,), generator=g)
        k[0], k[-1] = 0, 255
        mean = GRID[k]
        var = torch.full((dims,), 1e-6, dtype=torch.float64)
        x0 = mean[None].expand(rows, dims).clone()
    else:
        mean = 0.8 * (2 * torch.rand(dims, generator=g, dtype=torch.float64) - 1)
        var = torch.exp(math.log(0.01) + (math.log(0.25) - math.log(0.01)) * torch.rand(dims, generator=g, dtype=torch.float64))
        # Two broad coordinates centred near 0, where −1 and +1 are plausible (2σ) values: rows 1 and 2 take
        # them there, so the decoder meets its open-ended edge bins. (An edge forced onto narrow data far from
        # its mean would put the decoder at its 1e-12 floor for most draws: a kink in the middle of the
        # decoder's Gauss–Hermite integral.)
        mean[:2], var[:2] = 0.1 * mean[:2], 0.25
        x0 = mean + var.sqrt() * torch.randn(rows, dims, generator=g, dtype=torch.float64)
        x0 = ref.to_levels(x0)
        x0[1, :2], x0[2, :2] = -1.0, 1.0
    return mean, var, x0


def _estimates(ctx: Context, tag: str, betas: torch.Tensor, dims: int, rows: int, repeats: int, point_mass: bool,
               notes: dict) -> tuple[Inputs, torch.Tensor, torch.Tensor, dict]:
    """:func:`law_data`, ``repeats`` estimates of each row by the student, and the exact laws by decoder CDF.

    One call per row, each with its own generator, keeps every tensor of a call at ≤ 16,000 elements, below
    torch's grain size for parallel elementwise kernels (32,768): on a loaded machine, OpenMP threads that
    wait for each other made one 64,000-element call take over 10 s (the call time limit) against 0.2 s.
    """
    mean, var, x0 = law_data(ctx, tag, dims, rows, point_mass)
    model = ctx.model_spec("gaussian_eps", mean=mean, var=var, alphas_cumprod=compute_alphas_cumprod(betas))
    calls = [Inputs({"eps_model": model, "x0": row.expand(repeats, *row.shape).contiguous().to(ctx.device),
                     "betas": betas.to(ctx.device)},
                    {"generator": ctx.generator_spec(tag, "generator", i)},
                    notes={"eps_model": "the optimal ε-model of Gaussian data (float64)", **notes})
             for i, row in enumerate(x0)]
    values = [as_tensor(value_of(o), "elbo_bpd's result") for o in ctx.call("elbo_bpd", calls, tag=tag)]
    for v in values:
        if tuple(v.shape) != (repeats,) or not v.is_floating_point():
            raise Mismatch(f"elbo_bpd's result has shape {tuple(v.shape)} and dtype {v.dtype}; expected a floating "
                           f"tensor of shape ({repeats},): one value per batch element (the per-dim mean)")
    estimates = torch.stack([v.detach().to("cpu", torch.float64) for v in values])  # (rows, repeats)
    laws = {cdf: ref.ElboLaw(mean, var, x0, betas, cdf) for cdf in ref.NORMAL_CDFS}
    return calls[0], estimates, torch.full((rows,), repeats), laws


def _law_check(ctx: Context, alpha: float, tag: str, setup: tuple, notes: dict, interval: Callable, name: str,
               derivation: str, two_sided: bool, note: Callable) -> StatReport:
    """Estimates against each decoder CDF's exact law; the statistic is the deviation of their mean from the
    expectation of the first law whose ``interval(law)`` holds it (else the erf one's)."""
    inputs, estimates, counts, laws = _estimates(ctx, tag, *setup, notes)
    observed = float(estimates.mean())
    candidates = [(cdf, law, *interval(law, counts), observed - float(law.expectation().mean()))
                  for cdf, law in laws.items()]
    cdf, law, low, high, deviation = next((c for c in candidates if c[2] <= c[4] <= c[3]), candidates[0])
    statistic = Statistic(name, deviation, low, high, ref.normal_p_value(law, counts, deviation, two_sided), alpha,
                          int(counts.sum()), derivation)
    residuals = (estimates - law.expectation()[:, None]) / law.variance().sqrt()[:, None]
    return StatReport([statistic], residuals, inputs, note=note(cdf, law, estimates))


def elbo_mean_law(ctx: Context, alpha: float) -> StatReport:
    """The mean of elbo_bpd's estimates against E[L_T + Σ_t L_t], exactly, for Gaussian data and its optimal model."""
    notes = {"x0": f"float64 ({LAW_REPEATS}, {LAW_DIMS}): one row of 8-bit data repeated {LAW_REPEATS} times (one of "
                   f"{LAW_ROWS} calls, one per row; edges included)", "betas": "float64 (10,): β from 0.01 to 0.05 "
             "over nine steps, then 0.3"}
    return _law_check(ctx, alpha, "elbo mean law", (LAW_BETAS, LAW_DIMS, LAW_ROWS, LAW_REPEATS, False), notes,
        lambda law, counts: (-ref.chernoff_deviation(law, counts, alpha / 2, upper=False),
                             ref.chernoff_deviation(law, counts, alpha / 2, upper=True)),
        "mean of the estimates − exact E[elbo_bpd], bits/dim", MEAN_DERIVATION, True,
        lambda cdf, law, estimates: f"exact E[elbo_bpd] per row ({cdf} CDF in the decoder): "
                                    f"{[round(v, 5) for v in law.expectation().tolist()]} bits/dim; your means per "
                                    f"row: {[round(v, 5) for v in estimates.mean(1).tolist()]}.")


def elbo_bound_law(ctx: Context, alpha: float) -> StatReport:
    """The mean of elbo_bpd's estimates is not below the model's exact −log p_θ(x₀) (a near point-mass dataset):
    mean ≥ NLL − threshold, as a deviation from the expectation (so that its p-value is uniform when correct)."""
    notes = {"x0": f"float64 ({BOUND_REPEATS}, {BOUND_DIMS}): one row of 8-bit data (edges included) repeated "
                   f"{BOUND_REPEATS} times; the data is N(x0, 1e-6) per coordinate",
             "betas": "cosine schedule, T = 20 (float64)"}

    def interval(law, counts):
        gap = float(law.nll_bpd()[0]) - float(law.expectation()[0])
        return gap - ref.chernoff_deviation(law, counts, alpha, upper=False), math.inf

    return _law_check(ctx, alpha, "elbo bound law", (BOUND_BETAS, BOUND_DIMS, 1, BOUND_REPEATS, True), notes, interval,
        "mean of the estimates − exact E[elbo_bpd], bits/dim (lower limit: −log p_θ(x₀)/(D ln 2) − E[elbo_bpd] − "
        "threshold)", BOUND_DERIVATION, False,
        lambda cdf, law, estimates: f"exact −log p_θ(x₀)/(D ln 2) = {float(law.nll_bpd()[0]):.6f} bits/dim and "
                                    f"E[elbo_bpd] = {float(law.expectation()[0]):.6f} ({cdf} CDF in the decoder); your "
                                    f"mean {float(estimates.mean()):.6f}. An ELBO below the likelihood is not a bound: "
                                    "a term is missing or has the wrong sign.")


# -- the exercise ------------------------------------------------------------------------------

KL_DIAGNOSES = (
    Diagnosis(lambda m1, v1, m2, v2: 0.5 * (-1.0 + v1 - v2 + torch.exp(v2 - v1) + (m1 - m2) ** 2 * torch.exp(-v2)),
              "the variance ratio is inverted: with r = logvar1 − logvar2 the KL holds e^r − r (σ₁²/σ₂² and "
              "log σ₂²/σ₁²), not e^(−r) + r"),
    Diagnosis(lambda m1, v1, m2, v2: ref.normal_kl(m2, v2, m1, v1),
              "this is KL(q ‖ p): the first distribution is N(mean1, e^logvar1)"),
    Diagnosis(lambda *a: 2 * ref.normal_kl(*a), "the KL of two Gaussians carries a factor ½"))
DGLL_DIAGNOSES = (
    Diagnosis(_dgll_with(1 / 255, open_edges=False),
              "the edge bins must be open-ended: for x = −1 use Φ(upper edge), for x = 1 use 1 − Φ(lower edge)"),
    Diagnosis(lambda x, mean, log_scale: ref.discretized_gaussian_log_likelihood(x, mean, 0.5 * log_scale),
              "log_scale is the log standard deviation (½ · log-variance): the scale is exp(log_scale)"),
    Diagnosis(_dgll_with(2 / 255, open_edges=True),
              "the bins are [x − 1/255, x + 1/255]: 256 levels 2/255 apart, so the half-width is 1/255"))
PRIOR_DIAGNOSES = (
    Diagnosis(lambda x0, ac: ref.prior_bpd(x0, ac) * LN2, "this is in nats: bits per dimension divide by ln 2"),
    Diagnosis(lambda x0, ac: ref.prior_bpd(x0, ac) * x0[0].numel(),
              "this is the sum over dimensions: bits per dimension take the mean"),
    Diagnosis(lambda x0, ac: ref.prior_bpd(x0, ac[:1]), "L_T uses the last timestep, ᾱ_{T−1}"))
VLB_DIAGNOSES = (
    Diagnosis(lambda *a: ref.vlb_term_bpd(*a) * LN2, "this is in nats: bits per dimension divide by ln 2"),
    Diagnosis(_vlb_reversed_kl, "the KL is from the posterior q(x_{t−1} | x_t, x₀) to the model: "
              "normal_kl(true mean, true log-variance, model mean, model log-variance)"))
VLB_REFERENCES = (ref.vlb_term_bpd, ref.vlb_term_bpd_with("tanh"))

EXERCISE = Exercise(
    name="elbo",
    title="Deriving the ELBO terms",
    functions=(
        ("normal_kl", ("mean1", "logvar1", "mean2", "logvar2")),
        ("discretized_gaussian_log_likelihood", ("x", "mean", "log_scale")),
        ("prior_bpd", ("x0", "alphas_cumprod")),
        ("vlb_term_bpd", ("model_mean", "model_log_variance", "x0", "xt", "t", "betas")),
        ("elbo_bpd", ("eps_model", "x0", "betas", "generator")),
    ),
    checks=(
        Agreement(function="normal_kl", cases=kl_cases(), build=build_kl, reference=ref.normal_kl,
                  tolerance=KL_TOLERANCE, dtype_from="mean1", device_from="mean1", points=2, dtype_points=1,
                  examples=KL_EXAMPLES, diagnoses=KL_DIAGNOSES),
        Property(function="normal_kl", cases=kl_cases(), build=build_kl, probe=kl_both_ways, examples=KL_EXAMPLES,
                 aspects=(Aspect("KL(p ‖ q) ≥ 0 (Gibbs' inequality)", 1, kl_judge(
                              0, "normal_kl(mean1, logvar1, mean2, logvar2)", lambda kl, slack: kl < -slack,
                              "a KL divergence is finite and never negative. Check the sign of the log-variance term")),
                          Aspect("KL(p ‖ p) = 0", 1, kl_judge(
                              1, "normal_kl(mean1, logvar1, mean1, logvar1)", lambda kl, slack: kl.abs() > slack,
                              "the KL of a distribution to itself is 0. Is a constant (the −1, or a ½) missing or "
                              "misplaced?")))),
        Property(function="discretized_gaussian_log_likelihood", cases=dgll_cases(), build=build_dgll,
                 examples=DGLL_EXAMPLES, diagnoses=DGLL_DIAGNOSES,
                 aspects=(Aspect(DGLL_VALUES, 2, judge_dgll_values), dtype_device_aspect("x", "x", gated_by=(DGLL_VALUES,)))),
        Property(function="discretized_gaussian_log_likelihood", cases=grid_cases(), build=build_grid,
                 examples=GRID_EXAMPLES, max_examples=10,
                 aspects=(Aspect("the probabilities of the 256 levels sum to 1", 1, judge_sums_to_one),
                          Aspect("the lowest and highest bins are open-ended", 1, judge_open_edges))),
        Agreement(function="prior_bpd", cases=prior_cases(), build=build_prior, reference=ref.prior_bpd,
                  tolerance=PRIOR_TOLERANCE, dtype_from="x0", device_from="x0", points=2, dtype_points=1,
                  examples=PRIOR_EXAMPLES, diagnoses=PRIOR_DIAGNOSES),
        Agreement(function="vlb_term_bpd", cases=vlb_cases(), build=build_vlb, examples=VLB_EXAMPLES,
                  reference=VLB_REFERENCES, tolerance=VLB_TOLERANCE, diagnosis_tolerance=DEFAULT_TOLERANCE,
                  what="matches the reference (the decoder's CDF may be the tanh approximation)", points=3,
                  dtype_points=1, dtype_from="model_mean", device_from="model_mean", diagnoses=VLB_DIAGNOSES),
        Agreement(function="vlb_term_bpd", cases=switch_cases(), build=build_vlb, examples=SWITCH_EXAMPLES,
                  max_examples=10, reference=VLB_REFERENCES, tolerance=VLB_TOLERANCE, value_dtype_from="x0",
                  what="the decoder NLL at t = 0 exactly, the KL at every t ≥ 1",
                  diagnoses=(Diagnosis(lambda *a: torch.where(a[4] == 1, *reversed(ref.vlb_term_parts(*a))), "the decoder term is L_0, used at t = 0 only (zero-based "
                                       "timesteps); every t ≥ 1, t = 1 included, is a KL term"),)),
        Property(function="elbo_bpd", cases=elbo_cases(), build=REPRODUCIBLE.build(build_elbo),
                 probe=REPRODUCIBLE.probe, examples=ELBO_EXAMPLES, max_examples=6,
                 aspects=(Aspect(ELBO_FORM.name, 1, judge_elbo_form, shrink=False, device=True),
                          REPRODUCIBLE.aspect("draws its noise from `generator` (the same seed gives the same result)"))),
        Statistical(function="elbo_bpd", name="the mean of the estimates is the exact expected bound (Gaussian data)",
                    procedure=elbo_mean_law, alpha=1e-6, derivation=MEAN_DERIVATION, points=3),
        Statistical(function="elbo_bpd", name="the estimates do not fall below the exact −log p_θ(x₀)",
                    procedure=elbo_bound_law, alpha=1e-6, derivation=BOUND_DERIVATION, points=1),
    ),
)
