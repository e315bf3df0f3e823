"""Checks of exercise 6, cfg: classifier-free guidance, negative prompts, composition, rescaling, thresholding, CFG++.

Point budget (31): cfg_combine 3, guided_eps 6 (values 2, dtype 1, w = 0 and 1 are the model's own branches 1,
one batched call 2), composed_eps 4 (values 2, dtype 1, one batched call 1), rescale_guidance 3,
dynamic_threshold 3, cfg_pp_step 3, cfg_sample 9 (values 3, dtype 1, calls 1, the generator 1 + 1, the law 2).

The models are the optimal ε's of class-conditional Gaussians (``reference.toy``), with a
label per batch element: every label's data is Gaussian, so the guided ε is affine in x and
guided DDIM has an exact output law (``reference.laws.cfg_sample_law``). The model logs each
call's batch, timesteps and conditions, so the library's ``ModelCalls`` proves one batched call on
[uncond; cond] (k + 1 blocks for ``composed_eps``; :data:`BATCHED_CALL`).

Two tiers (README, "How grading works" → "Statistics"): every function is compared with the reference on
hypothesis-drawn inputs (``cfg_sample`` from a given x_T, where it is deterministic); and
``cfg_sample`` from its own x_T is tested against the exact law, one check at level 1e-6: the
exercise's false-failure probability is at most 1e-6.
"""

from __future__ import annotations

import warnings

import torch
from hypothesis import strategies as st

from grader.checks import (Agreement, Context, DEFAULT_TOLERANCE, Diagnosis, Inputs, Law, LawDraw, ModelCalls,
                            Property, Reproducible, Sample, Tolerance, output_aspect, seeded_runs)
from grader.exercises import Exercise
from grader.exercises._common import DTYPES, SCHEDULE_TOLERANCE, data_shapes, gaussian, horizons, schedule_betas, schedule_note, SAMPLER_LAW
from reference import cfg as ref
from reference import laws
from reference.ddim import ddim_timesteps
from reference.q_sampler import compute_alphas_cumprod
from reference.toy import ClassConditionalGaussians

# -- tolerances ----------------------------------------------------------------------------------

#: A guided ε is ε_u + w·(ε_c − ε_u): for |w| up to 15 its value can be far smaller than its
#: terms, so round-off is bounded relative to their size S = |ε_u| + |w|·(|ε_u| + |ε_c|)
#: (:func:`combine_size`), where the model's ε's are themselves ε = √n·(x − a·μ)/v (its terms,
#: √n·(|x| + a·|μ|)/v, enter S in their place: :func:`guided_size`). Any correct float32 order
#: of operations errs by a few units of round-off of S (u = 6e-8); measured over ~200 drawn
#: float32 cases each (tests/exercises/test_cfg_checks.py), torch.lerp, (1 − w)·ε_u + w·ε_c, a
#: split batch and float64 blocks stay below 1.5e-7·S. 1e-5·S leaves a 60x margin; float64
#: likewise (1e-12·S). Every catalogued mistake moves the result by a sizeable fraction of S.
GUIDANCE_TOLERANCE = Tolerance(
    rtol32=1e-5, atol32=1e-6, rtol64=1e-12, atol64=1e-14,
    why="relative to the size of ε_u + w·(ε_c − ε_u)'s terms: a few float32 round-offs of them, with a 60x margin",
)

#: A guided DDIM chain (η = 0, ≤ 20 steps): the reference runs in float64 on the float32
#: inputs' values (data variances ≥ 0.05, so the model's ε is well conditioned, but 1/√ᾱ_t
#: reaches ~10³ at the end of a short cosine schedule). Measured over ~700 drawn float32 cases
#: (four hypothesis seeds), the reference run in float32 stays below 1e-5·(1 + |expected|) and
#: the chain in float64 inside below 6e-7; 1e-3 leaves a 100x margin (tests/exercises/
#: test_cfg_checks.py asserts 50x on its own draw). float64 chains agree to round-off (1e-9
#: leaves > 1000x). The catalogued sampler mistakes move some entry by ≥ 1e-2 or change the calls.
CHAIN_TOLERANCE = Tolerance(
    rtol32=1e-3, atol32=1e-3, rtol64=1e-9, atol64=1e-9,
    why="a float32 guided DDIM chain of ≤ 20 steps: measured ≤ 1e-5 relative for correct samplers, 100x margin",
)

#: Matching a known mistake (a hint, never a grade): it must reproduce the values everywhere.
DIAGNOSIS_TOLERANCE = Tolerance(
    rtol32=1e-3, atol32=1e-4, rtol64=1e-7, atol64=1e-9,
    why="matching a known mistake on every input, float32 cases included",
)

# -- the conditional toy -------------------------------------------------------------------------

scales = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 7.5, 3.0]),
                   st.floats(-3, 15, allow_nan=False, allow_infinity=False, allow_subnormal=False))


def _toy(classes: int, data_shape: tuple, g: torch.Generator) -> ClassConditionalGaussians:
    """``classes`` Gaussians (means N(0, 1), variances log-uniform in [0.05, 2]) and a null label (the last)."""
    means = torch.randn((classes, *data_shape), generator=g, dtype=torch.float64)
    var = 10 ** (-1.3 + 1.6 * torch.rand((classes, *data_shape), generator=g, dtype=torch.float64))
    return ClassConditionalGaussians.with_null(torch.full((classes,), 1 / classes, dtype=torch.float64), means, var)


def _labels(case: dict, key: str, classes: int, g: torch.Generator) -> torch.Tensor:
    """Per-row labels: the class of each row for "cond"; the null label, or a negative prompt, for "uncond"."""
    B = case["shape"][0]
    labels = torch.randint(0, classes, (B,), generator=g)
    if key == "uncond":
        negative = torch.rand(B, generator=g) < case["negative"]
        labels = torch.where(negative, labels, torch.full_like(labels, classes))
    return labels


def _model(toy: ClassConditionalGaussians, ac: torch.Tensor, dtype: torch.dtype, ctx: Context, record: bool) -> dict:
    return ctx.model_spec("class_gaussian_eps", record=record, dtype=dtype, means=toy.means, vars=toy.vars,
                          alphas_cumprod=ac)


def _model_note(case: dict, classes: int) -> str:
    return (f"the optimal ε-model eps_model(x, t, cond) of {classes} class-conditional Gaussians over shape "
            f"{tuple(case['shape'][1:])} (label {classes}: the unconditional one); {case['schedule']} schedule, "
            f"T = {case['T']}")


def _schedule(case: dict, ctx: Context) -> tuple[torch.Tensor, torch.dtype, torch.dtype]:
    dtype = DTYPES[case["dtype"]]
    schedule_dtype = torch.float64 if case["schedule_dtype"] == "float64" else dtype
    ac = compute_alphas_cumprod(schedule_betas(case["schedule"], case["T"]))
    return ac.to(schedule_dtype).to(ctx.device), dtype, schedule_dtype


def _eps_size(toy_params: dict, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The size of the terms of the model's ε = √n·(x − a·μ)/v at each row's label (float64)."""
    ac = toy_params["alphas_cumprod"].to("cpu", torch.float64)
    a, n = ac[t.cpu()].sqrt(), 1 - ac[t.cpu()]
    shape = (x.shape[0], *([1] * (x.ndim - 1)))
    a, n = a.reshape(shape), n.reshape(shape)
    mean, var = toy_params["means"].double().cpu()[labels.cpu()], toy_params["vars"].double().cpu()[labels.cpu()]
    return n.sqrt() * (x.abs().cpu() + a * mean.abs()) / (a**2 * var + n)


# -- cfg_combine --------------------------------------------------------------------------------


@st.composite
def combine_cases(draw) -> dict:
    return {"shape": draw(data_shapes), "dtype": draw(st.sampled_from(["float32", "float64"])), "w": draw(scales),
            "seed": draw(st.integers(0, 2**16))}


COMBINE_EXAMPLES = tuple({"shape": (3, 2), "dtype": d, "w": w, "seed": 0}
                         for d in ("float64", "float32") for w in (0.0, 1.0, -1.0, 7.5))


def build_combine(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    return Inputs({"eps_uncond": gaussian(case["shape"], g, dtype, ctx), "eps_cond": gaussian(case["shape"], g, dtype, ctx),
                   "guidance_scale": case["w"]})


def combine_size(inputs: Inputs) -> torch.Tensor:
    a = inputs.arguments()
    u, c, w = a["eps_uncond"].abs(), a["eps_cond"].abs(), abs(a["guidance_scale"])
    return u + w * (u + c)


def _around_cond(eps_uncond, eps_cond, guidance_scale):
    return eps_cond + guidance_scale * (eps_cond - eps_uncond)


def _without_difference(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond + guidance_scale * eps_cond


def _swapped(eps_uncond, eps_cond, guidance_scale):
    return eps_cond + guidance_scale * (eps_uncond - eps_cond)


AROUND_COND_HINT = ("you guide around the conditional branch, ε_c + w·(ε_c − ε_u) = ε_u + (1 + w)·(ε_c − ε_u): that is "
                    "Ho & Salimans' (1 + w) convention; with diffusers' w (w = 1 is the conditional model) it is "
                    "ε_u + w·(ε_c − ε_u)")
COMBINE_DIAGNOSES = (
    Diagnosis(_around_cond, AROUND_COND_HINT),
    Diagnosis(_without_difference, "you add w·ε_c to ε_u; guidance adds w times the *difference* ε_c − ε_u"),
    Diagnosis(_swapped, "your ε_u and ε_c play each other's part: the result is ε_c + w·(ε_u − ε_c)"),
)

# -- guided_eps and composed_eps ----------------------------------------------------------------


@st.composite
def guided_cases(draw, composed: bool = False) -> dict:
    T = draw(horizons)
    shape = draw(data_shapes)
    k = draw(st.integers(1, 3)) if composed else 1
    weights = tuple(draw(st.lists(st.sampled_from([2.0, -1.0, 0.5, 7.5, 0.0, -3.0, 1.0]), min_size=k, max_size=k)))
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": shape,
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])),
            "t": tuple(draw(st.lists(st.integers(0, T - 1), min_size=shape[0], max_size=shape[0]))),
            "classes": draw(st.integers(2, 4)), "negative": draw(st.sampled_from([0.0, 0.5, 1.0])),
            "w": weights if composed else draw(scales), "seed": draw(st.integers(0, 2**16))}


def _guided_examples(composed: bool) -> tuple:
    w = ((2.0, -1.0), (7.5,), (1.0, 1.0, -3.0)) if composed else (0.0, 1.0, -1.0, 7.5)
    return tuple({"T": 1000, "schedule": "linear", "shape": (3, 2), "dtype": d, "schedule_dtype": "float64",
                  "t": (0, 500, 999), "classes": 3, "negative": 0.5, "w": v, "seed": 0}
                 for d in ("float64", "float32") for v in w)


def build_guided(case: dict, ctx: Context, composed: bool = False) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    toy = _toy(case["classes"], case["shape"][1:], g)
    xt = gaussian(case["shape"], g, dtype, ctx)
    t = torch.tensor(case["t"], dtype=torch.long, device=ctx.device)
    uncond = _labels(case, "uncond", case["classes"], g).to(ctx.device)
    args = {"eps_model": _model(toy, ac, dtype, ctx, record=True), "xt": xt, "t": t}
    notes = {"eps_model": _model_note(case, case["classes"])}
    if composed:
        conds = [_labels(case, "cond", case["classes"], g).to(ctx.device) for _ in case["w"]]
        args.update({"conds": conds, "weights": list(case["w"]), "uncond": uncond})
    else:
        args.update({"cond": _labels(case, "cond", case["classes"], g).to(ctx.device), "uncond": uncond,
                     "guidance_scale": case["w"]})
    notes["uncond"] = f"labels {uncond.tolist()} (label {case['classes']} is the null condition; others: negative prompts)"
    return Inputs(args, notes=notes)


def build_composed(case: dict, ctx: Context) -> Inputs:
    return build_guided(case, ctx, composed=True)


def _conditions(a: dict) -> tuple[list[torch.Tensor], list[float]]:
    """The (uncond, conditions...) blocks and the weight of each condition."""
    if "conds" in a:
        return [a["uncond"], *a["conds"]], [float(w) for w in a["weights"]]
    return [a["uncond"], a["cond"]], [float(a["guidance_scale"])]


def guided_size(inputs: Inputs) -> torch.Tensor:
    """(1 + 2·Σ|w_i|) · Σ over the blocks of the model ε's term sizes (see GUIDANCE_TOLERANCE)."""
    a = inputs.arguments()
    blocks, weights = _conditions(a)
    sizes = sum(_eps_size(a["eps_model"]["params"], a["xt"], a["t"], labels) for labels in blocks)
    return (1 + 2 * sum(abs(w) for w in weights)) * sizes


def _batched_call(inputs: Inputs) -> list:
    """One call of the model on (k + 1)·B rows: x repeated, t repeated, conditions [uncond; c_1; …; c_k]."""
    a = inputs.arguments()
    blocks, _ = _conditions(a)
    return [(torch.cat([a["t"].cpu()] * len(blocks)), len(blocks) * a["xt"].shape[0], torch.cat([b.cpu() for b in blocks]))]


def _batched_what(inputs: Inputs) -> str:
    a = inputs.arguments()
    k1, B = len(_conditions(a)[0]), a["xt"].shape[0]
    order = "[uncond; cond]" if k1 == 2 else "[uncond; c_1; …; c_k]"
    return (f"guidance makes ONE batched call of {k1 * B} rows on {order}: x and t repeated {k1} times block by block "
            f"(torch.cat([t] * {k1})), the conditions stacked with the unconditional block first, as in diffusers' "
            "pipelines")


#: One batched call, judged by the library's ModelCalls: not merged (two calls are not one), with
#: per-row timesteps (t repeated block by block) and the conditions row by row.
BATCHED_CALL = ModelCalls(_batched_call, merge=False, per_row=True, model="eps_model", what=_batched_what)


def _branch(eps_model, xt, t, cond, uncond, guidance_scale):
    """The model itself: its unconditional branch for w = 0, its conditional one for w = 1."""
    return eps_model(xt, t, uncond if guidance_scale == 0 else cond)


def _guided_wrong(combine):
    def wrong(eps_model, xt, t, cond, uncond, guidance_scale):
        return combine(eps_model(xt, t, uncond), eps_model(xt, t, cond), guidance_scale)
    return wrong


GUIDED_DIAGNOSES = (
    Diagnosis(_guided_wrong(_around_cond), AROUND_COND_HINT),
    Diagnosis(_guided_wrong(_swapped), "your halves are swapped: the first B rows of the output answer `uncond` (the "
                                       "batch is [uncond; cond]), so ε_u, ε_c = eps.chunk(2)"),
    Diagnosis(_guided_wrong(_without_difference), "you add w·ε_c to ε_u; guidance adds w·(ε_c − ε_u)"),
)


def _composed_without_difference(eps_model, xt, t, conds, weights, uncond):
    eps_u = eps_model(xt, t, uncond)
    return eps_u + sum(float(w) * eps_model(xt, t, c) for w, c in zip(weights, conds))


COMPOSED_DIAGNOSES = (
    Diagnosis(_composed_without_difference, "you add Σ w_i·ε_i to ε_u; each condition adds w_i·(ε_i − ε_u)"),
)

# -- rescale_guidance and dynamic_threshold -------------------------------------------------------


@st.composite
def spread_cases(draw, phi: bool) -> dict:
    B = draw(st.integers(1, 4))
    rest = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).filter(lambda r: torch.tensor(r).prod() >= 2))
    value = (draw(st.one_of(st.sampled_from([0.0, 1.0, 0.7]), st.floats(0, 1, allow_subnormal=False))) if phi else
             draw(st.one_of(st.sampled_from([0.995, 0.9, 0.5, 1.0, 0.0]), st.floats(0, 1, allow_subnormal=False))))
    return {"shape": (B, *rest), "dtype": draw(st.sampled_from(["float32", "float64"])), "p": value,
            "spreads": tuple(draw(st.lists(st.sampled_from([0.3, 1.0, 3.0, 20.0]), min_size=B, max_size=B))),
            "seed": draw(st.integers(0, 2**16))}


def _spread_examples(values: tuple) -> tuple:
    return tuple({"shape": (3, 4, 5), "dtype": d, "p": p, "spreads": (0.3, 3.0, 20.0), "seed": 0}
                 for d in ("float64", "float32") for p in values)


def _spread(case: dict, g: torch.Generator, ctx: Context) -> torch.Tensor:
    """N(0, 1) draws scaled per sample by ``case["spreads"]`` (some samples saturated, some not)."""
    s = torch.tensor(case["spreads"], dtype=torch.float64).reshape(-1, *([1] * (len(case["shape"]) - 1)))
    return (s * torch.randn(case["shape"], generator=g, dtype=torch.float64)).to(DTYPES[case["dtype"]]).to(ctx.device)


def build_rescale(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    return Inputs({"eps_cfg": _spread(case, g, ctx), "eps_cond": _spread(case, g, ctx), "phi": case["p"]})


def build_threshold(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    return Inputs({"x0": _spread(case, g, ctx)}, {"percentile": case["p"]})


def _rescaled(eps_cfg, eps_cond, phi, *, dims=None, inverted=False, swapped=False):
    dims = list(range(1, eps_cfg.ndim)) if dims is None else dims
    with warnings.catch_warnings():  # the std of one entry is NaN (the mistake then matches nothing): no warning
        warnings.simplefilter("ignore")
        std_c, std_g = eps_cond.std(dim=dims, keepdim=True), eps_cfg.std(dim=dims, keepdim=True)
    eps_r = eps_cfg * (std_g / std_c if inverted else std_c / std_g)
    return (1 - phi) * eps_r + phi * eps_cfg if swapped else phi * eps_r + (1 - phi) * eps_cfg


RESCALE_DIAGNOSES = (
    Diagnosis(lambda c, e, p: _rescaled(c, e, p, dims=list(range(c.ndim))),
              "your std is taken over the whole batch; Lin et al. rescale each sample by its own std (over the "
              "non-batch dims: dim=list(range(1, x.ndim)), keepdim=True)"),
    Diagnosis(lambda c, e, p: _rescaled(c, e, p, inverted=True), "the factor is std(ε_c)/std(ε_cfg): yours is inverted"),
    Diagnosis(lambda c, e, p: _rescaled(c, e, p, swapped=True),
              "φ weighs the rescaled ε: φ·ε_r + (1 − φ)·ε_cfg (φ = 0 leaves the guided ε alone)"),
    Diagnosis(lambda c, e, p: _rescaled(c, e, p, dims=[-1]),
              "your std runs over the last dimension only; it runs over every non-batch dimension"),
)


def _thresholded(x0, percentile=0.995, *, floor=True, per_sample=True, signed=False, divide=True):
    flat = x0.reshape(x0.shape[0], -1) if per_sample else x0.reshape(1, -1)
    s = torch.quantile(flat if signed else flat.abs(), percentile, dim=1)
    s = (s.clamp(min=1) if floor else s).reshape(-1, *([1] * (x0.ndim - 1)))
    out = torch.maximum(torch.minimum(x0, s), -s)
    return out / s if divide else out


THRESHOLD_DIAGNOSES = (
    Diagnosis(lambda x0, percentile=0.995: _thresholded(x0, percentile, floor=False),
              "without s = max(s, 1) a sample already inside [−1, 1] is stretched out to ±1; the floor makes "
              "thresholding leave it alone"),
    Diagnosis(lambda x0, percentile=0.995: _thresholded(x0, percentile, per_sample=False),
              "your s is one quantile of the whole batch; Imagen takes it per sample (over the non-batch dims)"),
    Diagnosis(lambda x0, percentile=0.995: _thresholded(x0, percentile, signed=True), "s is a quantile of |x₀|, not of x₀"),
    Diagnosis(lambda x0, percentile=0.995: _thresholded(x0, percentile, divide=False), "after clamping to [−s, s], divide by s"),
)

# -- cfg_pp_step -------------------------------------------------------------------------------------


@st.composite
def pp_cases(draw) -> dict:
    T = draw(horizons)
    t = draw(st.integers(0, T - 1))
    return {"T": T, "schedule": draw(st.sampled_from(["linear", "cosine"])), "shape": draw(data_shapes),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "t": t,
            "t_prev": draw(st.one_of(st.just(-1), st.integers(-1, t - 1))),
            "lam": draw(st.one_of(st.sampled_from([0.0, 1.0, 0.6]), st.floats(0, 2, allow_subnormal=False))),
            "seed": draw(st.integers(0, 2**16))}


PP_EXAMPLES = tuple({"T": 1000, "schedule": kind, "shape": (3, 2), "dtype": d, "schedule_dtype": "float64", "t": t,
                     "t_prev": p, "lam": lam, "seed": 0}
                    for kind in ("linear", "cosine") for d in ("float64", "float32")
                    for (t, p), lam in (((999, 979), 0.6), ((500, -1), 1.0), ((1, 0), 0.0), ((980, 960), 2.0)))


def build_pp(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    eps_u, eps_c, xt = (gaussian(case["shape"], g, dtype, ctx) for _ in range(3))
    return Inputs({"eps_uncond": eps_u, "eps_cond": eps_c, "t": case["t"], "t_prev": case["t_prev"], "xt": xt,
                   "alphas_cumprod": ac, "lam": case["lam"]},
                  notes={"alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)})


def _abar(ac: torch.Tensor, t: int) -> torch.Tensor:
    return ac[t].double() if t >= 0 else torch.ones((), dtype=torch.float64)


def pp_size(inputs: Inputs) -> torch.Tensor:
    """Σ|terms| of √(ᾱ_prev/ᾱ_t)·(x_t − √(1 − ᾱ_t)·ε_λ) + √(1 − ᾱ_prev)·ε_u, ε_λ by its own terms."""
    a = inputs.arguments()
    a_t, a_prev = _abar(a["alphas_cumprod"].cpu(), a["t"]), _abar(a["alphas_cumprod"].cpu(), a["t_prev"])
    u, c, x = (a[k].abs().cpu() for k in ("eps_uncond", "eps_cond", "xt"))
    lam_terms = u + abs(a["lam"]) * (u + c)
    return (a_prev / a_t).sqrt() * (x + (1 - a_t).sqrt() * lam_terms) + (1 - a_prev).sqrt() * u


def _pp_wrong(renoise_lam=False, x0_from_uncond=False, wrap=False):
    def wrong(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t_prev] if (wrap or t_prev >= 0) else torch.ones((), dtype=alphas_cumprod.dtype)
        eps_lam = ref.cfg_combine(eps_uncond, eps_cond, lam)
        x0 = (xt - (1 - a_t).sqrt() * (eps_uncond if x0_from_uncond else eps_lam)) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * (eps_lam if renoise_lam else eps_uncond)
    return wrong


PP_DIAGNOSES = (
    Diagnosis(_pp_wrong(renoise_lam=True), "you renoise along the guided ε_λ: that is plain guided DDIM. CFG++ takes "
                                           "x̂₀ from ε_λ but renoises along the unconditional ε_u"),
    Diagnosis(_pp_wrong(renoise_lam=True, x0_from_uncond=True),
              "your roles are swapped: x̂₀ comes from the guided ε_λ, the renoising direction is ε_u"),
    Diagnosis(_pp_wrong(wrap=True), "at t_prev = −1 you used alphas_cumprod[−1] = ᾱ_{T−1} ≈ 0; ᾱ_prev = 1 there"),
)

# -- cfg_sample: deterministic, from a given x_T -------------------------------------------------------


@st.composite
def sample_cases(draw) -> dict:
    T = draw(st.sampled_from([10, 50, 1000]))
    return {"T": T, "num_steps": draw(st.integers(1, min(T, 20))), "schedule": draw(st.sampled_from(["linear", "cosine"])),
            "shape": draw(data_shapes), "dtype": draw(st.sampled_from(["float32", "float64"])),
            "schedule_dtype": draw(st.sampled_from(["float64", "data"])), "classes": draw(st.integers(2, 4)),
            "negative": draw(st.sampled_from([0.0, 0.5])),
            "w": draw(st.one_of(st.sampled_from([0.0, 1.0, 3.0, 7.5, -1.0]), st.floats(-1, 8, allow_subnormal=False))),
            "seed": draw(st.integers(0, 2**16))}


SAMPLE_EXAMPLES = tuple({"T": 1000, "num_steps": n, "schedule": kind, "shape": (4, 2), "dtype": d,
                         "schedule_dtype": "float64", "classes": 3, "negative": 0.5, "w": w, "seed": 0}
                        for kind in ("linear", "cosine") for d in ("float64", "float32")
                        for n, w in ((10, 3.0), (1, 7.5), (20, 0.0)))


def build_sample(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    ac, dtype, schedule_dtype = _schedule(case, ctx)
    toy = _toy(case["classes"], case["shape"][1:], g)
    cond = _labels(case, "cond", case["classes"], g).to(ctx.device)
    uncond = _labels(case, "uncond", case["classes"], g).to(ctx.device)
    x_T = gaussian(case["shape"], g, dtype, ctx)
    return Inputs(
        {"eps_model": _model(toy, ac, dtype, ctx, record=True), "shape": tuple(case["shape"]), "cond": cond,
         "uncond": uncond, "guidance_scale": case["w"], "alphas_cumprod": ac, "num_steps": case["num_steps"]},
        {"x_T": x_T},
        notes={"eps_model": _model_note(case, case["classes"]),
               "alphas_cumprod": schedule_note(case["schedule"], case["T"], schedule_dtype)},
    )


def sample_scale(inputs: Inputs) -> torch.Tensor:
    return 1 + inputs.call_reference(ref.cfg_sample).abs()


def _walk(inputs: Inputs) -> list:
    a = inputs.arguments()
    B = a["x_T"].shape[0] if a.get("x_T") is not None else a["shape"][0]
    return [(t, 2 * B) for t in ddim_timesteps(a["alphas_cumprod"].shape[0], a["num_steps"]).tolist()]


SAMPLE_CALLS = ModelCalls(
    _walk, model="eps_model",
    what=lambda i: "cfg_sample calls guided_eps once per step, from the largest timestep of ddim_timesteps(T, "
                   "num_steps, 'leading') down: each step evaluates 2B rows ([uncond; cond]) at that timestep.")

SAMPLE_DIAGNOSES = (
    Diagnosis(lambda m, s, c, u, w, ac, n, g=None, x_T=None: ref.cfg_sample(m, s, u, c, w, ac, n, x_T=x_T),
              "your sampler guides towards `uncond` and away from `cond`: guided_eps(eps_model, x, t, cond, uncond, w)"),
    Diagnosis(lambda m, s, c, u, w, ac, n, g=None, x_T=None: ref.cfg_sample(m, s, c, u, w + 1, ac, n, x_T=x_T),
              AROUND_COND_HINT),
)

# -- cfg_sample: the generator and the exact law --------------------------------------------------------

REPRODUCIBLE = Reproducible("cfg_sample", other_seed=True)

GENERATOR_EXAMPLES = ({"T": 1000, "num_steps": 4, "classes": 3, "B": 4, "w": 3.0, "seed": 0},
                      {"T": 50, "num_steps": 1, "classes": 2, "B": 8, "w": 7.5, "seed": 0})


@st.composite
def generator_cases(draw) -> dict:
    return {"T": draw(st.sampled_from([50, 1000])), "num_steps": draw(st.integers(1, 8)),
            "classes": draw(st.integers(2, 3)), "B": draw(st.integers(2, 8)), "w": draw(st.sampled_from([0.0, 3.0, 7.5])),
            "seed": draw(st.integers(0, 2**16))}


def _build_generator(case: dict, ctx: Context) -> Inputs:
    """Data with 4 coordinates of variance ≥ 0.4: outputs depend on x_T enough that two seeds never coincide."""
    g = torch.Generator().manual_seed(case["seed"])
    ac = compute_alphas_cumprod(schedule_betas("linear", case["T"])).to(ctx.device)
    means = torch.randn((case["classes"], 4), generator=g, dtype=torch.float64)
    toy = ClassConditionalGaussians.with_null(torch.full((case["classes"],), 1 / case["classes"], dtype=torch.float64),
                                              means, torch.full_like(means, 0.4))
    cond = torch.randint(0, case["classes"], (case["B"],), generator=g).to(ctx.device)
    uncond = torch.full((case["B"],), case["classes"], dtype=torch.long, device=ctx.device)
    return Inputs({"eps_model": _model(toy, ac, torch.get_default_dtype(), ctx, record=False), "shape": (case["B"], 4),
                   "cond": cond, "uncond": uncond, "guidance_scale": case["w"], "alphas_cumprod": ac,
                   "num_steps": case["num_steps"]},
                  {"generator": ctx.generator_spec(seed=case["seed"])})


#: 16 coordinates with variances from 0.01 to 3 (small ones magnify a wrong mean), two classes
#: and the null label; 4096 samples per call, two calls (w = 3 against ∅; w = 2 with a
#: negative prompt, the other class, as uncond): 65,536 standardised residuals each.
LAW_BATCH = 4096
LAW_STEPS = 10


def _law_toy() -> ClassConditionalGaussians:
    g = torch.Generator().manual_seed(6)
    means = torch.stack([torch.linspace(-1.5, 1.5, 16, dtype=torch.float64), torch.randn(16, generator=g,
                                                                                       dtype=torch.float64)])
    var = 10 ** torch.linspace(-2.0, 0.5, 16, dtype=torch.float64)
    return ClassConditionalGaussians.with_null(torch.tensor([0.5, 0.5], dtype=torch.float64), means,
                                               torch.stack([var, var.flip(0)]))


def law_draw(ctx: Context) -> LawDraw:
    toy = _law_toy()
    ac = compute_alphas_cumprod(schedule_betas("linear", 1000))
    g = ctx.generator("cfg law labels")
    cond = torch.randint(0, 2, (LAW_BATCH,), generator=g)
    samples = []
    for i, (w, uncond) in enumerate(((3.0, torch.full_like(cond, 2)), (2.0, 1 - cond))):
        inputs = Inputs(
            {"eps_model": _model(toy, ac, torch.get_default_dtype(), ctx, record=False), "shape": (LAW_BATCH, 16),
             "cond": cond.to(ctx.device), "uncond": uncond.to(ctx.device), "guidance_scale": w,
             "alphas_cumprod": ac.to(ctx.device), "num_steps": LAW_STEPS},
            {"generator": ctx.generator_spec("cfg law", i)},
            notes={"eps_model": "the optimal ε-model of two class-conditional Gaussians over 16 coordinates (label 2: "
                                "the unconditional one)", "cond": "4096 random labels 0 or 1"},
        )
        samples.append(Sample(inputs, laws.cfg_sample_law(toy, ac, LAW_STEPS, cond, uncond, w),
                              label="w = 3" if i == 0 else "w = 2, negative prompt"))
    return LawDraw(samples, note="Each output was standardised by the exact law of guided DDIM (10 leading steps) from "
                                 "x_T ~ N(0, I) on class-conditional Gaussian data with the optimal ε-model.",
                   meta={"toy": toy, "ac": ac})


def _law_with(shift: float):
    def wrong(draw: LawDraw) -> list:
        a = [s.inputs.arguments() for s in draw.samples]
        return [laws.cfg_sample_law(draw.meta["toy"], draw.meta["ac"], LAW_STEPS, x["cond"].cpu(), x["uncond"].cpu(),
                                    x["guidance_scale"] + shift) for x in a]
    return wrong


# -- the exercise ----------------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="cfg",
    title="Classifier-free guidance, negative prompts and their fixes",
    functions=(
        ("cfg_combine", ("eps_uncond", "eps_cond", "guidance_scale")),
        ("guided_eps", ("eps_model", "xt", "t", "cond", "uncond", "guidance_scale")),
        ("composed_eps", ("eps_model", "xt", "t", "conds", "weights", "uncond")),
        ("rescale_guidance", ("eps_cfg", "eps_cond", "phi")),
        ("dynamic_threshold", ("x0", "percentile")),
        ("cfg_pp_step", ("eps_uncond", "eps_cond", "t", "t_prev", "xt", "alphas_cumprod", "lam")),
        ("cfg_sample", ("eps_model", "shape", "cond", "uncond", "guidance_scale", "alphas_cumprod", "num_steps",
                        "generator")),
    ),
    checks=(
        Agreement(function="cfg_combine", cases=combine_cases(), build=build_combine, examples=COMBINE_EXAMPLES,
                  reference=ref.cfg_combine, tolerance=GUIDANCE_TOLERANCE, scale=combine_size,
                  scale_what="the size of ε_u + w·(ε_c − ε_u)'s terms", diagnosis_tolerance=DIAGNOSIS_TOLERANCE,
                  dtype_from="eps_uncond", device_from="eps_uncond", points=2, dtype_points=1,
                  diagnoses=COMBINE_DIAGNOSES),
        Agreement(function="guided_eps", cases=guided_cases(), build=build_guided, examples=_guided_examples(False),
                  reference=ref.guided_eps, tolerance=GUIDANCE_TOLERANCE, scale=guided_size,
                  scale_what="the size of the guided ε's terms", diagnosis_tolerance=DIAGNOSIS_TOLERANCE,
                  dtype_from="xt", device_from="xt", points=2, dtype_points=1, diagnoses=GUIDED_DIAGNOSES,
                  max_examples=20),
        Agreement(function="guided_eps", cases=guided_cases().flatmap(lambda c: st.sampled_from([0.0, 1.0]).map(
                      lambda w: {**c, "w": w})), build=build_guided, reference=_branch, tolerance=GUIDANCE_TOLERANCE,
                  scale=guided_size, max_examples=10, points=1, diagnoses=GUIDED_DIAGNOSES,
                  what="with w = 0 it is the unconditional model, with w = 1 the conditional one"),
        Property(function="guided_eps", cases=guided_cases(), build=build_guided, examples=_guided_examples(False)[:4],
                 max_examples=10,
                 aspects=(BATCHED_CALL.aspect("one batched model call on [uncond; cond], t repeated", 2),)),
        Agreement(function="composed_eps", cases=guided_cases(composed=True), build=build_composed,
                  examples=_guided_examples(True), reference=ref.composed_eps, tolerance=GUIDANCE_TOLERANCE,
                  scale=guided_size, scale_what="the size of the composed ε's terms",
                  diagnosis_tolerance=DIAGNOSIS_TOLERANCE, dtype_from="xt", device_from="xt", points=2,
                  dtype_points=1, diagnoses=COMPOSED_DIAGNOSES, max_examples=20),
        Property(function="composed_eps", cases=guided_cases(composed=True), build=build_composed,
                 examples=_guided_examples(True), max_examples=10,
                 aspects=(BATCHED_CALL.aspect("one batched model call on [uncond; c_1; …; c_k]", 1),)),
        Agreement(function="rescale_guidance", cases=spread_cases(phi=True), build=build_rescale,
                  examples=_spread_examples((0.0, 1.0, 0.7)), reference=ref.rescale_guidance,
                  tolerance=DEFAULT_TOLERANCE, diagnosis_tolerance=DIAGNOSIS_TOLERANCE, dtype_from="eps_cfg",
                  device_from="eps_cfg", points=2, dtype_points=1, diagnoses=RESCALE_DIAGNOSES),
        Agreement(function="dynamic_threshold", cases=spread_cases(phi=False), build=build_threshold,
                  examples=_spread_examples((0.995, 0.5, 1.0)), reference=ref.dynamic_threshold,
                  tolerance=DEFAULT_TOLERANCE, diagnosis_tolerance=DIAGNOSIS_TOLERANCE, dtype_from="x0",
                  device_from="x0", points=2, dtype_points=1, diagnoses=THRESHOLD_DIAGNOSES),
        Agreement(function="cfg_pp_step", cases=pp_cases(), build=build_pp, examples=PP_EXAMPLES,
                  reference=ref.cfg_pp_step, tolerance=SCHEDULE_TOLERANCE, scale=pp_size,
                  scale_what="the size of the update's terms", diagnosis_tolerance=DIAGNOSIS_TOLERANCE,
                  dtype_from="xt", device_from="xt", points=2, dtype_points=1, diagnoses=PP_DIAGNOSES),
        Agreement(function="cfg_sample", cases=sample_cases(), build=build_sample, examples=SAMPLE_EXAMPLES,
                  max_examples=20, reference=ref.cfg_sample, tolerance=CHAIN_TOLERANCE, scale=sample_scale,
                  scale_what="1 + |expected|", diagnosis_tolerance=DIAGNOSIS_TOLERANCE, dtype_from="x_T",
                  device_from="x_T", points=3, dtype_points=1, what="with a given x_T it matches the reference",
                  diagnoses=SAMPLE_DIAGNOSES),
        Property(function="cfg_sample", cases=sample_cases(), build=build_sample, examples=SAMPLE_EXAMPLES[:3],
                 max_examples=8,
                 aspects=(SAMPLE_CALLS.aspect("calls the model once per step (2B rows), from the largest timestep"),)),
        Property(function="cfg_sample", cases=generator_cases(), build=REPRODUCIBLE.build(_build_generator),
                 examples=GENERATOR_EXAMPLES, max_examples=4, probe=seeded_runs,
                 aspects=(REPRODUCIBLE.aspect("without x_T, draws from `generator`: the same seed gives the same "
                                              "samples", 1),
                          output_aspect("without x_T, x_T is drawn in the default dtype on the generator's device", 1,
                                        dtype=lambda i: torch.get_default_dtype(), device=lambda i: i.kwargs[
                                            "generator"]["device"], items=REPRODUCIBLE.first))),
        Law(function="cfg_sample", name="with x_T drawn, the samples follow the exact law of guided DDIM",
            draw=law_draw, **SAMPLER_LAW, points=2,
            mistakes=(Diagnosis(_law_with(1.0), AROUND_COND_HINT),)),
    ),
)
