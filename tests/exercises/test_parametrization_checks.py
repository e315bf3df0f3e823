"""Do the parametrization checks hold what their comments promise, beyond what the bug catalogue shows?

* the term-size tolerance holds correct float32 conversions (improved-diffusion's √(1/ᾱ − 1), the
  schedule cast to float32 first, diffusers' ** 0.5, x̂₀ from v through ε̂ and ε̂ from v through x̂₀)
  far inside it, on every case the checks draw, the boundary examples included; and the routes' share
  of it (ROUTES) is what admits x̂₀ through ε̂ at t = T − 1 of the cosine schedule;
* the measured MSE ratio that mse_weight is judged against is the identity it measures, to float64
  round-off;
* agreement with the field: diffusers' DDPMScheduler.step recovers x̂₀ from ε and from v as
  predict_x0_from_eps and predict_x0_from_v do, and diffusers' training_utils.compute_snr is snr.
"""

from __future__ import annotations

import pytest
import torch

from grader.checks import Context
from grader.checks.property import draw_cases
from grader.exercises import parametrization as ex
from grader.exercises._common import diffusion_cases
from grader.runner import InProcessRunner
from reference import parametrization as ref
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule
from tests.catalogue import parametrization as catalogue

EPS32 = torch.finfo(torch.float32).eps


def _ctx() -> Context:
    return Context(InProcessRunner(dict(catalogue.CORRECT)), torch.device("cpu"), 0, "parametrization")


def _worst_ratio(function: str, impl, build, target: str | None = None) -> float:
    """max |got − expected| / allowed over the float32 cases a values (or, with ``target``, round-trip) check draws.

    allowed = atol + rtol·terms, plus ROUTE_ROUNDOFF units of round-off of a sound route's terms where the
    function has one (ex.ROUTES), exactly as ex.compare_to_terms computes it.
    """
    ctx = _ctx()
    cases = [c for c in draw_cases(diffusion_cases(), 400, 3, ex.BOUNDARIES) if c["dtype"] == "float32"]
    rtol, atol = ex.TERMS_TOLERANCE.for_dtype(torch.float32)
    worst = 0.0
    for case in cases:
        inputs = build(case, ctx)
        got = impl(*inputs.args.values()).double()
        if target is None:
            expected = inputs.call_reference(getattr(ref, function))
        else:
            expected = inputs.meta[target].double()
        f64 = inputs.in_float64()
        terms = ex.TERMS[function](f64)
        if function in ex.ROUTES:
            terms = terms + ex.ROUTE_ROUNDOFF * EPS32 / rtol * ex.ROUTES[function](f64)
        worst = max(worst, float(((got - expected).abs() / (atol + rtol * terms)).max()))
    return worst


FLOAT32_IMPLEMENTATIONS = [
    ("predict_x0_from_eps", ref.predict_x0_from_eps, ex.build_x0_from_eps),
    ("predict_x0_from_eps", catalogue.x0_from_eps_improved_diffusion, ex.build_x0_from_eps),
    ("predict_x0_from_eps", catalogue.x0_from_eps_cast_first, ex.build_x0_from_eps),
    ("predict_eps_from_x0", catalogue.eps_from_x0_improved_diffusion, ex.build_eps_from_x0),
    ("velocity", catalogue.velocity_diffusers, ex.build_velocity),
    ("predict_x0_from_v", catalogue.x0_from_v_through_eps, ex.build_x0_from_v),
    ("predict_x0_from_v", catalogue.x0_from_v_through_eps_cast_first, ex.build_x0_from_v),
    ("predict_eps_from_v", catalogue.eps_from_v_cast_first, ex.build_eps_from_v),
    ("predict_eps_from_v", catalogue.eps_from_v_through_x0, ex.build_eps_from_v),
    ("predict_eps_from_v", catalogue.eps_from_v_through_x0_cast_first, ex.build_eps_from_v),
    ("score_from_eps", catalogue.score_rsqrt, ex.build_score),
]


@pytest.mark.parametrize("function, impl, build", FLOAT32_IMPLEMENTATIONS,
                         ids=[f"{f}: {i.__name__}" for f, i, _ in FLOAT32_IMPLEMENTATIONS])
def test_float32_conversions_use_at_most_half_of_the_term_tolerance(function, impl, build):
    """Do correct float32 conversions stay within half of the allowed error (the comment claims a margin of 2–4)?"""
    ratio = _worst_ratio(function, impl, build)
    assert ratio <= 0.5, ratio


ROUTED = [("predict_x0_from_v", catalogue.x0_from_v_through_eps, "x0"),
          ("predict_x0_from_v", catalogue.x0_from_v_through_eps_cast_first, "x0"),
          ("predict_eps_from_v", catalogue.eps_from_v_through_x0, "eps"),
          ("predict_eps_from_v", catalogue.eps_from_v_through_x0_cast_first, "eps")]


@pytest.mark.parametrize("function, impl, target", ROUTED, ids=[i.__name__ for _, i, _ in ROUTED])
def test_float32_routes_give_back_the_round_trip_within_half_of_the_allowance(function, impl, target):
    """On the round-trip cases (x_t and v of one x₀ and ε), do the routes through ε̂ or x̂₀ use ≤ ½ of the allowance?"""
    assert _worst_ratio(function, impl, ex.build_v_round_trip, target) <= 0.5


def test_the_route_allowance_is_what_admits_x0_through_eps_at_the_end_of_the_cosine_schedule():
    """At t = T − 1 of the cosine schedule in float32, does x̂₀ through ε̂ err beyond rtol·terms, but within the route's share?

    This is the issue's case (a correct route losing a point): without ROUTES the judge fails it.
    """
    alphas_cumprod = compute_alphas_cumprod(cosine_beta_schedule(1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4, 64, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.full((4,), 999)
    a, s = alphas_cumprod[t].sqrt()[:, None], (1 - alphas_cumprod[t]).sqrt()[:, None]
    xt, v = (a * x0 + s * eps).float(), (a * eps - s * x0).float()
    got = catalogue.x0_from_v_through_eps(xt, t, v, alphas_cumprod).double()
    inputs = ex.Inputs({"xt": xt.double(), "t": t, "v": v.double(), "alphas_cumprod": alphas_cumprod})
    expected = ref.predict_x0_from_v(xt.double(), t, v.double(), alphas_cumprod)
    rtol, atol = ex.TERMS_TOLERANCE.for_dtype(torch.float32)
    error = (got - expected).abs()
    assert (error > atol + rtol * ex.TERMS["predict_x0_from_v"](inputs)).any()
    with pytest.raises(ex.Mismatch):
        ex.compare_to_terms(got.float(), expected, ex.TERMS["predict_x0_from_v"](inputs), torch.float32)
    ex.compare_to_terms(got.float(), expected, ex.TERMS["predict_x0_from_v"](inputs), torch.float32,
                        route=ex.ROUTES["predict_x0_from_v"](inputs))


def test_the_tolerance_is_relative_to_the_terms_not_the_result():
    """At t = T − 1 of the cosine schedule, does a correct float32 x̂₀ err by more than rtol·|x̂₀| but within rtol·terms?

    The point of the term-size tolerance: x̂₀ = x_t/√ᾱ − √(1/ᾱ − 1)·ε adds terms of size 2e4 that
    cancel to O(1) when x_t and ε come from the same x₀; float32 round-off is then relative to 2e4.
    """
    alphas_cumprod = compute_alphas_cumprod(cosine_beta_schedule(1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4, 64, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.full((4,), 999)
    a, s = alphas_cumprod[t].sqrt()[:, None], (1 - alphas_cumprod[t]).sqrt()[:, None]
    xt = (a * x0 + s * eps).float()
    got = catalogue.x0_from_eps_cast_first(xt, t, eps.float(), alphas_cumprod).double()
    expected = ref.predict_x0_from_eps(xt.double(), t, eps.float().double(), alphas_cumprod)
    terms = (xt.double().abs() + s * eps.float().double().abs()) / a
    rtol, atol = ex.TERMS_TOLERANCE.for_dtype(torch.float32)
    error = (got - expected).abs()
    assert (error > atol + rtol * expected.abs()).any()  # a result-relative tolerance would fail correct code
    assert (error <= 0.5 * (atol + rtol * terms)).all()


def test_measured_ratio_is_the_identity_it_measures():
    """Is the float64 measured MSE ratio the reference's mse_weight to 1e-12, on every case the check draws?"""
    ctx = _ctx()
    worst = 0.0
    for case in draw_cases(ex.weight_cases(), 300, 5, ex.WEIGHT_EXAMPLES):
        inputs = ex.build_weight(case, ctx)
        weight = inputs.call_reference(ref.mse_weight)
        worst = max(worst, float(((ex.measured_ratio(inputs) - weight).abs() / weight).max()))
    # The module's comment: < 1e-13 (x̂₀ − x₀ is computed to ~EPS·|x_t|/σ relative to σ|ε − ε̂|/a).
    assert worst < 1e-12, worst


# -- agreement with the field -------------------------------------------------------------------------

T = 1000


def _scheduler(prediction_type: str, beta_schedule: str):
    """diffusers' DDPMScheduler with T steps, no clipping of x̂₀; its alphas_cumprod are float32."""
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, clip_sample=False,
                                   prediction_type=prediction_type)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_predictions_match_diffusers_ddpm_step(prediction_type, beta_schedule):
    """Does DDPMScheduler.step's pred_original_sample equal predict_x0_from_eps / predict_x0_from_v, on its own ᾱ?"""
    scheduler = _scheduler(prediction_type, beta_schedule)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)  # exact: float32 values in float64
    g = torch.Generator().manual_seed(1)
    for step in (0, 1, 2, 500, 998, T - 1):
        xt, output = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(2))
        t = torch.full((2,), step)
        theirs = scheduler.step(output, step, xt, generator=g).pred_original_sample
        if prediction_type == "epsilon":
            ours = ref.predict_x0_from_eps(xt, t, output, alphas_cumprod)
            terms = (xt.abs() + (1 - alphas_cumprod[step]).sqrt() * output.abs()) / alphas_cumprod[step].sqrt()
        else:
            ours = ref.predict_x0_from_v(xt, t, output, alphas_cumprod)
            terms = alphas_cumprod[step].sqrt() * xt.abs() + (1 - alphas_cumprod[step]).sqrt() * output.abs()
        # diffusers takes ** 0.5 of float32 ᾱ and 1 − ᾱ and combines in float32 (≤ 4 roundings of the
        # terms); we take √ in float64, cast, and combine in float32 (≤ 3): 8·EPS32 of the terms bounds both.
        assert ((ours.double() - theirs.double()).abs() <= 8 * EPS32 * terms.double()).all(), (prediction_type, step)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_snr_matches_diffusers_compute_snr(beta_schedule):
    """Is snr diffusers' training_utils.compute_snr (the SNR of Min-SNR weighting), on its own ᾱ?"""
    pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_snr

    scheduler = _scheduler("epsilon", beta_schedule)
    t = torch.tensor([0, 1, 2, 10, 250, 500, 750, 998, T - 1])
    theirs = compute_snr(scheduler, t)
    ours = ref.snr(t, scheduler.alphas_cumprod.to(torch.float64))
    # compute_snr squares float32 √ᾱ / √(1 − ᾱ) (1 − ᾱ is exact by Sterbenz near ᾱ = 1): a few roundings,
    # ≤ 8·EPS32 relative.
    torch.testing.assert_close(ours, theirs.double(), rtol=8 * EPS32, atol=0)
