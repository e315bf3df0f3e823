"""dpm_solver: realistic bugs and correct alternatives."""

from __future__ import annotations

import numpy as np
import torch

from reference import dpm_solver as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _abar(alphas_cumprod, t):
    """ᾱ_t with ᾱ₋₁ = 1, in the schedule's dtype."""
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)


def _lam(a):
    return 0.5 * torch.log(a) - 0.5 * torch.log(1 - a)


def _c(v, x):
    return v.to(device=x.device, dtype=x.dtype)


def _t(t, x):
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


# -- bugs: dpm_lambda --------------------------------------------------------------------------------


def lambda_full_log_snr(alpha_cumprod):
    return torch.log(alpha_cumprod) - torch.log(1 - alpha_cumprod)  # log(ᾱ/(1 − ᾱ)): twice λ


def lambda_sign_flipped(alpha_cumprod):
    return 0.5 * torch.log(1 - alpha_cumprod) - 0.5 * torch.log(alpha_cumprod)  # log σ − log α


def lambda_float64(alpha_cumprod):
    return ref.dpm_lambda(alpha_cumprod.double())  # float64 left uncast


# -- bugs: dpm_solver_timesteps ----------------------------------------------------------------------


def timesteps_keep_last(T, num_steps):
    return torch.from_numpy(np.linspace(0, T - 1, num_steps + 1).round()[::-1].astype(np.int64).copy())  # 0 kept


def timesteps_not_reversed(T, num_steps):
    return torch.from_numpy(np.linspace(0, T - 1, num_steps + 1).round()[1:].astype(np.int64).copy())


def timesteps_ddim_linspace(T, num_steps):
    return torch.from_numpy(np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64).copy())


def timesteps_float(T, num_steps):
    return torch.from_numpy(np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1].copy())  # float64


# -- bugs: the steps ------------------------------------------------------------------------------------


def first_order_exp_plus_h(x0_pred, t, t_prev, xt, alphas_cumprod):
    a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    h = _lam(a_prev) - _lam(a)
    return _c(((1 - a_prev) / (1 - a)).sqrt(), xt) * xt - _c(a_prev.sqrt() * (torch.exp(h) - 1), xt) * x0_pred


def first_order_sigma_ratio_inverted(x0_pred, t, t_prev, xt, alphas_cumprod):
    a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    h = _lam(a_prev) - _lam(a)
    return _c(((1 - a) / (1 - a_prev)).sqrt(), xt) * xt - _c(a_prev.sqrt() * torch.expm1(-h), xt) * x0_pred


def first_order_alpha_t(x0_pred, t, t_prev, xt, alphas_cumprod):
    a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    h = _lam(a_prev) - _lam(a)
    return _c(((1 - a_prev) / (1 - a)).sqrt(), xt) * xt - _c(a.sqrt() * torch.expm1(-h), xt) * x0_pred


def first_order_full_log_snr(x0_pred, t, t_prev, xt, alphas_cumprod):
    a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    h = 2 * (_lam(a_prev) - _lam(a))  # λ as the full log-SNR
    return _c(((1 - a_prev) / (1 - a)).sqrt(), xt) * xt - _c(a_prev.sqrt() * torch.expm1(-h), xt) * x0_pred


def _two_m(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod, *, invert_r=False, half=0.5, swap=False):
    a, a_prev, a_last = (_abar(alphas_cumprod, s) for s in (t, t_prev, t_last))
    h = _lam(a_prev) - _lam(a)
    r = (_lam(a) - _lam(a_last)) / h
    r = 1 / r if invert_r else r
    d1 = ((x0_pred_last - x0_pred) if swap else (x0_pred - x0_pred_last)) / _c(r, xt)
    phi = a_prev.sqrt() * torch.expm1(-h)
    return _c(((1 - a_prev) / (1 - a)).sqrt(), xt) * xt - _c(phi, xt) * x0_pred - _c(half * phi, xt) * d1


def two_m_r_inverted(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod):
    return _two_m(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod, invert_r=True)


def two_m_without_half(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod):
    return _two_m(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod, half=1.0)


def two_m_difference_swapped(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod):
    return _two_m(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod, swap=True)


def two_m_returns_float64(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod):
    return ref.dpm_solver_2m_step(x0_pred.double(), x0_pred_last.double(), t, t_prev, t_last, xt.double(),
                                  alphas_cumprod.double())


# -- bugs: the sampler ------------------------------------------------------------------------------------


def _sampler(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None, *, second_order_first=False,
             second_order_last=False, x0_at_prev=False, all_first_order=False, global_rng=False, start_float64=False,
             start_uniform=False):
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        dtype = torch.float64 if start_float64 else torch.get_default_dtype()
        draw = torch.rand if start_uniform else torch.randn
        x_T = draw(shape, device=device, dtype=dtype) if global_rng else draw(
            shape, generator=generator, device=device, dtype=dtype)
    ts = ref.dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x, x0_last = x_T, torch.zeros_like(x_T)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a = alphas_cumprod[t if not x0_at_prev else max(t_prev, 0)]
        eps = eps_model(x, _t(t, x))
        x0 = (x - _c((1 - a).sqrt(), x) * eps) / _c(a.sqrt(), x)
        first = all_first_order or (i == 0 and not second_order_first) or (t_prev < 0 and not second_order_last)
        if first:
            x = ref.dpm_solver_first_order_step(x0, t, t_prev, x, alphas_cumprod)
        else:  # ts[i − 1] wraps to ts[−1] at i = 0, and x0_last starts at zeros
            x = ref.dpm_solver_2m_step(x0, x0_last, t, t_prev, ts[i - 1], x, alphas_cumprod)
        x0_last = x0
    return x


def _sampler_bug(**mistake):
    def sample(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None):
        return _sampler(eps_model, shape, alphas_cumprod, num_steps, generator, x_T, **mistake)

    return sample


def sample_model_at_prev_timestep(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None):
    """The model called with the target timestep t_prev (the loop index shifted by one)."""
    ts = ref.dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x, x0_last = x_T if x_T is not None else torch.randn(shape, generator=generator), None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a = alphas_cumprod[t]
        eps = eps_model(x, _t(max(t_prev, 0), x))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if i == 0 or t_prev < 0:
            x = ref.dpm_solver_first_order_step(x0, t, t_prev, x, alphas_cumprod)
        else:
            x = ref.dpm_solver_2m_step(x0, x0_last, t, t_prev, ts[i - 1], x, alphas_cumprod)
        x0_last = x0
    return x


BUGS = [
    Bug("λ as the full log-SNR", "dpm_lambda", lambda_full_log_snr, "log ᾱ − log(1 − ᾱ)"),
    Bug("λ with the wrong sign", "dpm_lambda", lambda_sign_flipped, "log σ − log α"),
    Bug("λ returned in float64", "dpm_lambda", lambda_float64, "float64 not cast back"),
    Bug("timesteps with the last entry kept", "dpm_solver_timesteps", timesteps_keep_last, "num_steps + 1 entries, 0 "
        "included"),
    Bug("timesteps not reversed", "dpm_solver_timesteps", timesteps_not_reversed, "ascending"),
    Bug("timesteps as DDIM's linspace", "dpm_solver_timesteps", timesteps_ddim_linspace, "linspace(0, T − 1, n)"),
    Bug("timesteps as floats", "dpm_solver_timesteps", timesteps_float, "np.round returns floats; not cast"),
    Bug("e^{h} for e^{−h}", "dpm_solver_first_order_step", first_order_exp_plus_h, "exp(h) − 1"),
    Bug("σ ratio inverted", "dpm_solver_first_order_step", first_order_sigma_ratio_inverted, "σ_t/σ_prev"),
    Bug("α_t for α_prev", "dpm_solver_first_order_step", first_order_alpha_t, "−α_t(e^{−h} − 1)·x̂₀"),
    Bug("h from the full log-SNR", "dpm_solver_first_order_step", first_order_full_log_snr, "h doubled"),
    Bug("r inverted", "dpm_solver_2m_step", two_m_r_inverted, "D₁ = (x̂₀ − x̂₀_last)·r"),
    Bug("D₁ without the ½", "dpm_solver_2m_step", two_m_without_half, "−α_prev(e^{−h} − 1)·D₁"),
    Bug("D₁ difference swapped", "dpm_solver_2m_step", two_m_difference_swapped, "(x̂₀_last − x̂₀)/r"),
    Bug("2M step returns float64", "dpm_solver_2m_step", two_m_returns_float64, "float64 inside, not cast back"),
    Bug("a second-order first step", "dpm_solver_sample", _sampler_bug(second_order_first=True),
        "2M at the first step with x̂₀_last = 0 and t_last = ts[−1]"),
    Bug("no first-order last step", "dpm_solver_sample", _sampler_bug(second_order_last=True),
        "2M to σ = 0 (h = ∞)"),
    Bug("x̂₀ from the wrong timestep", "dpm_solver_sample", _sampler_bug(x0_at_prev=True), "ᾱ_{t_prev} in x̂₀"),
    Bug("every step first order (DDIM)", "dpm_solver_sample", _sampler_bug(all_first_order=True), "no 2M step"),
    Bug("model called at t_prev", "dpm_solver_sample", sample_model_at_prev_timestep, "ε_θ(x, t_prev)"),
    Bug("x_T from the global generator", "dpm_solver_sample", _sampler_bug(global_rng=True), "torch.randn(shape)"),
    Bug("x_T drawn in float64", "dpm_solver_sample", _sampler_bug(start_float64=True), "dtype=torch.float64"),
    Bug("x_T uniform", "dpm_solver_sample", _sampler_bug(start_uniform=True), "torch.rand for torch.randn"),
]

# -- correct alternatives ---------------------------------------------------------------------------------


def lambda_log_ratio(alpha_cumprod):
    return torch.log(alpha_cumprod / (1 - alpha_cumprod)) / 2


def timesteps_numpy(T, num_steps):
    return torch.from_numpy(np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1].copy()).long()


def first_order_in_eps(x0_pred, t, t_prev, xt, alphas_cumprod):
    """DDIM's form: ε = (x_t − α_t x̂₀)/σ_t, x_prev = α_prev x̂₀ + σ_prev ε (the same algebra)."""
    a, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    eps = (xt - _c(a.sqrt(), xt) * x0_pred) / _c((1 - a).sqrt(), xt)
    return _c(a_prev.sqrt(), xt) * x0_pred + _c((1 - a_prev).sqrt(), xt) * eps


def first_order_exp_float64(x0_pred, t, t_prev, xt, alphas_cumprod):
    """float64 inside, exp(−h) − 1 without expm1, cast back."""
    ac = alphas_cumprod.double()
    a, a_prev = _abar(ac, t), _abar(ac, t_prev)
    h = _lam(a_prev) - _lam(a)
    out = ((1 - a_prev) / (1 - a)).sqrt() * xt.double() - a_prev.sqrt() * (torch.exp(-h) - 1) * x0_pred.double()
    return out.to(xt.dtype)


def two_m_float64_expm1(x0_pred, x0_pred_last, t, t_prev, t_last, xt, alphas_cumprod):
    """float64 inside, h_last and h named as in the paper: D₀ + (h/(2h_last))(D₀ − D₋₁)."""
    ac = alphas_cumprod.double()
    lam_t, lam_prev, lam_last = (_lam(_abar(ac, s)) for s in (t, t_prev, t_last))
    h, h_last = lam_prev - lam_t, lam_t - lam_last
    d = x0_pred.double() + (h / (2 * h_last)) * (x0_pred.double() - x0_pred_last.double())
    a, a_prev = _abar(ac, t), _abar(ac, t_prev)
    out = ((1 - a_prev) / (1 - a)).sqrt() * xt.double() + a_prev.sqrt() * (-torch.expm1(-h)) * d
    return out.to(xt.dtype)


def sample_with_history(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None):
    """A list of past predictions and a while loop; x̂₀ from ε through the curriculum's λ functions."""
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    ts = ref.dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist() + [-1]
    x, history, i = x_T, [], 0
    while i < num_steps:
        t, t_prev = ts[i], ts[i + 1]
        a = alphas_cumprod[t]
        history.append((x - _c((1 - a).sqrt(), x) * eps_model(x, _t(t, x))) / _c(a.sqrt(), x))
        if len(history) == 1 or t_prev < 0:
            x = ref.dpm_solver_first_order_step(history[-1], t, t_prev, x, alphas_cumprod)
        else:
            x = ref.dpm_solver_2m_step(history[-1], history[-2], t, t_prev, ts[i - 1], x, alphas_cumprod)
        i += 1
    return x


def sample_per_sample_loop(eps_model, shape, alphas_cumprod, num_steps, generator=None, x_T=None):
    """The model evaluated one sample at a time at each timestep (any batching is accepted)."""
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    ts = ref.dpm_solver_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x, x0_last = x_T, None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = torch.cat([eps_model(x[b:b + 1], _t(t, x[b:b + 1])) for b in range(x.shape[0])])
        a = alphas_cumprod[t]
        x0 = (x - _c((1 - a).sqrt(), x) * eps) / _c(a.sqrt(), x)
        x = (ref.dpm_solver_first_order_step(x0, t, t_prev, x, alphas_cumprod) if i == 0 or t_prev < 0
             else ref.dpm_solver_2m_step(x0, x0_last, t, t_prev, ts[i - 1], x, alphas_cumprod))
        x0_last = x0
    return x


ALTERNATIVES = [
    Alternative("λ as log(ᾱ/(1 − ᾱ))/2", "dpm_lambda", lambda_log_ratio, "one logarithm"),
    Alternative("timesteps straight from numpy", "dpm_solver_timesteps", timesteps_numpy, "diffusers' own line"),
    Alternative("first-order step in terms of ε", "dpm_solver_first_order_step", first_order_in_eps,
                "α_prev x̂₀ + σ_prev ε"),
    Alternative("first-order step in float64 with exp", "dpm_solver_first_order_step", first_order_exp_float64,
                "float64 inside, exp(−h) − 1"),
    Alternative("2M with h_last, float64, expm1", "dpm_solver_2m_step", two_m_float64_expm1,
                "D₀ + h/(2h_last)·(D₀ − D₋₁)"),
    Alternative("sampler with a history list", "dpm_solver_sample", sample_with_history, "while loop, list"),
    Alternative("sampler evaluating one sample at a time", "dpm_solver_sample", sample_per_sample_loop,
                "a loop over the batch"),
]
