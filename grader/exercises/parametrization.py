"""Checks of exercise 3, parametrization: ε, x₀, v and the score, SNR and the loss weights.

Point budget (34): predict_x0_from_eps 4, predict_eps_from_x0 4, velocity 4, predict_x0_from_v 4,
predict_eps_from_v 4, score_from_eps 4, training_target 4, mse_weight 4, snr 2. Each but snr has 2
points for its values, 1 for dtype and device, and 1 for a property: a round trip through the
reference's inverse (ε → x̂₀ → ε, x₀ → ε̂ → x₀, v → x₀, v → ε), the rotation of (x₀, ε) into (x_t, v),
the exact score of Gaussian data, the ValueError of an unknown name; mse_weight's values are worth 1 and
its agreement with the measured MSE ratio 2.

Every function is deterministic: no statistical checks.

How values are compared. Each conversion is a linear combination Σᵢ cᵢ(t)·yᵢ of its tensor arguments
with per-timestep coefficients, and its round-off (or the error of another correct way of computing
the coefficients) is relative to the size of the terms, Σᵢ |cᵢ·yᵢ|, not to the result: near t = T − 1
of the cosine schedule x̂₀ = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε adds terms of size 2e4 that cancel to O(1).
So a value passes when |got − expected| ≤ atol + rtol·Σᵢ|cᵢ·yᵢ| (:data:`TERMS_TOLERANCE`). Where a
conversion can soundly be computed through two others (x̂₀ from v through ε̂, ε̂ from v through x̂₀),
the round-off of that route is allowed too, from the size of its terms (:data:`ROUTES`).
"""

from __future__ import annotations

from typing import Callable

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
    Tolerance,
    as_tensor,
    compare,
    compare_values,
    describe_value,
    dtype_device_aspect,
)
from grader.exercises import Exercise
from grader.exercises._common import (
    SCHEDULE_TOLERANCE,
    boundary_cases,
    case_tensors,
    diffusion_cases,
    schedule_note,
)
from reference import parametrization as ref
from reference._broadcast import extract
from reference.toy import GaussianData, vp_coefficients

#: Relative to the terms Σᵢ|cᵢ·yᵢ| (see the module docstring). float32: the coefficients may be computed
#: in float32 from a cast ᾱ (or as improved-diffusion's √(1/ᾱ − 1)), where 1 − ᾱ_t loses up to
#: u/(1 − ᾱ_0) ≈ 1.5e-3 of its relative accuracy at t = 0 of the cosine schedule (u = 6e-8, 1 − ᾱ_0 =
#: 4.1e-5); their square roots half that. 3e-3 of the terms covers it with a margin of 2–4 (the same
#: figure as grader.exercises._common.SCHEDULE_TOLERANCE); measured, correct float32 variants use at
#: most 10% of it (tests/exercises/test_parametrization_checks.py). float64: √(1/ᾱ_t − 1) cancels where
#: ᾱ_t ≈ 1, a relative error of u/(1 − ᾱ_0) ≈ 3e-12 (u = 1.1e-16); 1e-9 of the terms leaves 300x, and
#: the catalogued bugs change values by ≥ 1e-4 of the terms.
TERMS_TOLERANCE = Tolerance(
    rtol32=3e-3, atol32=1e-6, rtol64=1e-9, atol64=1e-12,
    why="relative to the terms of the linear combination: 1 − ᾱ_t near t = 0 in float32, √(1/ᾱ − 1) in float64",
)

# -- comparing linear combinations -------------------------------------------------------------


def _coefficients(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (a_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t)) on the CPU, shaped to broadcast against the data."""
    a = inputs.arguments()
    alphas_cumprod = a["alphas_cumprod"].to("cpu", torch.float64)
    like = next(v for k, v in a.items() if k in ("xt", "x0", "eps") and isinstance(v, torch.Tensor))
    alpha_bar = extract(alphas_cumprod, a["t"].cpu(), like.to("cpu", torch.float64))
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def _abs(inputs: Inputs, name: str) -> torch.Tensor:
    return inputs.arguments()[name].detach().to("cpu", torch.float64).abs()


#: Σᵢ|cᵢ·yᵢ| for each conversion, from its (float64, CPU) inputs.
TERMS: dict[str, Callable[[Inputs], torch.Tensor]] = {
    "predict_x0_from_eps": lambda i: (lambda a, s: (_abs(i, "xt") + s * _abs(i, "eps")) / a)(*_coefficients(i)),
    "predict_eps_from_x0": lambda i: (lambda a, s: (_abs(i, "xt") + a * _abs(i, "x0")) / s)(*_coefficients(i)),
    "velocity": lambda i: (lambda a, s: a * _abs(i, "eps") + s * _abs(i, "x0"))(*_coefficients(i)),
    "predict_x0_from_v": lambda i: (lambda a, s: a * _abs(i, "xt") + s * _abs(i, "v"))(*_coefficients(i)),
    "predict_eps_from_v": lambda i: (lambda a, s: s * _abs(i, "xt") + a * _abs(i, "v"))(*_coefficients(i)),
    "score_from_eps": lambda i: (lambda a, s: _abs(i, "eps") / s)(*_coefficients(i)),
}


def _x0_via_eps(i: Inputs) -> torch.Tensor:
    """Terms of x̂₀ = (x_t − σ·ε̂)/a with ε̂ = σ·x_t + a·v: the outer sum's, and the inner sum's times σ/a."""
    a, s = _coefficients(i)
    xt, v = _abs(i, "xt"), _abs(i, "v")
    eps = (s * i.arguments()["xt"].to("cpu", torch.float64) + a * i.arguments()["v"].to("cpu", torch.float64)).abs()
    return (xt + s * eps) / a + (s / a) * (s * xt + a * v)


def _eps_via_x0(i: Inputs) -> torch.Tensor:
    """Terms of ε̂ = (x_t − a·x̂₀)/σ with x̂₀ = a·x_t − σ·v: the outer sum's, and the inner sum's times a/σ."""
    a, s = _coefficients(i)
    xt, v = _abs(i, "xt"), _abs(i, "v")
    x0 = (a * i.arguments()["xt"].to("cpu", torch.float64) - s * i.arguments()["v"].to("cpu", torch.float64)).abs()
    return (xt + a * x0) / s + (a / s) * (a * xt + s * v)


#: Sound routes through the curriculum's other conversions, by the size of their terms. x̂₀ from v may be
#: computed as predict_x0_from_eps(x_t, predict_eps_from_v(x_t, v)), and ε̂ from v through x̂₀: the same
#: formula in exact arithmetic, but near t = T − 1 of the cosine schedule (√ᾱ = 4.9e-5) the first route
#: divides a float32 difference of x_t and σ·ε̂ by √ᾱ, so its round-off is relative to terms of size
#: 2|x_t|/√ᾱ ≈ 4e4·|x_t|, not to √ᾱ|x_t| + σ|v| (issue 10 measured a correct one losing a point there).
#: Each term of each of the route's two sums carries ≤ 2 units of round-off to first order (the
#: coefficient cast from float64, ½; its square root if taken in float32, ½; the product, ½; the sum, ½),
#: and the inner sum's error reaches the result times the outer coefficient (counted in the route's
#: size). :data:`ROUTE_ROUNDOFF` = 4 units leaves a margin of 2; measured, correct float32 routes use
#: ≤ 10% of it, and ≤ 6% of the whole allowance (tests/exercises/test_parametrization_checks.py). Away
#: from the ends of the schedule the route's size is ~3|x_t|, so 4 units of float32 round-off (5e-7
#: relative) change nothing there, and in float64 (1e-15) nothing anywhere.
ROUTES: dict[str, Callable[[Inputs], torch.Tensor]] = {"predict_x0_from_v": _x0_via_eps, "predict_eps_from_v": _eps_via_x0}
ROUTE_ROUNDOFF = 4.0


def compare_to_terms(got, expected: torch.Tensor, terms: torch.Tensor, dtype: torch.dtype,
                     what: str = "the result", route: torch.Tensor | None = None) -> None:
    """The library's comparator with the size of the formula's terms as the scale: |got − expected| ≤ atol + rtol·terms.

    With ``route`` (the size of a sound route's terms, :data:`ROUTES`), ROUTE_ROUNDOFF units of the dtype's
    round-off of it are allowed as well. The tolerance is float64's only when both the data (``dtype``) and
    the result are float64: a result in the wrong dtype loses its dtype test, not its value test as well.
    """
    got = as_tensor(got, what)
    if route is not None:  # the allowance as terms: rtol·terms' = rtol·terms + ROUTE_ROUNDOFF·u·route
        precision = torch.float64 if got.dtype == torch.float64 and dtype == torch.float64 else torch.float32
        terms = terms + (ROUTE_ROUNDOFF * torch.finfo(precision).eps / TERMS_TOLERANCE.for_dtype(precision)[0]) * route
    compare(got, expected, TERMS_TOLERANCE, what, scale=terms, dtype=dtype,
            scale_what="the size of the formula's terms" + (", a sound route's round-off included" if route is not None else ""))


def data_dtype(inputs: Inputs) -> torch.dtype:
    """The dtype of the data tensors (the first floating tensor argument other than the schedule)."""
    return next(v.dtype for k, v in inputs.arguments().items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "alphas_cumprod")


def judge_conversion(function: str) -> Callable:
    """A judge: ``function``'s value agrees with the reference, relative to the size of its terms."""
    reference = getattr(ref, function)

    def judge(inputs: Inputs, outcome) -> None:
        f64 = inputs.in_float64()
        route = ROUTES[function](f64) if function in ROUTES else None
        compare_to_terms(outcome.value, inputs.call_reference(reference), TERMS[function](f64), data_dtype(inputs),
                         route=route)

    return judge


def conversion(function: str, build: Callable, dtype_from: str, diagnoses: tuple = ()) -> Property:
    """The agreement check of a conversion: values (2 points), dtype and device (1 point)."""
    return Property(
        function=function, cases=diffusion_cases(), build=build, examples=BOUNDARIES, diagnoses=diagnoses,
        aspects=(Aspect("matches the reference", 2, judge_conversion(function)),
                 dtype_device_aspect(dtype_from, dtype_from, gated_by=("matches the reference",))),
    )


#: t = 0, 1 and T − 1 for both schedules at T = 10 (from _common) and T = 1000, where 1 − ᾱ_0 ≈ 1e-4
#: (linear: x₀ → ε amplifies by 1/σ = 100) and ᾱ_{T−1} ≈ 2.4e-9 (cosine: ε → x₀ amplifies by 1/√ᾱ = 2e4).
BOUNDARIES = (*boundary_cases(), *({"T": 1000, "schedule": s, "shape": (3, 2, 2), "dtype": d, "schedule_dtype": sd,
                                    "t": (0, 1, 999), "seed": 1}
                                   for s in ("linear", "cosine") for d, sd in (("float32", "float64"),
                                                                               ("float64", "data"))))


def _schedule_notes(case: dict, c: dict) -> dict:
    return {"alphas_cumprod": schedule_note(case["schedule"], case["T"], c["schedule_dtype"])}


def _builder(names: tuple[str, str], roles: tuple[str, str], order: tuple[str, ...]) -> Callable:
    """A build: two data tensors named ``names`` (from the case's ``roles``), ``t`` and ``alphas_cumprod`` in ``order``."""

    def build(case: dict, ctx: Context) -> Inputs:
        c = case_tensors(case, ctx)
        values = {names[0]: c[roles[0]], names[1]: c[roles[1]], "t": c["t"], "alphas_cumprod": c["alphas_cumprod"]}
        return Inputs({k: values[k] for k in order}, notes=_schedule_notes(case, c))

    return build


build_x0_from_eps = _builder(("xt", "eps"), ("x", "noise"), ("xt", "t", "eps", "alphas_cumprod"))
build_eps_from_x0 = _builder(("xt", "x0"), ("x", "x2"), ("xt", "t", "x0", "alphas_cumprod"))
build_velocity = _builder(("x0", "eps"), ("x", "noise"), ("x0", "eps", "t", "alphas_cumprod"))
build_x0_from_v = _builder(("xt", "v"), ("x", "noise"), ("xt", "t", "v", "alphas_cumprod"))
build_eps_from_v = _builder(("xt", "v"), ("x", "noise"), ("xt", "t", "v", "alphas_cumprod"))


def build_score(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs({"eps": c["noise"], "t": c["t"], "alphas_cumprod": c["alphas_cumprod"]},
                  notes=_schedule_notes(case, c))


# -- round trips through the reference's inverse -------------------------------------------------


def _cast_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(dtype=like.dtype, device=like.device)


def build_x0_round_trip(case: dict, ctx: Context) -> Inputs:
    """x_t and x₀ drawn, ε̂ = predict_eps_from_x0(x_t, x₀) by the reference: predict_x0_from_eps must give x₀ back."""
    c = case_tensors(case, ctx)
    f64 = {k: v.to(torch.float64) for k, v in c.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    eps = ref.predict_eps_from_x0(f64["x"], c["t"], f64["x2"], f64["alphas_cumprod"])
    return Inputs({"xt": c["x"], "t": c["t"], "eps": _cast_like(eps, c["x"]), "alphas_cumprod": c["alphas_cumprod"]},
                  notes={**_schedule_notes(case, c),
                         "eps": f"predict_eps_from_x0(xt, t, x0, alphas_cumprod) for x0 = {describe_value(c['x2'])}"},
                  meta={"original": c["x2"], "original_name": "x0"})


def build_eps_round_trip(case: dict, ctx: Context) -> Inputs:
    """x_t and ε drawn, x̂₀ = predict_x0_from_eps(x_t, ε) by the reference: predict_eps_from_x0 must give ε back."""
    c = case_tensors(case, ctx)
    f64 = {k: v.to(torch.float64) for k, v in c.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    x0 = ref.predict_x0_from_eps(f64["x"], c["t"], f64["noise"], f64["alphas_cumprod"])
    return Inputs({"xt": c["x"], "t": c["t"], "x0": _cast_like(x0, c["x"]), "alphas_cumprod": c["alphas_cumprod"]},
                  notes={**_schedule_notes(case, c),
                         "x0": f"predict_x0_from_eps(xt, t, eps, alphas_cumprod) for eps = {describe_value(c['noise'])}"},
                  meta={"original": c["noise"], "original_name": "eps"})


def build_v_round_trip(case: dict, ctx: Context) -> Inputs:
    """x₀ and ε drawn, x_t = q_sample(x₀, ε) and v = velocity(x₀, ε) by the reference."""
    c = case_tensors(case, ctx)
    f64 = {k: v.to(torch.float64) for k, v in c.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    a, s = (extract(q, c["t"], f64["x"]) for q in (f64["alphas_cumprod"].sqrt(), (1 - f64["alphas_cumprod"]).sqrt()))
    xt = a * f64["x"] + s * f64["noise"]
    v = ref.velocity(f64["x"], f64["noise"], c["t"], f64["alphas_cumprod"])
    return Inputs({"xt": _cast_like(xt, c["x"]), "t": c["t"], "v": _cast_like(v, c["x"]),
                   "alphas_cumprod": c["alphas_cumprod"]},
                  notes={**_schedule_notes(case, c),
                         "xt": f"q_sample(x0, t, alphas_cumprod, eps) for x0 = {describe_value(c['x'])}",
                         "v": f"velocity(x0, eps, t, alphas_cumprod) for eps = {describe_value(c['noise'])}"},
                  meta={"x0": c["x"], "eps": c["noise"]})


def judge_round_trip(function: str, target: str | None = None) -> Callable:
    """A judge: the value is the tensor the inputs were made from (``meta[target]``, else ``meta['original']``)."""

    def judge(inputs: Inputs, outcome) -> None:
        name = target or inputs.meta["original_name"]
        original = inputs.meta[target or "original"].to(torch.float64)
        # The inputs were cast to the data's dtype after the reference made them: that rounding is
        # part of the terms' size, so TERMS_TOLERANCE covers it (≤ 1 ulp of each term).
        f64 = inputs.in_float64()
        compare_to_terms(outcome.value, original, TERMS[function](f64), data_dtype(inputs),
                         f"the result (which should give back {name})",
                         route=ROUTES[function](f64) if function in ROUTES else None)

    return judge


def round_trip(function: str, name: str, build: Callable, target: str | None = None) -> Property:
    return Property(function=function, cases=diffusion_cases(), build=build, examples=BOUNDARIES, max_examples=15,
                    aspects=(Aspect(name, 1, judge_round_trip(function, target)),))


# -- velocity: a rotation ----------------------------------------------------------------------


def build_rotation(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs({"x0": c["x"], "eps": c["noise"], "t": c["t"], "alphas_cumprod": c["alphas_cumprod"]},
                  notes=_schedule_notes(case, c))


def judge_rotation(inputs: Inputs, outcome) -> None:
    """x_t² + v² = x₀² + ε² elementwise: (x_t, v) is (x₀, ε) rotated by φ_t, with cos φ_t = √ᾱ_t."""
    f64 = inputs.in_float64()
    a, s = _coefficients(f64)
    x0, eps = f64.args["x0"].cpu(), f64.args["eps"].cpu()
    v = as_tensor(outcome.value, "the result")
    if tuple(v.shape) != tuple(x0.shape):
        raise Mismatch(f"the result has shape {tuple(v.shape)}; expected {tuple(x0.shape)}")
    v = v.detach().to("cpu", torch.float64)
    xt = a * x0 + s * eps
    # Squares of values within TERMS_TOLERANCE of the right ones: |Δ(v²)| ≤ 2|v|·Δv + Δv².
    both64 = as_tensor(outcome.value, "the result").dtype == torch.float64 == data_dtype(inputs)
    rtol, atol = TERMS_TOLERANCE.for_dtype(torch.float64 if both64 else torch.float32)
    terms = a * eps.abs() + s * x0.abs()
    slack = 2 * terms * (atol + rtol * terms) + (atol + rtol * terms) ** 2 + 1e-12 * (x0**2 + eps**2)
    gap = torch.nan_to_num((xt**2 + v**2 - x0**2 - eps**2).abs() - slack, nan=float("inf"))
    if bool((gap > 0).any()):
        i = int(gap.flatten().argmax())
        raise Mismatch(f"at flat index {i}, x_t² + v² = {(xt**2 + v**2).flatten()[i].item():.6g} but x₀² + ε² = "
                       f"{(x0**2 + eps**2).flatten()[i].item():.6g} (x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε): v must complete "
                       "x_t to a rotation of (x₀, ε), v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀")


# -- the score -----------------------------------------------------------------------------------


def build_gaussian_score(case: dict, ctx: Context) -> Inputs:
    """x_t ~ q(x_t) for Gaussian data, and its optimal ε̂ = E[ε | x_t]."""
    c = case_tensors(case, ctx)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    shape = case["shape"][1:]
    data = GaussianData(0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
                        torch.exp(torch.randn(shape, generator=g, dtype=torch.float64)))
    ac = c["alphas_cumprod"].to("cpu", torch.float64)
    a, n = vp_coefficients(c["t"].cpu(), ac)
    mean, var = data.noised(a, n, c["x"].to("cpu", torch.float64))
    xt = mean + var.sqrt() * c["x2"].to("cpu", torch.float64)
    eps = data.eps(xt, a, n)
    return Inputs({"eps": _cast_like(eps, c["x"]), "t": c["t"], "alphas_cumprod": c["alphas_cumprod"]},
                  notes={**_schedule_notes(case, c), "eps": "E[ε | x_t] for Gaussian data N(μ, diag(s²)), x_t ~ q(x_t)"},
                  meta={"score": data.score(xt, a, n)})


def judge_gaussian_score(inputs: Inputs, outcome) -> None:
    compare_to_terms(outcome.value, inputs.meta["score"], TERMS["score_from_eps"](inputs.in_float64()),
                     data_dtype(inputs), "the result (the score of q(x_t))")


# -- snr and mse_weight --------------------------------------------------------------------------


def build_snr(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs({"t": c["t"], "alphas_cumprod": c["alphas_cumprod"]}, notes=_schedule_notes(case, c))


@st.composite
def weight_cases(draw) -> dict:
    case = draw(diffusion_cases())
    return {**case, "parametrization": draw(st.sampled_from(list(ref.PARAMETRIZATIONS)))}


WEIGHT_EXAMPLES = tuple({**case, "parametrization": p} for case in BOUNDARIES[:4] + BOUNDARIES[-2:]
                        for p in ref.PARAMETRIZATIONS)


def build_weight(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs({"t": c["t"], "alphas_cumprod": c["alphas_cumprod"], "parametrization": case["parametrization"]},
                  notes=_schedule_notes(case, c), meta={"seed": case["seed"]})


#: Dimensions of the data behind a measured MSE ratio: ‖ε − ε̂‖² ≈ 64 × 0.25 = 16, never near 0.
RATIO_DIMS = 64


def measured_ratio(inputs: Inputs) -> torch.Tensor:
    """‖target − prediction‖² / ‖ε − ε̂‖² per batch element, the prediction derived from ε̂ at the same x_t (float64)."""
    f64 = inputs.in_float64()
    t = f64.args["t"].cpu()
    ac = f64.args["alphas_cumprod"].cpu()
    g = torch.Generator().manual_seed(inputs.meta["seed"])
    x0, eps, perturbation = (torch.randn(len(t), RATIO_DIMS, generator=g, dtype=torch.float64) for _ in range(3))
    eps_hat = eps + 0.5 * perturbation
    a, s = extract(ac.sqrt(), t, x0), extract((1 - ac).sqrt(), t, x0)
    xt = a * x0 + s * eps
    x0_hat = ref.predict_x0_from_eps(xt, t, eps_hat, ac)
    parametrization = f64.args["parametrization"]
    prediction = {"eps": eps_hat, "x0": x0_hat, "v": ref.velocity(x0_hat, eps_hat, t, ac)}[parametrization]
    target = ref.training_target(x0, eps, t, ac, parametrization)
    return ((target - prediction) ** 2).sum(1) / ((eps - eps_hat) ** 2).sum(1)


def judge_measured_ratio(inputs: Inputs, outcome) -> None:
    """w equals the measured ratio (the identity is exact; the float64 measurement errs by < 1e-13 relative)."""
    ratio = measured_ratio(inputs)
    got = as_tensor(outcome.value, "the result")
    name = inputs.args["parametrization"]
    try:
        compare_values(got, ratio, SCHEDULE_TOLERANCE, "the weight")
    except Mismatch as mismatch:
        t = inputs.args["t"].cpu()
        raise Mismatch(f"{mismatch} — with predictions derived from ε̂ at the same x_t, the {name!r} loss "
                       f"‖target − prediction‖² measured at t = {t.tolist()} is "
                       f"{[float(f'{r:.6g}') for r in ratio.tolist()]} times ‖ε − ε̂‖²", **mismatch.details) from None


# -- training_target ---------------------------------------------------------------------------


def build_target(case: dict, ctx: Context) -> Inputs:
    c = case_tensors(case, ctx)
    return Inputs({"x0": c["x"], "noise": c["noise"], "t": c["t"], "alphas_cumprod": c["alphas_cumprod"],
                   "parametrization": case["parametrization"]}, notes=_schedule_notes(case, c))


def judge_target(inputs: Inputs, outcome) -> None:
    f64 = inputs.in_float64()
    name = inputs.args["parametrization"]
    terms = {"eps": lambda: _abs(f64, "noise"), "x0": lambda: _abs(f64, "x0"),
             "v": lambda: TERMS["velocity"](Inputs({"x0": f64.args["x0"], "eps": f64.args["noise"], "t": f64.args["t"],
                                                    "alphas_cumprod": f64.args["alphas_cumprod"]}))}[name]()
    compare_to_terms(outcome.value, inputs.call_reference(ref.training_target), terms, data_dtype(inputs),
                     f"the {name!r} target")


UNKNOWN_NAMES = ("epsilon", "V", "sample", "", "x_0")


@st.composite
def unknown_cases(draw) -> dict:
    return {**draw(diffusion_cases()), "parametrization": draw(st.sampled_from(UNKNOWN_NAMES))}


UNKNOWN_EXAMPLES = tuple({**BOUNDARIES[0], "parametrization": name} for name in UNKNOWN_NAMES)


def raises_on(ns, x0, noise, t, alphas_cumprod, parametrization):
    """Probe: what training_target does with a parametrization name it should not know."""
    try:
        value = ns.training_target(x0, noise, t, alphas_cumprod, parametrization)
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 -- the type is the answer
        return {"raised": type(error).__name__, "message": str(error)[:300]}
    return {"raised": None, "returned": type(value).__name__}


def judge_value_error(inputs: Inputs, outcome) -> None:
    info = outcome.value if isinstance(outcome.value, dict) else {}
    name = inputs.args["parametrization"]
    if info.get("raised") == "ValueError":
        return
    if info.get("raised"):
        raise Mismatch(f"training_target(..., parametrization={name!r}) raised {info['raised']}: "
                       f"{info.get('message', '')!r}; an unknown name must raise ValueError")
    raise Mismatch(f"training_target(..., parametrization={name!r}) returned a {info.get('returned', 'value')} "
                   "instead of raising ValueError: an unknown name must not silently give some target "
                   "(\"eps\", \"x0\" and \"v\" are the names)")


# -- diagnoses -----------------------------------------------------------------------------------


def _x0_from_eps_no_sqrt(xt, t, eps, alphas_cumprod):
    ab = extract(alphas_cumprod, t, xt)
    return (xt - (1 - ab) * eps) / ab


def _eps_from_x0_no_sqrt(xt, t, x0, alphas_cumprod):
    ab = extract(alphas_cumprod, t, xt)
    return (xt - ab * x0) / (1 - ab)


def _velocity_negated(x0, eps, t, alphas_cumprod):
    return -ref.velocity(x0, eps, t, alphas_cumprod)


def _velocity_swapped(x0, eps, t, alphas_cumprod):
    return ref.velocity(eps, x0, t, alphas_cumprod)


def _score_over_variance(eps, t, alphas_cumprod):
    return -eps / extract(1 - alphas_cumprod, t, eps)


def _snr_inverted(t, alphas_cumprod):
    return 1 / ref.snr(t, alphas_cumprod)


def _snr_std_ratio(t, alphas_cumprod):
    return ref.snr(t, alphas_cumprod).sqrt()


def _weight_snr(t, alphas_cumprod, parametrization):
    w = ref.mse_weight(t, alphas_cumprod, parametrization)
    return 1 / w if parametrization == "x0" else w


def _shifted(function):
    """The reference at ᾱ_{t−1} (with ᾱ₋₁ = 1): timesteps read as one-based."""

    def shifted(*args):
        names = list(ref.__dict__[function].__code__.co_varnames[:len(args)])
        args = list(args)
        i = names.index("alphas_cumprod")
        one = torch.ones(1, dtype=args[i].dtype, device=args[i].device)
        args[i] = torch.cat([one, args[i][:-1]])
        return getattr(ref, function)(*args)

    return shifted


SHIFTED = "your values match ᾱ_{t−1} in place of ᾱ_t: timesteps are zero-based and alphas_cumprod[t] belongs to step t"

# -- the exercise ------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="parametrization",
    title="ε, x₀, v and the score",
    functions=(
        ("predict_x0_from_eps", ("xt", "t", "eps", "alphas_cumprod")),
        ("predict_eps_from_x0", ("xt", "t", "x0", "alphas_cumprod")),
        ("velocity", ("x0", "eps", "t", "alphas_cumprod")),
        ("predict_x0_from_v", ("xt", "t", "v", "alphas_cumprod")),
        ("predict_eps_from_v", ("xt", "t", "v", "alphas_cumprod")),
        ("score_from_eps", ("eps", "t", "alphas_cumprod")),
        ("snr", ("t", "alphas_cumprod")),
        ("training_target", ("x0", "noise", "t", "alphas_cumprod", "parametrization")),
        ("mse_weight", ("t", "alphas_cumprod", "parametrization")),
    ),
    checks=(
        conversion("predict_x0_from_eps", build_x0_from_eps, "xt",
                   diagnoses=(Diagnosis(_x0_from_eps_no_sqrt, "ᾱ_t and 1 − ᾱ_t are variances: x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t"),
                              Diagnosis(_shifted("predict_x0_from_eps"), SHIFTED))),
        round_trip("predict_x0_from_eps", "undoes predict_eps_from_x0 (x₀ → ε̂ → x₀)", build_x0_round_trip),
        conversion("predict_eps_from_x0", build_eps_from_x0, "xt",
                   diagnoses=(Diagnosis(_eps_from_x0_no_sqrt, "divide by the standard deviation √(1 − ᾱ_t), and "
                                        "scale x₀ by √ᾱ_t"),
                              Diagnosis(_shifted("predict_eps_from_x0"), SHIFTED))),
        round_trip("predict_eps_from_x0", "undoes predict_x0_from_eps (ε → x̂₀ → ε)", build_eps_round_trip),
        conversion("velocity", build_velocity, "x0",
                   diagnoses=(Diagnosis(_velocity_negated, "the sign is reversed: v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀"),
                              Diagnosis(_velocity_swapped, "the coefficients are swapped: ε gets √ᾱ_t, x₀ gets "
                                        "−√(1 − ᾱ_t)"))),
        Property(function="velocity", cases=diffusion_cases(), build=build_rotation, examples=BOUNDARIES,
                 max_examples=15,
                 aspects=(Aspect("(x_t, v) is a rotation of (x₀, ε): x_t² + v² = x₀² + ε²", 1, judge_rotation),)),
        conversion("predict_x0_from_v", build_x0_from_v, "xt"),
        round_trip("predict_x0_from_v", "gives x₀ back from x_t = q_sample(x₀, ε) and v = velocity(x₀, ε)",
                   build_v_round_trip, target="x0"),
        conversion("predict_eps_from_v", build_eps_from_v, "xt"),
        round_trip("predict_eps_from_v", "gives ε back from x_t = q_sample(x₀, ε) and v = velocity(x₀, ε)",
                   build_v_round_trip, target="eps"),
        conversion("score_from_eps", build_score, "eps",
                   diagnoses=(Diagnosis(_score_over_variance, "divide by the standard deviation √(1 − ᾱ_t), not "
                                        "the variance"),
                              Diagnosis(lambda eps, t, alphas_cumprod: -ref.score_from_eps(eps, t, alphas_cumprod),
                                        "the score points towards the data: s = −ε/√(1 − ᾱ_t)"))),
        Property(function="score_from_eps", cases=diffusion_cases(), build=build_gaussian_score, examples=BOUNDARIES,
                 max_examples=15,
                 aspects=(Aspect("for Gaussian data and its optimal ε̂, is the exact score ∇ log q(x_t)", 1,
                                 judge_gaussian_score),)),
        Agreement(
            function="snr", cases=diffusion_cases(), build=build_snr, reference=ref.snr, tolerance=SCHEDULE_TOLERANCE,
            dtype_from="alphas_cumprod", device_from="alphas_cumprod", points=1, dtype_points=1, examples=BOUNDARIES,
            diagnoses=(Diagnosis(_snr_inverted, "this is 1/SNR: SNR(t) = ᾱ_t/(1 − ᾱ_t), large at t = 0"),
                       Diagnosis(_snr_std_ratio, "SNR is a ratio of variances, ᾱ_t/(1 − ᾱ_t), not of standard deviations")),
        ),
        Property(
            function="training_target", cases=weight_cases(), build=build_target, examples=WEIGHT_EXAMPLES,
            aspects=(Aspect("matches the reference", 2, judge_target),
                     dtype_device_aspect("x0", "x0", gated_by=("matches the reference",))),
        ),
        Property(
            function="training_target", cases=unknown_cases(), build=build_target, probe=raises_on,
            examples=UNKNOWN_EXAMPLES, max_examples=5,
            aspects=(Aspect("raises ValueError for an unknown parametrization", 1, judge_value_error, shrink=False),),
        ),
        Agreement(
            function="mse_weight", cases=weight_cases(), build=build_weight, reference=ref.mse_weight,
            tolerance=SCHEDULE_TOLERANCE, dtype_from="alphas_cumprod", device_from="alphas_cumprod", points=1,
            dtype_points=1, examples=WEIGHT_EXAMPLES,
            diagnoses=(Diagnosis(_weight_snr, "for \"x0\" the weight is 1/SNR(t): x₀ − x̂₀ = √(1 − ᾱ_t)/√ᾱ_t·(ε̂ − ε)"),),
        ),
        Property(
            function="mse_weight", cases=weight_cases(), build=build_weight, examples=WEIGHT_EXAMPLES,
            aspects=(Aspect("equals the measured ratio ‖target − prediction‖² / ‖ε − ε̂‖²", 2, judge_measured_ratio),),
        ),
    ),
)
