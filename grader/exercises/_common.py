"""The course's input vocabulary, shared by the exercises: shapes, dtypes, seeds, schedules, Gaussian toy draws.

Strategies (hypothesis): :data:`dtypes`, :data:`seeds`, :data:`schedules`, :data:`data_shapes`,
:data:`horizons`, :func:`diffusion_cases`; materialising: :data:`DTYPES`, :func:`schedule_betas`,
:func:`schedule_alphas_cumprod`, :func:`gaussian` (N(0, I) draws), :func:`gaussian_params`
(a diagonal Gaussian's μ and s²); the student's generator and model arguments are
``ctx.generator_spec(...)`` and ``ctx.model_spec(...)`` (:class:`grader.checks.Context`).

A *case* is a plain dict (ints, tuples, names) that hypothesis draws and shrinks
and that reads well in feedback; a builder turns it into tensors with a CPU
generator seeded by ``case["seed"]`` and moves them to the grading device, so
that the inputs (and the grade) are the same on every device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import strategies as st

from grader.checks import Battery, Context, Tolerance
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule

__all__ = [
    "DTYPES",
    "SCHEDULE_TOLERANCE",
    "data_shapes",
    "diffusion_cases",
    "dtypes",
    "gaussian",
    "gaussian_params",
    "horizons",
    "schedule_alphas_cumprod",
    "schedule_betas",
    "schedule_note",
    "schedules",
    "seeds",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: The dtypes a case is drawn in, by name (printable in feedback; :data:`DTYPES` maps them).
dtypes = st.sampled_from(["float32", "float64"])
#: A case's own seed, for the CPU generator that draws its tensors.
seeds = st.integers(0, 2**16)
#: The course's two β schedules (:func:`schedule_betas`).
schedules = st.sampled_from(["linear", "cosine"])

#: Formulas of the schedule, such as 1 − ᾱ_t, are ill-conditioned where ᾱ_t ≈ 1: a
#: correct float32 computation (from a float32 schedule, or a float64 one cast first)
#: loses u/(1 − ᾱ_t) in relative accuracy, 1.5e-3 at t = 0 of the cosine schedule
#: (1 − ᾱ_0 ≈ 4e-5) and 6e-4 for the linear one. 3e-3 relative and 3e-5 absolute
#: (for coefficients like √(1 − ᾱ_t) times N(0, 1) noise up to ~5) cover that with
#: a 2x margin. float64 cases stay strict (u/(1 − ᾱ) ≈ 3e-12), and hypothesis draws
#: both dtypes, so subtle bugs are still caught, at full precision, in float64.
SCHEDULE_TOLERANCE = Tolerance(
    rtol32=3e-3, atol32=3e-5, rtol64=1e-9, atol64=1e-10,
    why="float32 arithmetic on 1 − ᾱ_t near t = 0 loses up to u/(1 − ᾱ_0) ≈ 1.5e-3 relative accuracy",
)

#: Data shapes: a batch of 1–4, then 0–3 more dimensions of 1–5 (1-D, 2-D, image-like).
data_shapes = st.tuples(
    st.integers(1, 4),
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
).map(lambda bs: (bs[0], *bs[1]))

#: T: small schedules where off-by-one mistakes matter most, and the usual 1000.
horizons = st.one_of(st.integers(2, 12), st.sampled_from([50, 1000]))


def schedule_betas(kind: str, T: int) -> torch.Tensor:
    """float64 β of the named schedule ("linear" or "cosine") with the curriculum's defaults."""
    return linear_beta_schedule(T) if kind == "linear" else cosine_beta_schedule(T)


def schedule_alphas_cumprod(kind: str, T: int) -> torch.Tensor:
    """float64 ᾱ of the named schedule."""
    return compute_alphas_cumprod(schedule_betas(kind, T))


def schedule_note(kind: str, T: int, dtype: torch.dtype, what: str = "ᾱ") -> str:
    return f"{str(dtype).replace('torch.', '')} tensor of shape ({T},): {what} of the {kind} schedule with T = {T}"


@st.composite
def diffusion_cases(draw: Any, min_T: int = 1) -> dict:
    """A batch of data, one timestep per element, a schedule and dtypes."""
    T = max(min_T, draw(horizons))
    shape = draw(data_shapes)
    return {
        "T": T,
        "schedule": draw(st.sampled_from(["linear", "cosine"])),
        "shape": shape,
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        # The schedule comes as the course makes it (float64) or already in the data's dtype.
        "schedule_dtype": draw(st.sampled_from(["float64", "data"])),
        "t": tuple(draw(st.lists(st.integers(0, T - 1), min_size=shape[0], max_size=shape[0]))),
        "seed": draw(st.integers(0, 2**16)),
    }


def boundary_cases(shape: tuple = (3, 2), T: int = 10) -> tuple[dict, ...]:
    """t = 0, 1 and T − 1 in one batch, for each schedule and dtype: where conventions bite."""
    cases = []
    for schedule in ("linear", "cosine"):
        for dtype in ("float32", "float64"):
            cases.append({"T": T, "schedule": schedule, "shape": shape, "dtype": dtype,
                          "schedule_dtype": "float64", "t": (0, 1, T - 1), "seed": 0})
    return tuple(cases)


def gaussian(shape: tuple, generator: torch.Generator, dtype: torch.dtype, ctx: Context) -> torch.Tensor:
    """N(0, I) draws made in float64 on the CPU, then cast and moved to the grading device."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(ctx.device)


def gaussian_params(shape: tuple, generator: torch.Generator, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (μ, s²) of a diagonal Gaussian over ``shape``: μ ~ N(0, 1), s² log-uniform on [low, high]."""
    mean = torch.randn(shape, generator=generator, dtype=torch.float64)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return mean, torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u)


def case_tensors(case: dict, ctx: Context) -> dict:
    """The common tensors of a :func:`diffusion_cases` case: x, noise, t, β, ᾱ (schedule dtype)."""
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    betas = schedule_betas(case["schedule"], case["T"])
    return {
        "x": gaussian(case["shape"], g, dtype, ctx),
        "noise": gaussian(case["shape"], g, dtype, ctx),
        "x2": gaussian(case["shape"], g, dtype, ctx),
        "t": torch.tensor(case["t"], dtype=torch.long, device=ctx.device),
        "betas": betas.to(schedule_dtype).to(ctx.device),
        "alphas_cumprod": compute_alphas_cumprod(betas).to(schedule_dtype).to(ctx.device),
        "schedule_dtype": schedule_dtype,
    }


#: The battery of a sampler's law check on 16-coordinate Gaussian data, two calls side by side:
#: per call the pooled mean z, the χ² of the squared residuals and the χ² of the 16 per-coordinate
#: mean z's; across the two calls, three correlation tests. Nine tests share the check's level 1e-6.
SAMPLER_LAW = {
    "battery": Battery(per_call=("mean", "variance", "coordinate means"), between_calls=True, batch="joint",
                       coordinates="joint"),
    "alpha": 1e-6,
    "derivation": (
        "nine tests at 1.1e-7 each (Bonferroni): per call, the pooled mean z (exactly N(0, 1)), the χ² of the "
        "squared residuals (exactly χ²(65,536)) and the χ² of the 16 per-coordinate mean z's (exactly χ²(16)); "
        "across the two calls, three correlation tests (between calls, between batch elements, between "
        "coordinates: Chernoff bounds)"
    ),
}
