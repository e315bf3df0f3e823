"""parametrization: realistic bugs and correct alternatives."""

from __future__ import annotations

import torch

from reference import parametrization as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__ if name != "PARAMETRIZATIONS"}


def _at(coefficients, t, x):
    """coefficients[t] as (B, 1, …, 1) in x's dtype."""
    return coefficients[t].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# -- bugs ------------------------------------------------------------------------------------


def x0_from_eps_alpha_bar(xt, t, eps, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (xt - (1 - ab) * eps) / ab  # ᾱ where √ᾱ belongs


def x0_from_eps_plus(xt, t, eps, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (xt + (1 - ab).sqrt() * eps) / ab.sqrt()


def x0_from_eps_multiplies(xt, t, eps, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return ab.sqrt() * xt - (1 - ab).sqrt() * eps  # the v-formula's rotation, not the inverse


def x0_from_eps_off_by_one(xt, t, eps, alphas_cumprod):
    ab = _at(alphas_cumprod, t - 1, xt)  # t = 0 wraps to ᾱ_{T−1}
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def x0_from_eps_float64(xt, t, eps, alphas_cumprod):
    ab = alphas_cumprod[t].reshape(-1, *([1] * (xt.ndim - 1)))  # not cast: promotes float32 to float64
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0_variance(xt, t, x0, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (xt - ab.sqrt() * x0) / (1 - ab)  # divides by the variance


def eps_from_x0_unscaled_x0(xt, t, x0, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (xt - x0) / (1 - ab).sqrt()


def velocity_negated(x0, eps, t, alphas_cumprod):
    ab = _at(alphas_cumprod, t, x0)
    return (1 - ab).sqrt() * x0 - ab.sqrt() * eps


def velocity_swapped(x0, eps, t, alphas_cumprod):
    ab = _at(alphas_cumprod, t, x0)
    return (1 - ab).sqrt() * eps - ab.sqrt() * x0


def velocity_plus(x0, eps, t, alphas_cumprod):
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * eps + (1 - ab).sqrt() * x0


def x0_from_v_sign(xt, t, v, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return ab.sqrt() * xt + (1 - ab).sqrt() * v


def x0_from_v_swapped(xt, t, v, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (1 - ab).sqrt() * xt - ab.sqrt() * v


def eps_from_v_sign(xt, t, v, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (1 - ab).sqrt() * xt - ab.sqrt() * v


def eps_from_v_no_sqrt(xt, t, v, alphas_cumprod):
    ab = _at(alphas_cumprod, t, xt)
    return (1 - ab) * xt + ab * v


def score_over_variance(eps, t, alphas_cumprod):
    return -eps / _at(1 - alphas_cumprod, t, eps)


def score_positive(eps, t, alphas_cumprod):
    return eps / _at(1 - alphas_cumprod, t, eps).sqrt()


def score_over_sqrt_alpha_bar(eps, t, alphas_cumprod):
    return -eps / _at(alphas_cumprod, t, eps).sqrt()  # σ confused with √ᾱ


def snr_inverted(t, alphas_cumprod):
    ab = alphas_cumprod[t]
    return (1 - ab) / ab


def snr_std_ratio(t, alphas_cumprod):
    ab = alphas_cumprod[t]
    return ab.sqrt() / (1 - ab).sqrt()


def snr_float32(t, alphas_cumprod):
    ab = alphas_cumprod[t].float()  # "SNRs are small numbers": float32 always
    return ab / (1 - ab)


def target_swapped(x0, noise, t, alphas_cumprod, parametrization):
    if parametrization == "eps":
        return x0
    if parametrization == "x0":
        return noise
    if parametrization == "v":
        return ref.velocity(x0, noise, t, alphas_cumprod)
    raise ValueError(parametrization)


def target_v_negated(x0, noise, t, alphas_cumprod, parametrization):
    if parametrization == "v":
        return -ref.velocity(x0, noise, t, alphas_cumprod)
    return ref.training_target(x0, noise, t, alphas_cumprod, parametrization)


def target_default_eps(x0, noise, t, alphas_cumprod, parametrization):
    if parametrization == "x0":
        return x0
    if parametrization == "v":
        return ref.velocity(x0, noise, t, alphas_cumprod)
    return noise  # everything else falls through to ε


def target_key_error(x0, noise, t, alphas_cumprod, parametrization):
    targets = {"eps": lambda: noise, "x0": lambda: x0, "v": lambda: ref.velocity(x0, noise, t, alphas_cumprod)}
    return targets[parametrization]()  # an unknown name raises KeyError


def weight_snr_for_x0(t, alphas_cumprod, parametrization):
    ab = alphas_cumprod[t]
    return {"eps": torch.ones_like(ab), "x0": ab / (1 - ab), "v": 1 / ab}[parametrization]


def weight_v_without_one(t, alphas_cumprod, parametrization):
    ab = alphas_cumprod[t]
    return {"eps": torch.ones_like(ab), "x0": (1 - ab) / ab, "v": (1 - ab) / ab}[parametrization]


def weight_v_snr_plus_one(t, alphas_cumprod, parametrization):
    ab = alphas_cumprod[t]
    return {"eps": torch.ones_like(ab), "x0": (1 - ab) / ab, "v": 1 + ab / (1 - ab)}[parametrization]


def weight_scalar_for_eps(t, alphas_cumprod, parametrization):
    ab = alphas_cumprod[t]
    return {"eps": torch.tensor(1.0, dtype=ab.dtype), "x0": (1 - ab) / ab, "v": 1 / ab}[parametrization]


def weight_std_ratio(t, alphas_cumprod, parametrization):
    ab = alphas_cumprod[t]
    return {"eps": torch.ones_like(ab), "x0": ((1 - ab) / ab).sqrt(), "v": 1 / ab.sqrt()}[parametrization]


BUGS = [
    Bug("x̂0 with ᾱ instead of √ᾱ", "predict_x0_from_eps", x0_from_eps_alpha_bar, "(x_t − (1 − ᾱ)ε)/ᾱ"),
    Bug("x̂0 adding the noise", "predict_x0_from_eps", x0_from_eps_plus, "(x_t + σε)/√ᾱ"),
    Bug("x̂0 multiplying by √ᾱ", "predict_x0_from_eps", x0_from_eps_multiplies, "√ᾱ·x_t − σ·ε"),
    Bug("x̂0 off by one timestep", "predict_x0_from_eps", x0_from_eps_off_by_one, "alphas_cumprod[t − 1]"),
    Bug("x̂0 returned in float64", "predict_x0_from_eps", x0_from_eps_float64, "the float64 schedule not cast"),
    Bug("ε̂ divided by the variance", "predict_eps_from_x0", eps_from_x0_variance, "(x_t − √ᾱ x0)/(1 − ᾱ)"),
    Bug("ε̂ without scaling x0", "predict_eps_from_x0", eps_from_x0_unscaled_x0, "(x_t − x0)/σ"),
    Bug("velocity with the sign reversed", "velocity", velocity_negated, "σ·x0 − √ᾱ·ε"),
    Bug("velocity with swapped coefficients", "velocity", velocity_swapped, "σ·ε − √ᾱ·x0"),
    Bug("velocity adding x0", "velocity", velocity_plus, "√ᾱ·ε + σ·x0"),
    Bug("x̂0 from v with the wrong sign", "predict_x0_from_v", x0_from_v_sign, "√ᾱ·x_t + σ·v"),
    Bug("x̂0 from v with swapped coefficients", "predict_x0_from_v", x0_from_v_swapped, "σ·x_t − √ᾱ·v"),
    Bug("ε̂ from v with the wrong sign", "predict_eps_from_v", eps_from_v_sign, "σ·x_t − √ᾱ·v"),
    Bug("ε̂ from v without square roots", "predict_eps_from_v", eps_from_v_no_sqrt, "(1 − ᾱ)·x_t + ᾱ·v"),
    Bug("score over the variance", "score_from_eps", score_over_variance, "−ε/(1 − ᾱ)"),
    Bug("score with the wrong sign", "score_from_eps", score_positive, "+ε/σ"),
    Bug("score over √ᾱ", "score_from_eps", score_over_sqrt_alpha_bar, "−ε/√ᾱ"),
    Bug("SNR inverted", "snr", snr_inverted, "(1 − ᾱ)/ᾱ"),
    Bug("SNR of standard deviations", "snr", snr_std_ratio, "√ᾱ/√(1 − ᾱ)"),
    Bug("SNR in float32", "snr", snr_float32, "cast to float32 whatever the schedule"),
    Bug("targets of ε and x0 swapped", "training_target", target_swapped, "\"eps\" returns x0"),
    Bug("v target negated", "training_target", target_v_negated, "−v"),
    Bug("unknown names fall back to ε", "training_target", target_default_eps, "no ValueError"),
    Bug("unknown names raise KeyError", "training_target", target_key_error, "a dict lookup"),
    Bug("x0 weight is SNR instead of 1/SNR", "mse_weight", weight_snr_for_x0, "ᾱ/(1 − ᾱ)"),
    Bug("v weight without the 1", "mse_weight", weight_v_without_one, "1/SNR for \"v\""),
    Bug("v weight is 1 + SNR", "mse_weight", weight_v_snr_plus_one, "1 + ᾱ/(1 − ᾱ)"),
    Bug("eps weight as a scalar", "mse_weight", weight_scalar_for_eps, "shape () instead of (B,)"),
    Bug("weights of standard deviations", "mse_weight", weight_std_ratio, "√(1/SNR) and 1/√ᾱ"),
]

# -- correct alternatives ----------------------------------------------------------------------


def x0_from_eps_improved_diffusion(xt, t, eps, alphas_cumprod):
    """improved-diffusion's _predict_xstart_from_eps: √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε."""
    sqrt_recip = torch.sqrt(1.0 / alphas_cumprod)
    sqrt_recipm1 = torch.sqrt(1.0 / alphas_cumprod - 1)
    return _at(sqrt_recip, t, xt) * xt - _at(sqrt_recipm1, t, xt) * eps


def x0_from_eps_cast_first(xt, t, eps, alphas_cumprod):
    """Casts ᾱ to the data's dtype before any arithmetic."""
    ab = alphas_cumprod.to(xt.dtype)[t].view(-1, *([1] * (xt.ndim - 1)))
    return (xt - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)


def eps_from_x0_improved_diffusion(xt, t, x0, alphas_cumprod):
    """improved-diffusion's _predict_eps_from_xstart: (√(1/ᾱ)·x_t − x0)/√(1/ᾱ − 1)."""
    sqrt_recip = torch.sqrt(1.0 / alphas_cumprod)
    sqrt_recipm1 = torch.sqrt(1.0 / alphas_cumprod - 1)
    return (_at(sqrt_recip, t, xt) * xt - x0) / _at(sqrt_recipm1, t, xt)


def eps_from_x0_loop(xt, t, x0, alphas_cumprod):
    rows = []
    for i in range(xt.shape[0]):
        ab = alphas_cumprod[t[i]].to(xt.dtype)
        rows.append((xt[i] - ab.sqrt() * x0[i]) / (1 - ab).sqrt())
    return torch.stack(rows)


def velocity_diffusers(x0, eps, t, alphas_cumprod):
    """diffusers' DDPMScheduler.get_velocity: ᾱ cast to the data's dtype, then ** 0.5."""
    ab = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    sqrt_alpha_prod = ab[t] ** 0.5
    sqrt_one_minus_alpha_prod = (1 - ab[t]) ** 0.5
    while len(sqrt_alpha_prod.shape) < len(x0.shape):
        sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)
    return sqrt_alpha_prod * eps - sqrt_one_minus_alpha_prod * x0


def velocity_angle(x0, eps, t, alphas_cumprod):
    """v = cos φ·ε − sin φ·x0 with φ = arctan(σ/√ᾱ), in float64 then cast."""
    phi = torch.atan2((1 - alphas_cumprod).sqrt(), alphas_cumprod.sqrt())
    c, s = _at(phi.cos(), t, x0), _at(phi.sin(), t, x0)
    return c * eps - s * x0


def x0_from_v_float64(xt, t, v, alphas_cumprod):
    ab = alphas_cumprod.double()[t].reshape(-1, *([1] * (xt.ndim - 1)))
    return (ab.sqrt() * xt.double() - (1 - ab).sqrt() * v.double()).to(xt.dtype)


def x0_from_v_via_eps(xt, t, v, alphas_cumprod):
    """ε̂ from v, then x̂0 = (x_t − σ ε̂)/√ᾱ: the same value by another road (ill-conditioned only in round-off)."""
    ab = alphas_cumprod.double()[t].reshape(-1, *([1] * (xt.ndim - 1)))
    eps = (1 - ab).sqrt() * xt.double() + ab.sqrt() * v.double()
    return ((xt.double() - (1 - ab).sqrt() * eps) / ab.sqrt()).to(xt.dtype)


def x0_from_v_through_eps(xt, t, v, alphas_cumprod):
    """The curriculum's own functions composed: predict_x0_from_eps(x_t, predict_eps_from_v(x_t, v)), in float32."""
    return ref.predict_x0_from_eps(xt, t, ref.predict_eps_from_v(xt, t, v, alphas_cumprod), alphas_cumprod)


def x0_from_v_through_eps_cast_first(xt, t, v, alphas_cumprod):
    """ε̂ = σ·x_t + a·v, then x̂0 = (x_t − σ·ε̂)/a, with ᾱ cast to the data's dtype first."""
    ab = alphas_cumprod.to(xt.dtype)[t].view(-1, *([1] * (xt.ndim - 1)))
    eps = (1 - ab).sqrt() * xt + ab.sqrt() * v
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_v_through_x0(xt, t, v, alphas_cumprod):
    """predict_eps_from_x0(x_t, predict_x0_from_v(x_t, v)), in the data's dtype."""
    return ref.predict_eps_from_x0(xt, t, ref.predict_x0_from_v(xt, t, v, alphas_cumprod), alphas_cumprod)


def eps_from_v_through_x0_cast_first(xt, t, v, alphas_cumprod):
    """x̂0 = a·x_t − σ·v, then ε̂ = (x_t − a·x̂0)/σ, with ᾱ cast to the data's dtype first."""
    ab = alphas_cumprod.to(xt.dtype)[t].view(-1, *([1] * (xt.ndim - 1)))
    x0 = ab.sqrt() * xt - (1 - ab).sqrt() * v
    return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()


def eps_from_v_cast_first(xt, t, v, alphas_cumprod):
    ab = alphas_cumprod.to(xt.dtype)[t].view(-1, *([1] * (xt.ndim - 1)))
    return (1 - ab).sqrt() * xt + ab.sqrt() * v


def score_float64(eps, t, alphas_cumprod):
    sigma = (1 - alphas_cumprod.double())[t].sqrt().reshape(-1, *([1] * (eps.ndim - 1)))
    return (-eps.double() / sigma).to(eps.dtype)


def score_rsqrt(eps, t, alphas_cumprod):
    return -eps * _at(torch.rsqrt(1 - alphas_cumprod), t, eps)


def snr_log_space(t, alphas_cumprod):
    ab = alphas_cumprod[t]
    return torch.exp(torch.log(ab) - torch.log1p(-ab))


def snr_reciprocal(t, alphas_cumprod):
    return 1 / (1 / alphas_cumprod[t] - 1)


def target_dispatch(x0, noise, t, alphas_cumprod, parametrization):
    """A dict of lambdas; ValueError with the accepted names; the noise cast and cloned."""
    targets = {"eps": lambda: noise.to(x0.dtype).clone(), "x0": lambda: x0.clone(),
               "v": lambda: ref.velocity(x0, noise, t, alphas_cumprod)}
    if parametrization not in targets:
        raise ValueError(f"parametrization must be one of {sorted(targets)}, not {parametrization!r}")
    return targets[parametrization]()


def target_match(x0, noise, t, alphas_cumprod, parametrization):
    match parametrization:
        case "eps":
            return noise
        case "x0":
            return x0
        case "v":
            ab = _at(alphas_cumprod, t, x0)
            return ab.sqrt() * noise - (1 - ab).sqrt() * x0
        case _:
            raise ValueError(parametrization)


def weight_from_snr(t, alphas_cumprod, parametrization):
    """Written with the SNR: 1, 1/SNR, 1 + 1/SNR."""
    s = ref.snr(t, alphas_cumprod)
    if parametrization == "eps":
        return torch.ones_like(s)
    if parametrization == "x0":
        return 1 / s
    if parametrization == "v":
        return 1 + 1 / s
    raise ValueError(parametrization)


def weight_measured_identity(t, alphas_cumprod, parametrization):
    """σ²/ᾱ and 1/ᾱ gathered from precomputed (T,) tables."""
    tables = {"eps": torch.ones_like(alphas_cumprod), "x0": (1 - alphas_cumprod) / alphas_cumprod,
              "v": 1 / alphas_cumprod}
    return tables[parametrization][t]


ALTERNATIVES = [
    Alternative("x̂0 as improved-diffusion writes it", "predict_x0_from_eps", x0_from_eps_improved_diffusion,
                "√(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε"),
    Alternative("x̂0 casting the schedule first", "predict_x0_from_eps", x0_from_eps_cast_first, "float32 arithmetic"),
    Alternative("ε̂ as improved-diffusion writes it", "predict_eps_from_x0", eps_from_x0_improved_diffusion,
                "(√(1/ᾱ)·x_t − x0)/√(1/ᾱ − 1)"),
    Alternative("ε̂ as a loop", "predict_eps_from_x0", eps_from_x0_loop, "one row at a time"),
    Alternative("velocity as diffusers writes it", "velocity", velocity_diffusers, "get_velocity"),
    Alternative("velocity from the angle φ", "velocity", velocity_angle, "cos φ·ε − sin φ·x0"),
    Alternative("x̂0 from v in float64", "predict_x0_from_v", x0_from_v_float64, "upcast, compute, cast back"),
    Alternative("x̂0 from v through ε̂", "predict_x0_from_v", x0_from_v_via_eps, "another road, in float64"),
    Alternative("x̂0 from v through ε̂ in float32", "predict_x0_from_v", x0_from_v_through_eps,
                "predict_x0_from_eps(x_t, predict_eps_from_v(x_t, v)): round-off of 4e4·|x_t|·u at t = T − 1 (cosine)"),
    Alternative("x̂0 from v through ε̂, schedule cast first", "predict_x0_from_v", x0_from_v_through_eps_cast_first,
                "the same route in float32 arithmetic"),
    Alternative("ε̂ from v casting the schedule first", "predict_eps_from_v", eps_from_v_cast_first, "float32 arithmetic"),
    Alternative("ε̂ from v through x̂0", "predict_eps_from_v", eps_from_v_through_x0,
                "predict_eps_from_x0(x_t, predict_x0_from_v(x_t, v)): amplified by a/σ near t = 0"),
    Alternative("ε̂ from v through x̂0, schedule cast first", "predict_eps_from_v", eps_from_v_through_x0_cast_first,
                "the same route in float32 arithmetic"),
    Alternative("score in float64", "score_from_eps", score_float64, "upcast, compute, cast back"),
    Alternative("score with rsqrt", "score_from_eps", score_rsqrt, "−ε·rsqrt(1 − ᾱ)"),
    Alternative("SNR in log space", "snr", snr_log_space, "exp(log ᾱ − log1p(−ᾱ))"),
    Alternative("SNR as a reciprocal", "snr", snr_reciprocal, "1/(1/ᾱ − 1)"),
    Alternative("training target by dispatch", "training_target", target_dispatch, "a dict of lambdas"),
    Alternative("training target by match", "training_target", target_match, "match / case"),
    Alternative("weights from the SNR", "mse_weight", weight_from_snr, "1, 1/SNR, 1 + 1/SNR"),
    Alternative("weights from tables", "mse_weight", weight_measured_identity, "(T,) tables gathered at t"),
]
