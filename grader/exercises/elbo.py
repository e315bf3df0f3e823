"""Checks of exercise 2, elbo: the Gaussian KL, the discretised decoder, the terms of the bound, the bound.

Point budget (24): normal_kl 3 (+2 for KL ≥ 0 and KL(p‖p) = 0), discretized_gaussian_log_likelihood 3
(+2 for its bins summing to one and its open-ended edge bins), prior_bpd 3, vlb_term_bpd 4 (+1 for the
switch to the decoder exactly at t = 0), elbo_bpd 2 deterministic (shape, dtype, the generator's draws)
+ 4 statistical.

The normal CDF of the discretised likelihood may be the exact one (erf) or improved-diffusion's tanh
approximation (curriculum §2): every check that sees a decoder term accepts both.

Statistical checks (2), each at level 1e-6, so the submission's false-failure probability is at most
2e-6 (Bonferroni). elbo_bpd draws its own noise in its own order, so its value is compared, not with the
reference's value, but with the exact law of a one-sample ELBO estimate (T independent draws, in any
order) for Gaussian data and its optimal ε-model (:class:`reference.elbo.ElboLaw`): every KL term is then a scaled
noncentral χ²₁ variable and the decoder term a smooth function of one Gaussian draw, so the estimate's
moment generating function is known and Chernoff bounds give thresholds at a guaranteed level
(derivations at :data:`MEAN_DERIVATION` and :data:`BOUND_DERIVATION`).
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from grader.checks import (
    DEFAULT_TOLERANCE,
    Agreement,
    Aspect,
    Context,
    Diagnosis,
    Inputs,
    Mismatch,
    Property,
    Reproducible,
    Statistical,
    StatReport,
    Tolerance,
    as_tensor,
    compare,
    dtype_device_aspect,
    output_aspect,
    value_of,
)
from grader.exercises import Exercise
from grader.exercises._common import (
    DTYPES,
    data_shapes,
    gaussian,
    horizons,
    schedule_betas,
    schedule_note,
)
from grader.stats import Statistic
from reference import elbo as ref
from reference._broadcast import extract
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule, posterior_coefficients, q_posterior

LN2 = math.log(2.0)
GRID = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255
"""The 256 levels of 8-bit data scaled to [−1, 1]."""


def level(k: int) -> float:
    """The k-th of the 256 levels, −1 + 2k/255."""
    return -1 + 2 * k / 255


DECODERS = {cdf: ref.discretized_gaussian_log_likelihood_with(cdf) for cdf in ref.NORMAL_CDFS}
"""The two accepted normal CDFs of the decoder, by name (reference.elbo.NORMAL_CDFS)."""


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


# -- shared judges -----------------------------------------------------------------------------


def _per_row(value, batch: int, what: str = "the result") -> torch.Tensor:
    """A ``(B,)`` result as a float64 CPU tensor, or :class:`Mismatch` naming the shape."""
    got = as_tensor(value, what)
    if tuple(got.shape) != (batch,):
        raise Mismatch(f"{what} has shape {tuple(got.shape)}; expected ({batch},): one value per batch element "
                       "(the per-dim mean over every non-batch dimension)")
    if not got.is_floating_point():
        raise Mismatch(f"{what} has dtype {got.dtype}; a floating-point tensor was expected")
    return got.detach().to("cpu", torch.float64)


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
    return {
        "preset": None,
        "shape": draw(data_shapes),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "mean_scale": draw(st.sampled_from([0.0, 0.1, 1.0, 10.0])),
        "logvar_scale": draw(st.sampled_from([0.0, 1.0, 5.0, 20.0])),
        "seed": draw(st.integers(0, 2**16)),
    }


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
        return Inputs(values, notes={n: f"{case['dtype']} {describe_list(c)}" for n, c in zip(names, columns)})
    g = torch.Generator().manual_seed(case["seed"])
    values = {}
    for name in names:  # means within ±10, log-variances within ±20 (variances from 2e-9 to 5e8)
        scale, cap = (case["mean_scale"], 10.0) if name.startswith("mean") else (case["logvar_scale"], 20.0)
        values[name] = (scale * gaussian(case["shape"], g, torch.float64, ctx)).clamp(-cap, cap)
    if case["logvar_scale"] == 0.0 and case["mean_scale"] == 0.0:
        values["mean2"] = values["mean2"] + 0.5  # p and q still differ
    return Inputs({n: v.to(dtype) for n, v in values.items()})


def describe_list(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values.tolist()) + "]"


def notes_for_large(notes: dict, args: dict) -> dict:
    """Keep a note only where its tensor is too large to be shown by value (≤ 12 elements are shown)."""
    return {k: v for k, v in notes.items() if k not in args or args[k].numel() > 12}


def kl_both_ways(ns, mean1, logvar1, mean2, logvar2):
    """Probe: KL(p ‖ q) and KL(p ‖ p) for p = N(mean1, e^logvar1), q = N(mean2, e^logvar2)."""
    return ns.normal_kl(mean1, logvar1, mean2, logvar2), ns.normal_kl(mean1, logvar1, mean1, logvar1)


def _kl_pair(inputs: Inputs, outcome, index: int, what: str) -> torch.Tensor:
    value = outcome.value
    if not isinstance(value, tuple) or len(value) != 2:
        raise Mismatch("the probe expected normal_kl to return one tensor per call")
    got = as_tensor(value[index], what)
    shape = tuple(inputs.args["mean1"].shape)
    if tuple(got.shape) != shape:
        raise Mismatch(f"{what} has shape {tuple(got.shape)}; expected {shape} (elementwise)")
    return got


def _kl_slack(inputs: Inputs, got: torch.Tensor) -> float:
    """The round-off a correct KL may show around 0: KL_TOLERANCE's absolute part for the dtype."""
    return KL_TOLERANCE.for_dtype(got.dtype)[1]


def judge_kl_nonnegative(inputs: Inputs, outcome) -> None:
    """KL(p ‖ q) ≥ 0 everywhere (Gibbs' inequality), up to round-off."""
    got = _kl_pair(inputs, outcome, 0, "normal_kl(mean1, logvar1, mean2, logvar2)")
    kl = got.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(kl).all()):
        raise Mismatch("normal_kl returned NaN or infinite values for finite inputs")
    slack = _kl_slack(inputs, got)
    if bool((kl < -slack).any()):
        worst = int(kl.flatten().argmin())
        raise Mismatch(f"normal_kl returned {kl.flatten()[worst].item():.6g} at flat index {worst}: a KL divergence "
                       f"is never negative (allowed round-off: −{slack:g}). Check the sign of the log-variance term.")


def judge_kl_self_zero(inputs: Inputs, outcome) -> None:
    """KL(p ‖ p) = 0, up to round-off."""
    got = _kl_pair(inputs, outcome, 1, "normal_kl(mean1, logvar1, mean1, logvar1)")
    kl = got.detach().to("cpu", torch.float64)
    slack = _kl_slack(inputs, got)
    if not bool(torch.isfinite(kl).all()) or bool((kl.abs() > slack).any()):
        bad = torch.nan_to_num(kl.abs(), nan=float("inf")).flatten()
        worst = int(bad.argmax())
        raise Mismatch(f"normal_kl(mean1, logvar1, mean1, logvar1) = {kl.flatten()[worst].item():.6g} at flat index "
                       f"{worst}; the KL of a distribution to itself is 0 (allowed round-off: ±{slack:g}). "
                       "Is a constant (the −1, or a ½) missing or misplaced?")


def _kl_inverted_ratio(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar1 - logvar2 + torch.exp(logvar2 - logvar1) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _kl_no_half(mean1, logvar1, mean2, logvar2):
    return 2 * ref.normal_kl(mean1, logvar1, mean2, logvar2)


def _kl_reversed(mean1, logvar1, mean2, logvar2):
    return ref.normal_kl(mean2, logvar2, mean1, logvar1)


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
    """8-bit data (edges included), means around it, log-scales per element."""
    return {
        "preset": None,
        "shape": draw(data_shapes),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        # Standard deviations: narrow (a bin or less), mixed, or broad (most bins tiny).
        "scales": draw(st.sampled_from(["narrow", "mixed", "broad"])),
        # How far from x the means are, in standard deviations (at 40, every probability underflows to 0).
        "spread": draw(st.sampled_from([0.0, 0.5, 2.0, 40.0])),
        "edges": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


SCALE_RANGES = {"narrow": (1e-3, 5e-3), "mixed": (1e-3, 1.0), "broad": (0.1, 2.0)}
#: Edge cases, one per element: the lowest and highest bins with means inside, at and beyond the edges,
#: a bin next to each edge, and bins where all the mass sits in one bin.
DGLL_EDGES = (  # (x, mean, standard deviation)
    (-1.0, -1.5, 0.3), (-1.0, -0.98, 0.01), (-1.0, 0.5, 0.5), (1.0, 1.3, 0.2), (1.0, 0.97, 0.02), (1.0, -0.5, 0.5),
    (level(1), level(1), 1e-3), (level(254), level(254) + 0.5 / 255, 1e-3), (0.0 + 1 / 255, 0.0, 0.005),
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
        notes = {"x": describe_list(x), "mean": describe_list(mean), "log_scale": f"log of {describe_list(scale)}"}
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


def judge_dgll_values(inputs: Inputs, outcome) -> None:
    """Finite log-probabilities ≤ 0 whose exponentials are the bin probabilities (either CDF)."""
    got = as_tensor(outcome.value, "the result")
    expected = inputs.call_reference(ref.discretized_gaussian_log_likelihood)
    if tuple(got.shape) != tuple(expected.shape):
        raise Mismatch(f"the result has shape {tuple(got.shape)}; expected {tuple(expected.shape)} (elementwise)")
    if not got.is_floating_point():
        raise Mismatch(f"the result has dtype {got.dtype}; a floating-point tensor was expected")
    log_p = got.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(log_p).all()):
        bad = int((~torch.isfinite(log_p)).flatten().nonzero()[0])
        raise Mismatch(f"the result is {log_p.flatten()[bad].item()} at flat index {bad}: a log-probability must be "
                       "finite. Clamp each probability at 1e-12 before the log (a bin far from the mean has "
                       "probability 0 in floating point, and log 0 = −∞).")
    if bool((log_p > 1e-6).any()):
        bad = int(log_p.flatten().argmax())
        raise Mismatch(f"the result is {log_p.flatten()[bad].item():.6g} > 0 at flat index {bad}: a log-probability "
                       "of a bin is at most 0")
    compare(log_p.exp(), expected.exp(), PROBABILITY_TOLERANCE,
                   "exp(result), the bin probability,")


def _dgll_closed_edges(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    return torch.log((cdf(inv * (centered + 1 / 255)) - cdf(inv * (centered - 1 / 255))).clamp(min=1e-12))


def _dgll_log_variance(x, mean, log_scale):
    return ref.discretized_gaussian_log_likelihood(x, mean, 0.5 * log_scale)


def _dgll_wide_bins(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    return torch.where(x < -0.999, torch.log(cdf(inv * (centered + 2 / 255)).clamp(min=1e-12)),
                       torch.where(x > 0.999, torch.log((1 - cdf(inv * (centered - 2 / 255))).clamp(min=1e-12)),
                                   torch.log((cdf(inv * (centered + 2 / 255)) - cdf(inv * (centered - 2 / 255))).clamp(min=1e-12))))


# The 256 bins: every row holds the whole grid, one mean and one scale per row.


@st.composite
def grid_cases(draw) -> dict:
    return {
        "rows": draw(st.integers(1, 3)),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "mean_range": draw(st.sampled_from([1.0, 3.0])),
        "log_scale_range": draw(st.sampled_from([(math.log(1e-4), math.log(1e-2)), (math.log(1e-3), math.log(10.0))])),
        "seed": draw(st.integers(0, 2**16)),
        "preset": None,
    }


#: Means below, on and above the edges, and all the mass in one bin or in the edge bins.
GRID_PRESET = ((-3.0, 0.5), (-1.2, 0.05), (0.0, 1e-4), (level(100) + 1 / 255, 1e-4), (1.2, 0.05), (3.0, 10.0))
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
             "mean": f"one mean per row: {describe_list(mean)}",
             "log_scale": f"one log-scale per row: log of {describe_list(log_scale.exp())}"}
    return Inputs({k: v.contiguous().to(dtype).to(ctx.device) for k, v in args.items()}, notes=notes)


def _grid_log_p(inputs: Inputs, outcome) -> torch.Tensor:
    got = as_tensor(outcome.value, "the result")
    shape = tuple(inputs.args["x"].shape)
    if tuple(got.shape) != shape:
        raise Mismatch(f"the result has shape {tuple(got.shape)}; expected {shape} (elementwise)")
    log_p = got.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(log_p).all()):
        row, k = (int(i) for i in (~torch.isfinite(log_p)).nonzero()[0])
        raise Mismatch(f"row {row}, level k = {k}: the result is {log_p[row, k].item()}; every log-probability must be "
                       "finite. Clamp each probability at 1e-12 before the log (far from the mean a bin's probability "
                       "is 0 in floating point, and log 0 = −∞).")
    return log_p


#: Σ_k P(k) telescopes to Φ(∞) − Φ(−∞) = 1 for any CDF, the tanh one included, except for: the clamp,
#: which can raise ≤ 255 bins to 1e-12 (≤ 2.6e-10); in float64, round-off of 256 terms (≤ 1e-12, see
#: tests/reference/test_elbo.py); in float32, the bin edges x_k + 1/255 and x_{k+1} − 1/255 that are equal
#: in exact arithmetic but not in float32 (≤ 1 ulp of x apart: a CDF gap of ≤ 0.4·6e-8/s, s ≥ 1e-4, at the
#: few bins near the mean) plus float32 rounding of each probability and of the sum (≤ 256 × 6e-8 = 1.5e-5).
#: 1e-3 (float32) and 1e-9 (float64) leave a margin of ≥ 4; a missing or doubled bin, or edges that are
#: not open-ended, move the sum by far more.
SUM_SLACK = {torch.float32: 1e-3, torch.float64: 1e-9}


def judge_sums_to_one(inputs: Inputs, outcome) -> None:
    """Σ over the 256 levels of exp(result) = 1 for every row."""
    log_p = _grid_log_p(inputs, outcome)
    total = torch.nan_to_num(log_p.exp(), nan=float("inf")).sum(1)
    slack = SUM_SLACK.get(as_tensor(outcome.value, "the result").dtype, 1e-3)
    bad = (total - 1).abs() > slack
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        mean, log_scale = inputs.args["mean"][row, 0].item(), inputs.args["log_scale"][row, 0].item()
        raise Mismatch(f"row {row} (mean {mean:.6g}, scale {math.exp(log_scale):.6g}): the 256 bin probabilities "
                       f"sum to {total[row].item():.8g}, not 1 (allowed ±{slack:g}). Each value x = −1 + 2k/255 "
                       "owns the bin [x − 1/255, x + 1/255], except that the lowest bin extends to −∞ and the "
                       "highest to +∞.")


def judge_open_edges(inputs: Inputs, outcome) -> None:
    """P(x = −1) = Φ((−1 + 1/255 − μ)/s) and P(x = 1) = 1 − Φ((1 − 1/255 − μ)/s)."""
    log_p = _grid_log_p(inputs, outcome)
    mean = inputs.args["mean"][:, 0].to("cpu", torch.float64)
    scale = inputs.args["log_scale"][:, 0].to("cpu", torch.float64).exp()
    cdf = torch.special.ndtr
    expected = {"lowest (x = −1)": (0, cdf((-1 + 1 / 255 - mean) / scale)),
                "highest (x = 1)": (255, cdf((mean - 1 + 1 / 255) / scale))}
    tol = PROBABILITY_TOLERANCE.atol64
    for name, (k, p) in expected.items():
        got = torch.nan_to_num(log_p[:, k].exp(), nan=-1.0)
        bad = (got - p).abs() > tol
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise Mismatch(f"row {row} (mean {mean[row].item():.6g}, scale {scale[row].item():.6g}): the {name} bin has "
                           f"probability {got[row].item():.6g}; expected {p[row].item():.6g} (allowed ±{tol:g}). "
                           "The edge bins are open-ended: x < −0.999 owns (−∞, −1 + 1/255] and x > 0.999 owns "
                           "[1 − 1/255, ∞), so that no probability falls outside the 256 levels.")


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
    T = draw(horizons)
    T = max(T, 2)
    shape = draw(data_shapes)
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": shape,
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "seed": draw(st.integers(0, 2**16))}


PRIOR_EXAMPLES = tuple({"T": T, "schedule": s, "shape": (3, 2), "dtype": d, "schedule_dtype": "float64", "seed": 0}
                       for T in (2, 10) for s in ("linear", "cosine") for d in ("float32", "float64"))


def build_prior(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    alphas_cumprod = compute_alphas_cumprod(schedule_betas(case["schedule"], case["T"]))
    return Inputs({"x0": gaussian(case["shape"], g, dtype, ctx),
                   "alphas_cumprod": alphas_cumprod.to(schedule_dtype).to(ctx.device)},
                  notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)})


def _prior_first_step(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod[:1])


def _prior_nats(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod) * LN2


def _prior_sum(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod) * x0[0].numel()


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
    T = max(2, draw(horizons))
    shape = draw(data_shapes)
    return {
        "T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": shape,
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "t": tuple(draw(st.lists(st.sampled_from([0, 0, 1, T - 1]) | st.integers(0, T - 1),
                                 min_size=shape[0], max_size=shape[0]))),
        # The model's log-variance per element, or one per batch element, broadcasting as (B, 1, …).
        "log_variance_shape": draw(st.sampled_from(["full", "per-sample"])),
        "seed": draw(st.integers(0, 2**16)),
    }


VLB_EXAMPLES = tuple({"T": T, "schedule": s, "shape": (4, 3), "dtype": d, "t": (0, 1, 0, T - 1),
                      "log_variance_shape": v, "seed": 0}
                     for T, s, d, v in ((10, "linear", "float32", "full"), (10, "cosine", "float64", "per-sample"),
                                        (1000, "linear", "float32", "per-sample"), (1000, "cosine", "float64", "full"),
                                        (2, "linear", "float64", "full")))


def build_vlb(case: dict, ctx: Context) -> Inputs:
    """x₀ on the 8-bit grid (edges too), x_t ~ q(x_t | x₀), and a model a fraction of a σ off the posterior.

    The model's log-variance is the posterior's (clipped) log β̃_t ± 0.5 and its mean μ̃ + ½σ_θ·z, z ~ N(0, 1)
    clamped to ±3: KL terms of 0.02–2 nats, and at t = 0 decoder bins of probability ≥ 1e-3.
    """
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


def judge_switch_at_zero(inputs: Inputs, outcome) -> None:
    """Rows with t = 0 hold the decoder NLL, every other row (t = 1 included) the posterior KL."""
    t = inputs.args["t"].to("cpu")
    B = t.shape[0]
    got = _per_row(outcome.value, B)
    rtol, atol = VLB_TOLERANCE.for_dtype(inputs.args["x0"].dtype)
    f64 = inputs.in_float64()
    a = f64.arguments()
    true_mean, _, true_log_variance = q_posterior(a["x0"], a["xt"], a["t"], a["betas"])
    kl = _mean_flat(ref.normal_kl(true_mean, true_log_variance, a["model_mean"], a["model_log_variance"])
                    .expand_as(a["model_mean"])).cpu() / LN2
    decoders = [_mean_flat((-DECODERS[c](a["x0"], a["model_mean"], 0.5 * a["model_log_variance"]))
                           .expand_as(a["model_mean"])).cpu() / LN2 for c in DECODERS]

    def close(value, target):
        return bool((value - target).abs() <= atol + rtol * target.abs())

    for row in range(B):
        is_decoder = int(t[row]) == 0
        right = decoders if is_decoder else [kl]
        wrong = [kl] if is_decoder else decoders
        if any(close(got[row], r[row]) for r in right):
            continue
        what = "the decoder NLL −log p(x₀ | x₁)" if is_decoder else "the KL to the posterior q(x_{t−1} | x_t, x₀)"
        if any(close(got[row], w[row]) for w in wrong):
            other = "a KL divergence" if is_decoder else "the decoder NLL"
            raise Mismatch(f"batch element {row} has t = {int(t[row])} and your value {got[row].item():.6g} is "
                           f"{other}; expected {what}, {right[0][row].item():.6g}. The decoder term is L_0, used "
                           "at t = 0 only (zero-based timesteps); every t ≥ 1 is a KL term.")
        raise Mismatch(f"batch element {row} has t = {int(t[row])}: expected {what}, {right[0][row].item():.6g}; "
                       f"got {got[row].item():.6g}")


@st.composite
def switch_cases(draw) -> dict:
    T = draw(st.sampled_from([2, 3, 10, 1000]))
    shape = (5, *draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": shape,
            "dtype": draw(st.sampled_from(["float32", "float64"])), "t": (0, 1, 0, min(2, T - 1), T - 1),
            "log_variance_shape": "per-sample", "seed": draw(st.integers(0, 2**16))}


SWITCH_EXAMPLES = tuple({"T": T, "schedule": "linear", "shape": (5, 3), "dtype": "float64", "t": (0, 1, 0, min(2, T - 1), T - 1),
                         "log_variance_shape": "per-sample", "seed": 1} for T in (2, 1000))


def _vlb_nats(model_mean, model_log_variance, x0, xt, t, betas):
    return ref.vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas) * LN2


def _vlb_reversed_kl(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = _mean_flat(ref.normal_kl(model_mean, model_log_variance, true_mean, true_log_variance).expand_as(x0)) / LN2
    return torch.where(t == 0, ref.vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas), kl)


# -- elbo_bpd: deterministic -------------------------------------------------------------------


@st.composite
def elbo_cases(draw) -> dict:
    return {"T": draw(st.sampled_from([2, 3, 5, 10])), "schedule": draw(st.sampled_from(["linear", "cosine"])),
            "shape": draw(data_shapes), "dtype": draw(st.sampled_from(["float32", "float64"])),
            "seed": draw(st.integers(0, 2**16))}


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
    x0 = GRID[((x0.clamp(-1, 1) + 1) * 127.5).round().long()]
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
REPRODUCIBLE = Reproducible("elbo_bpd")
ELBO_FORM = output_aspect("returns (B,), finite, in x0's dtype and on its device", 1, shape=lambda i: (i.args["x0"].shape[0],),
                          dtype="x0", device="x0", finite=True, items=REPRODUCIBLE.first)


def judge_elbo_form(inputs: Inputs, outcome) -> None:
    """(B,), finite, in x0's dtype and on its device; a NaN or infinity comes with the usual cause."""
    try:
        ELBO_FORM.judge(inputs, outcome)
    except Mismatch as mismatch:
        if "NaN" not in str(mismatch):
            raise
        raise Mismatch(f"{mismatch}. At t = 0 the model's log-variance is the clipped log β̃₁ (β̃₀ = 0 has log "
                       "−∞).") from None


# -- elbo_bpd: the exact law of the estimate ----------------------------------------------------


#: The schedule of the mean check, T = 10: β from 0.01 to 0.05 over nine steps, then a last step of 0.3.
#: It magnifies what a missing term costs: ᾱ_{T−1} ≈ 0.53, so L_T ≈ 0.28 bits/dim, and the last KL term
#: L_{T−1} ≈ 0.14 (with T = 1000 both are ~1e-5, invisible); β_0 = 0.01 keeps L_1's variance, which
#: dominates the estimate's, small. Against these, the check's threshold is ≈ 0.042 bits/dim.
LAW_BETAS = torch.cat([linear_beta_schedule(9, 0.01, 0.05), torch.tensor([0.3], dtype=torch.float64)])
#: Mean check: 4 rows of x₀ (16 coordinates each) × 1000 estimates each, one call per row: ≈ 0.15 s in
#: all for the reference.
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


def _law_setup(ctx: Context, tag: str, betas: torch.Tensor, dims: int, rows: int, point_mass: bool):
    """Gaussian data (float64), 8-bit rows of x₀, and the model spec, all drawn from the grading seed."""
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
        x0 = GRID[((x0.clamp(-1, 1) + 1) * 127.5).round().long()]
        x0[1, :2], x0[2, :2] = -1.0, 1.0
    model = ctx.model_spec("gaussian_eps", mean=mean, var=var, alphas_cumprod=compute_alphas_cumprod(betas))
    return mean, var, x0, model


def _call_elbo(ctx: Context, tag: str, model: dict, x0: torch.Tensor, betas: torch.Tensor, repeats: int,
               notes: dict):
    """``repeats`` estimates of each row of x₀: one call per row, each with its own generator.

    One call per row keeps every tensor of a call at ≤ 16,000 elements, below torch's grain size for
    parallel elementwise kernels (32,768): on a loaded machine, OpenMP threads that wait for each other
    made one 64,000-element call take over 10 s (the call time limit) against 0.2 s.
    """
    calls = [Inputs({"eps_model": model, "x0": row.expand(repeats, *row.shape).contiguous().to(ctx.device),
                     "betas": betas.to(ctx.device)},
                    {"generator": ctx.generator_spec(tag, "generator", i)},
                    notes={"eps_model": "the optimal ε-model of Gaussian data (float64)", **notes})
             for i, row in enumerate(x0)]
    outcomes = ctx.call("elbo_bpd", calls, tag=tag)
    got = torch.stack([_per_row(value_of(o), repeats, "elbo_bpd's result") for o in outcomes])
    return calls[0], got  # (rows, repeats)


def elbo_mean_law(ctx: Context, alpha: float) -> StatReport:
    """The mean of elbo_bpd's estimates against E[L_T + Σ_t L_t], exactly, for Gaussian data and its optimal model."""
    mean, var, x0, model = _law_setup(ctx, "elbo mean law", LAW_BETAS, LAW_DIMS, LAW_ROWS, point_mass=False)
    notes = {"x0": f"float64 ({LAW_REPEATS}, {LAW_DIMS}): one row of 8-bit data repeated {LAW_REPEATS} times (one of "
                   f"{LAW_ROWS} calls, one per row; edges included)",
             "betas": "float64 (10,): β from 0.01 to 0.05 over nine steps, then 0.3"}
    inputs, estimates = _call_elbo(ctx, "elbo mean law", model, x0, LAW_BETAS, LAW_REPEATS, notes)
    counts = torch.full((LAW_ROWS,), LAW_REPEATS)
    observed = float(estimates.mean())
    candidates = []
    for cdf in DECODERS:
        law = ref.ElboLaw(mean, var, x0, LAW_BETAS, cdf)
        expected = float(law.expectation().mean())
        low = -ref.chernoff_deviation(law, counts, alpha / 2, upper=False)
        high = ref.chernoff_deviation(law, counts, alpha / 2, upper=True)
        deviation = observed - expected
        candidates.append((cdf, law, expected, low, high, deviation))
    chosen = next((c for c in candidates if c[3] <= c[5] <= c[4]), candidates[0])
    cdf, law, expected, low, high, deviation = chosen
    statistic = Statistic(
        "mean of the estimates − exact E[elbo_bpd], bits/dim", deviation, low, high,
        ref.normal_p_value(law, counts, deviation), alpha, int(counts.sum()), MEAN_DERIVATION)
    residuals = (estimates - law.expectation()[:, None]) / law.variance().sqrt()[:, None]
    return StatReport([statistic], residuals, inputs,
                      note=f"exact E[elbo_bpd] per row ({cdf} CDF in the decoder): "
                           f"{[round(v, 5) for v in law.expectation().tolist()]} bits/dim; your means per row: "
                           f"{[round(v, 5) for v in estimates.mean(1).tolist()]}.")


def elbo_bound_law(ctx: Context, alpha: float) -> StatReport:
    """The mean of elbo_bpd's estimates is not below the model's exact −log p_θ(x₀) (a near point-mass dataset)."""
    mean, var, x0, model = _law_setup(ctx, "elbo bound law", BOUND_BETAS, BOUND_DIMS, 1, point_mass=True)
    notes = {"x0": f"float64 ({BOUND_REPEATS}, {BOUND_DIMS}): one row of 8-bit data (edges included) repeated "
                   f"{BOUND_REPEATS} times; the data is N(x0, 1e-6) per coordinate",
             "betas": "cosine schedule, T = 20 (float64)"}
    inputs, estimates = _call_elbo(ctx, "elbo bound law", model, x0, BOUND_BETAS, BOUND_REPEATS, notes)
    counts = torch.tensor([BOUND_REPEATS])
    observed = float(estimates.mean())
    candidates = []
    for cdf in DECODERS:
        law = ref.ElboLaw(mean, var, x0, BOUND_BETAS, cdf)
        expected, nll = float(law.expectation()[0]), float(law.nll_bpd()[0])
        # The test is observed ≥ nll − threshold, written as a deviation from the expectation so that
        # its p-value is uniform for a correct implementation.
        low = (nll - expected) - ref.chernoff_deviation(law, counts, alpha, upper=False)
        candidates.append((cdf, law, expected, nll, low, observed - expected))
    chosen = next((c for c in candidates if c[5] >= c[4]), candidates[0])
    cdf, law, expected, nll, low, deviation = chosen
    statistic = Statistic(
        "mean of the estimates − exact E[elbo_bpd], bits/dim (lower limit: −log p_θ(x₀)/(D ln 2) − E[elbo_bpd] "
        "− threshold)", deviation, low, math.inf, ref.normal_p_value(law, counts, deviation, two_sided=False), alpha,
        int(counts.sum()), BOUND_DERIVATION)
    residuals = (estimates - law.expectation()[:, None]) / law.variance().sqrt()[:, None]
    return StatReport([statistic], residuals, inputs,
                      note=f"exact −log p_θ(x₀)/(D ln 2) = {nll:.6f} bits/dim and E[elbo_bpd] = {expected:.6f} "
                           f"({cdf} CDF in the decoder); your mean {observed:.6f}. An ELBO below the likelihood is "
                           "not a bound: a term is missing or has the wrong sign.")


# -- the exercise ------------------------------------------------------------------------------

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
        Agreement(
            function="normal_kl", cases=kl_cases(), build=build_kl, reference=ref.normal_kl, tolerance=KL_TOLERANCE,
            dtype_from="mean1", device_from="mean1", points=2, dtype_points=1, examples=KL_EXAMPLES,
            diagnoses=(Diagnosis(_kl_inverted_ratio, "the variance ratio is inverted: with r = logvar1 − logvar2 the "
                                 "KL holds e^r − r (σ₁²/σ₂² and log σ₂²/σ₁²), not e^(−r) + r"),
                       Diagnosis(_kl_reversed, "this is KL(q ‖ p): the first distribution is N(mean1, e^logvar1)"),
                       Diagnosis(_kl_no_half, "the KL of two Gaussians carries a factor ½")),
        ),
        Property(
            function="normal_kl", cases=kl_cases(), build=build_kl, probe=kl_both_ways, examples=KL_EXAMPLES,
            aspects=(Aspect("KL(p ‖ q) ≥ 0 (Gibbs' inequality)", 1, judge_kl_nonnegative),
                     Aspect("KL(p ‖ p) = 0", 1, judge_kl_self_zero)),
        ),
        Property(
            function="discretized_gaussian_log_likelihood", cases=dgll_cases(), build=build_dgll, examples=DGLL_EXAMPLES,
            aspects=(Aspect(DGLL_VALUES, 2, judge_dgll_values),
                     dtype_device_aspect("x", "x", gated_by=(DGLL_VALUES,))),
            diagnoses=(Diagnosis(_dgll_closed_edges, "the edge bins must be open-ended: for x = −1 use Φ(upper edge), "
                                 "for x = 1 use 1 − Φ(lower edge)"),
                       Diagnosis(_dgll_log_variance, "log_scale is the log standard deviation (½ · log-variance): "
                                 "the scale is exp(log_scale)"),
                       Diagnosis(_dgll_wide_bins, "the bins are [x − 1/255, x + 1/255]: 256 levels 2/255 apart, so "
                                 "the half-width is 1/255")),
        ),
        Property(
            function="discretized_gaussian_log_likelihood", cases=grid_cases(), build=build_grid, examples=GRID_EXAMPLES,
            max_examples=10,
            aspects=(Aspect("the probabilities of the 256 levels sum to 1", 1, judge_sums_to_one),
                     Aspect("the lowest and highest bins are open-ended", 1, judge_open_edges)),
        ),
        Agreement(
            function="prior_bpd", cases=prior_cases(), build=build_prior, reference=ref.prior_bpd,
            tolerance=PRIOR_TOLERANCE, dtype_from="x0", device_from="x0", points=2, dtype_points=1,
            examples=PRIOR_EXAMPLES,
            diagnoses=(Diagnosis(_prior_nats, "this is in nats: bits per dimension divide by ln 2"),
                       Diagnosis(_prior_sum, "this is the sum over dimensions: bits per dimension take the mean"),
                       Diagnosis(_prior_first_step, "L_T uses the last timestep, ᾱ_{T−1}")),
        ),
        Agreement(
            function="vlb_term_bpd", cases=vlb_cases(), build=build_vlb, examples=VLB_EXAMPLES,
            reference=(ref.vlb_term_bpd, ref.vlb_term_bpd_with("tanh")), tolerance=VLB_TOLERANCE,
            diagnosis_tolerance=DEFAULT_TOLERANCE, what="matches the reference (the decoder's CDF may be the tanh "
            "approximation)", points=3, dtype_points=1, dtype_from="model_mean", device_from="model_mean",
            diagnoses=(Diagnosis(_vlb_nats, "this is in nats: bits per dimension divide by ln 2"),
                       Diagnosis(_vlb_reversed_kl, "the KL is from the posterior q(x_{t−1} | x_t, x₀) to the model: "
                                 "normal_kl(true mean, true log-variance, model mean, model log-variance)")),
        ),
        Property(
            function="vlb_term_bpd", cases=switch_cases(), build=build_vlb, examples=SWITCH_EXAMPLES, max_examples=10,
            aspects=(Aspect("the decoder NLL at t = 0 exactly, the KL at every t ≥ 1", 1, judge_switch_at_zero),),
        ),
        Property(
            function="elbo_bpd", cases=elbo_cases(), build=REPRODUCIBLE.build(build_elbo), probe=REPRODUCIBLE.probe,
            examples=ELBO_EXAMPLES, max_examples=6,
            aspects=(Aspect(ELBO_FORM.name, 1, judge_elbo_form, shrink=False, device=True),
                     REPRODUCIBLE.aspect("draws its noise from `generator` (the same seed gives the same result)")),
        ),
        Statistical(
            function="elbo_bpd", name="the mean of the estimates is the exact expected bound (Gaussian data)",
            procedure=elbo_mean_law, alpha=1e-6, derivation=MEAN_DERIVATION, points=3,
        ),
        Statistical(
            function="elbo_bpd", name="the estimates do not fall below the exact −log p_θ(x₀)",
            procedure=elbo_bound_law, alpha=1e-6, derivation=BOUND_DERIVATION, points=1,
        ),
    ),
)
