"""ddim: realistic bugs and correct alternatives."""

from __future__ import annotations

import numpy as np
import torch

from reference import ddim as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _abar(alphas_cumprod, t):
    """ᾱ_t with ᾱ₋₁ = 1, in the schedule's dtype."""
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)


def _step(eps, xt, a_t, a_prev, sigma, z):
    """x_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε + σ·z with coefficients cast to xt's dtype."""
    c = lambda v: torch.as_tensor(v, dtype=torch.float64).to(device=xt.device, dtype=xt.dtype)  # noqa: E731
    x0_hat = (xt - c((1 - a_t) ** 0.5) * eps) / c(a_t**0.5)
    out = c(a_prev**0.5) * x0_hat + c(max(float(1 - a_prev - sigma**2), 0.0) ** 0.5) * eps
    return out + c(sigma) * z if z is not None else out


def _t(t, x):
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _start(shape, generator):
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())


# -- bugs: ddim_timesteps --------------------------------------------------------------------------


def timesteps_leading_offset(T, num_steps, spacing="leading"):
    if spacing == "leading":
        return (torch.arange(num_steps) * (T // num_steps) + 1).flip(0)  # diffusers' steps_offset = 1
    return ref.ddim_timesteps(T, num_steps, spacing)


def timesteps_trailing_no_minus_one(T, num_steps, spacing="leading"):
    if spacing == "trailing":
        return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64))
    return ref.ddim_timesteps(T, num_steps, spacing)


def timesteps_trailing_overshoot(T, num_steps, spacing="leading"):
    if spacing == "trailing":  # diffusers' formula, not cut to num_steps: a spurious −1 for e.g. T = 17, 7 steps
        return torch.from_numpy((np.round(np.arange(T, 0, -T / num_steps)) - 1).astype(np.int64))
    return ref.ddim_timesteps(T, num_steps, spacing)


def timesteps_linspace_to_T(T, num_steps, spacing="leading"):
    if spacing == "linspace":
        return torch.from_numpy(np.linspace(0, T, num_steps).round().astype(np.int64)[::-1].copy())
    return ref.ddim_timesteps(T, num_steps, spacing)


def timesteps_ascending(T, num_steps, spacing="leading"):
    return ref.ddim_timesteps(T, num_steps, spacing).flip(0)  # forgot to reverse


def timesteps_arange_step(T, num_steps, spacing="leading"):
    if spacing == "leading":
        return torch.arange(0, T, T // num_steps).flip(0)  # num_steps + 1 entries when num_steps ∤ T
    return ref.ddim_timesteps(T, num_steps, spacing)


def timesteps_float(T, num_steps, spacing="leading"):
    if spacing == "linspace":
        return torch.from_numpy(np.linspace(0, T - 1, num_steps).round()[::-1].copy())  # float64, not long
    return ref.ddim_timesteps(T, num_steps, spacing)


# -- bugs: ddim_sigma ------------------------------------------------------------------------------


def sigma_eta_squared(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta**2 * ((1 - alpha_cumprod_prev) / (1 - alpha_cumprod_t)).sqrt() * (1 - alpha_cumprod_t / alpha_cumprod_prev).sqrt()


def sigma_ratio_inverted(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta * ((1 - alpha_cumprod_t) / (1 - alpha_cumprod_prev)).sqrt() * (1 - alpha_cumprod_t / alpha_cumprod_prev).sqrt()


def sigma_no_sqrt(alpha_cumprod_t, alpha_cumprod_prev, eta):
    return eta * (1 - alpha_cumprod_prev) / (1 - alpha_cumprod_t) * (1 - alpha_cumprod_t / alpha_cumprod_prev)


# -- bugs: ddim_step -------------------------------------------------------------------------------


def step_direction_without_sigma(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    a_t, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    sigma = ref.ddim_sigma(a_t, a_prev, eta)
    if noise is None:
        noise = torch.randn_like(xt)
    out = _step(eps, xt, a_t, a_prev, 0.0, None)  # √(1 − ᾱ_prev)·ε: the −σ² is missing
    return out + torch.as_tensor(sigma).to(xt.dtype) * noise


def step_x0_with_alpha_bar(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    a_t, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    sigma = ref.ddim_sigma(a_t, a_prev, eta)
    x0_hat = (xt - (1 - a_t).sqrt().to(xt.dtype) * eps) / a_t.to(xt.dtype)  # ᾱ_t for √ᾱ_t
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt().to(xt.dtype) * eps
    z = torch.randn_like(xt) if noise is None else noise
    return a_prev.sqrt().to(xt.dtype) * x0_hat + direction + torch.as_tensor(sigma).to(xt.dtype) * z


def step_wraps_at_minus_one(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev]  # t_prev = −1 → ᾱ_{T−1}, not 1
    sigma = float(ref.ddim_sigma(a_t, a_prev, eta))
    z = torch.randn_like(xt) if noise is None else noise
    return _step(eps, xt, float(a_t), float(a_prev), sigma, z)


def step_direction_along_noise(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    a_t, a_prev = float(_abar(alphas_cumprod, t)), float(_abar(alphas_cumprod, t_prev))
    sigma = float(ref.ddim_sigma(a_t, a_prev, eta)) if a_prev < 1 else 0.0
    z = torch.randn_like(xt) if noise is None else noise
    x0_hat = (xt - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * x0_hat + max(1 - a_prev - sigma**2, 0) ** 0.5 * z + sigma * z  # direction along z, not ε


def step_ignores_noise(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    a_t, a_prev = float(_abar(alphas_cumprod, t)), float(_abar(alphas_cumprod, t_prev))
    sigma = float(ref.ddim_sigma(a_t, a_prev, eta)) if a_prev < 1 else 0.0
    return _step(eps, xt, a_t, a_prev, sigma, torch.randn_like(xt))  # the given noise is never used


def step_returns_float64(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    shape = (1,) * xt.ndim  # gathered and reshaped as in q_sample, but never cast to xt's dtype
    a_t = alphas_cumprod.double()[t].reshape(shape)
    a_prev = alphas_cumprod.double()[t_prev].reshape(shape) if t_prev >= 0 else torch.ones(shape, dtype=torch.float64)
    sigma = ref.ddim_sigma(a_t, a_prev, eta)
    z = torch.randn_like(xt) if noise is None else noise
    x0_hat = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # float64 coefficients promote the result
    return a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * z


# -- bugs: ddim_sample -----------------------------------------------------------------------------


def _sampler(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None, *,
             last_to=-1, draw=None, eta_power=1, reuse=False, stop_early=False, offsets=False, int_t=False,
             start_dtype=None, no_sigma_in_direction=False):
    """A student's ddim_sample loop with one mistake switched on (named by the keyword arguments)."""
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=start_dtype or torch.get_default_dtype())
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    x, z_once = x_T, None
    for i, t in enumerate(ts):
        if stop_early and i + 1 == len(ts):
            break
        t_prev = ts[i + 1] if i + 1 < len(ts) else last_to
        if offsets:
            t_prev = t - alphas_cumprod.shape[0] // num_steps
        eps = eps_model(x, t if int_t else _t(t, x))
        a_t = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        sigma = float(ref.ddim_sigma(a_t, a_prev, eta**eta_power)) if eta > 0 else 0.0
        z = None
        if sigma > 0:
            z = draw(x, generator) if draw else torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if reuse:
                z = z_once = z if z_once is None else z_once
        x0_hat = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        direction = max(1 - a_prev - (0 if no_sigma_in_direction else sigma**2), 0.0) ** 0.5
        x = a_prev**0.5 * x0_hat + direction * eps + (sigma * z if z is not None else 0)
    return x


def sample_last_step_wraps(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    ts_last = alphas_cumprod.shape[0] - 1  # alphas_cumprod[-1]: the last step goes to ᾱ_{T−1}, not to 1
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, last_to=ts_last)


def sample_global_rng_wrong_shape(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                                  generator=None, x_T=None):
    if x_T is None:
        x_T = torch.randn(shape)  # global RNG: the generator is ignored
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T,
                    draw=lambda x, g: torch.randn(x.shape[1:], dtype=x.dtype))  # one noise for the whole batch


def sample_eta_squared(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, eta_power=2)


def sample_reuses_noise(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, reuse=True)


def sample_stops_early(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, stop_early=True)


def sample_fixed_offsets(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, offsets=True)


def sample_int_timestep(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, int_t=True)


def sample_start_float64(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, start_dtype=torch.float64)


def sample_noise_shared_by_batch(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                                 generator=None, x_T=None):
    draw = lambda x, g: torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)  # noqa: E731
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, draw=draw)


def sample_uniform_noise(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    draw = lambda x, g: torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)  # noqa: E731
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T, draw=draw)


def sample_direction_without_sigma(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading",
                                   generator=None, x_T=None):
    return _sampler(eps_model, shape, alphas_cumprod, num_steps, eta, spacing, generator, x_T,
                    no_sigma_in_direction=True)


# -- bugs: ddim_invert -----------------------------------------------------------------------------


def _inverter(eps_model, x0, alphas_cumprod, num_steps, spacing="leading", *, eval_current=False, descending=False,
              skip_first=False, x0_with_target=False):
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing)
    ts = (ts if descending else ts.flip(0)).tolist()
    x, t_cur = x0, -1
    if skip_first:
        t_cur, ts = ts[0], ts[1:]
    for t in ts:
        eps = eps_model(x, _t(max(t_cur, 0) if eval_current else t, x))
        a_cur, a_next = float(_abar(alphas_cumprod, t_cur)), float(alphas_cumprod[t])
        x0_hat = (x - (1 - a_cur) ** 0.5 * eps) / (a_next if x0_with_target else a_cur) ** 0.5
        x = a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * eps
        t_cur = t
    return x


def invert_eps_at_current(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    return _inverter(eps_model, x0, alphas_cumprod, num_steps, spacing, eval_current=True)


def invert_wrong_direction(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    return _inverter(eps_model, x0, alphas_cumprod, num_steps, spacing, descending=True)


def invert_skips_first_step(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    return _inverter(eps_model, x0, alphas_cumprod, num_steps, spacing, skip_first=True)


def invert_x0_with_target_alpha(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    return _inverter(eps_model, x0, alphas_cumprod, num_steps, spacing, x0_with_target=True)


BUGS = [
    Bug("leading timesteps off by one", "ddim_timesteps", timesteps_leading_offset, "arange(n)·(T//n) + 1"),
    Bug("trailing timesteps without the −1", "ddim_timesteps", timesteps_trailing_no_minus_one,
        "round(arange(T, 0, −T/n)), starting at T"),
    Bug("trailing timesteps overshoot", "ddim_timesteps", timesteps_trailing_overshoot,
        "np.arange(T, 0, −T/n) has n + 1 entries for some (T, n) through round-off"),
    Bug("linspace timesteps up to T", "ddim_timesteps", timesteps_linspace_to_T, "linspace(0, T, n)"),
    Bug("timesteps ascending", "ddim_timesteps", timesteps_ascending, "forgot to reverse"),
    Bug("leading timesteps by arange with a step", "ddim_timesteps", timesteps_arange_step,
        "arange(0, T, T//n) has n + 1 entries when n ∤ T"),
    Bug("timesteps as floats", "ddim_timesteps", timesteps_float, "np.round returns floats; not cast to long"),
    Bug("σ with η²", "ddim_sigma", sigma_eta_squared, "η² · …"),
    Bug("σ with the ratio inverted", "ddim_sigma", sigma_ratio_inverted, "√((1 − ᾱ_t)/(1 − ᾱ_prev))"),
    Bug("σ without square roots", "ddim_sigma", sigma_no_sqrt, "returns σ²/η"),
    Bug("direction term without −σ²", "ddim_step", step_direction_without_sigma, "√(1 − ᾱ_prev)·ε"),
    Bug("x̂₀ divided by ᾱ_t", "ddim_step", step_x0_with_alpha_bar, "ᾱ_t in place of √ᾱ_t"),
    Bug("t_prev = −1 wraps around", "ddim_step", step_wraps_at_minus_one, "alphas_cumprod[−1] = ᾱ_{T−1} for ᾱ_prev"),
    Bug("direction along the noise", "ddim_step", step_direction_along_noise, "√(1 − ᾱ_prev − σ²)·z"),
    Bug("step ignores the given noise", "ddim_step", step_ignores_noise, "always torch.randn_like"),
    Bug("step returns float64 for float32", "ddim_step", step_returns_float64, "float64 coefficients not cast"),
    Bug("last step to ᾱ_{T−1}", "ddim_sample", sample_last_step_wraps, "alphas_cumprod[−1] for the final ᾱ_prev"),
    Bug("sampler ignores the generator", "ddim_sample", sample_global_rng_wrong_shape,
        "torch.randn from the global RNG, one step noise of shape shape[1:] for the whole batch"),
    Bug("sampler with η²", "ddim_sample", sample_eta_squared, "σ computed with η²"),
    Bug("sampler reuses one noise", "ddim_sample", sample_reuses_noise, "z drawn once, added at every step"),
    Bug("sampler stops one step early", "ddim_sample", sample_stops_early, "no final step to the data"),
    Bug("sampler steps by T // num_steps", "ddim_sample", sample_fixed_offsets, "diffusers' t − T//n targets"),
    Bug("sampler passes t as an int", "ddim_sample", sample_int_timestep, "eps_model(x, t) with a Python int"),
    Bug("sampler starts in float64", "ddim_sample", sample_start_float64, "x_T drawn in float64"),
    Bug("sampler shares noise across the batch", "ddim_sample", sample_noise_shared_by_batch,
        "randn(shape[1:], generator): reproducible, but every sample gets the same z"),
    Bug("sampler draws uniform noise", "ddim_sample", sample_uniform_noise, "torch.rand for the step noise"),
    Bug("sampler's direction without −σ²", "ddim_sample", sample_direction_without_sigma,
        "inline step with √(1 − ᾱ_prev)·ε (only wrong for η > 0)"),
    Bug("inversion evaluates ε at the current timestep", "ddim_invert", invert_eps_at_current,
        "eps_model(x, t_cur), with t_cur = 0 for the first step"),
    Bug("inversion steps the wrong way", "ddim_invert", invert_wrong_direction, "descending timesteps"),
    Bug("inversion skips its first step", "ddim_invert", invert_skips_first_step, "x₀ taken as x at the first timestep"),
    Bug("inversion x̂₀ with the target ᾱ", "ddim_invert", invert_x0_with_target_alpha, "x̂₀ divided by √ᾱ_next"),
]

# -- correct alternatives ----------------------------------------------------------------------------


def timesteps_numpy(T, num_steps, spacing="leading"):
    """diffusers' set_timesteps, written with numpy."""
    if spacing == "leading":
        steps = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].copy().astype(np.int64)
    elif spacing == "trailing":
        steps = (np.round(np.arange(T, 0, -T / num_steps)) - 1).astype(np.int64)[:num_steps]
    else:
        steps = np.linspace(0, T - 1, num_steps).round()[::-1].copy().astype(np.int64)
    return torch.from_numpy(steps)


def sigma_posterior_form(alpha_cumprod_t, alpha_cumprod_prev, eta):
    """η·√(β̃): the variance written as (1 − ᾱ_prev)/(1 − ᾱ_t) · (ᾱ_prev − ᾱ_t)/ᾱ_prev under one root."""
    return eta * torch.sqrt((1 - alpha_cumprod_prev) * (alpha_cumprod_prev - alpha_cumprod_t)
                            / ((1 - alpha_cumprod_t) * alpha_cumprod_prev))


def step_float64_inside(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    out = ref.ddim_step(eps.double(), t, t_prev, xt.double(), alphas_cumprod.double(), eta,
                        None if noise is None else noise.double())
    return out.to(xt.dtype)


def step_regrouped(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    """x_prev = √(ᾱ_prev/ᾱ_t)·x_t + (√(1 − ᾱ_prev − σ²) − √(ᾱ_prev(1 − ᾱ_t)/ᾱ_t))·ε + σ·z."""
    a_t, a_prev = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    sigma = ref.ddim_sigma(a_t, a_prev, eta) if eta else torch.zeros((), dtype=a_t.dtype)
    c_x = (a_prev / a_t).sqrt()
    c_eps = (1 - a_prev - sigma**2).clamp(min=0).sqrt() - (a_prev * (1 - a_t) / a_t).sqrt()
    out = c_x.to(xt.dtype) * xt + c_eps.to(xt.dtype) * eps
    if eta:
        z = torch.randn_like(xt) if noise is None else noise
        out = out + sigma.to(xt.dtype) * z
    return out


def step_cast_first(eps, t, t_prev, xt, alphas_cumprod, eta=0.0, noise=None):
    """The schedule cast to the data's dtype before any arithmetic (float32 throughout)."""
    ac = alphas_cumprod.to(xt.dtype)
    a_t, a_prev = _abar(ac, t), _abar(ac, t_prev)
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    x0_hat = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    out = a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if noise is None:
        noise = torch.randn_like(xt)
    return out + sigma * noise


def sample_noise_first(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None, x_T=None):
    """Draws every step's noise up front, then x_T: another order of draws."""
    device = generator.device if generator is not None else torch.device("cpu")
    dtype = x_T.dtype if x_T is not None else torch.get_default_dtype()
    full_shape = x_T.shape if x_T is not None else shape
    noises = [torch.randn(full_shape, generator=generator, device=device, dtype=dtype) for _ in range(num_steps)]
    if x_T is None:
        x_T = _start(shape, generator)
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    x = x_T
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = ref.ddim_step(eps_model(x, _t(t, x)), t, t_prev, x, alphas_cumprod, eta, noise=noises[i].to(x.device))
    return x


def sample_per_sample_loop(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None,
                           x_T=None):
    """One chain per sample (batch of one), x_T and noise drawn sample by sample."""
    batch = x_T.shape[0] if x_T is not None else shape[0]
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    out = []
    for b in range(batch):
        x = x_T[b: b + 1] if x_T is not None else _start((1, *shape[1:]), generator)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = ref.ddim_step(eps_model(x, _t(t, x)), t, t_prev, x, alphas_cumprod, eta, generator=generator)
        out.append(x)
    return torch.cat(out)


def sample_float64_inside(eps_model, shape, alphas_cumprod, num_steps, eta=0.0, spacing="leading", generator=None,
                          x_T=None):
    """The loop in float64 (the model is called with float64 samples), cast back at the end."""
    if x_T is None:
        x_T = _start(shape, generator)
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    x = x_T.double()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = eps_model(x, _t(t, x)).double()
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        x = ref.ddim_step(eps, t, t_prev, x, alphas_cumprod.double(), eta, noise=z)
    return x.to(x_T.dtype)


def invert_regrouped(eps_model, x0, alphas_cumprod, num_steps, spacing="leading"):
    """Each step as √(ᾱ_next/ᾱ_cur)·x + (√(1 − ᾱ_next) − √(ᾱ_next(1 − ᾱ_cur)/ᾱ_cur))·ε, in float64 inside."""
    ts = ref.ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).flip(0).tolist()
    ac = alphas_cumprod.double()
    x, a_cur = x0.double(), torch.ones((), dtype=torch.float64)
    for t in ts:
        eps = eps_model(x, _t(t, x)).double()
        a_next = ac[t]
        x = (a_next / a_cur).sqrt() * x + ((1 - a_next).sqrt() - (a_next * (1 - a_cur) / a_cur).sqrt()) * eps
        a_cur = a_next
    return x.to(x0.dtype)


ALTERNATIVES = [
    Alternative("timesteps with numpy", "ddim_timesteps", timesteps_numpy, "diffusers' set_timesteps code"),
    Alternative("σ in posterior form", "ddim_sigma", sigma_posterior_form, "one square root of the variance"),
    Alternative("step in float64 inside", "ddim_step", step_float64_inside, "upcast, step, cast back"),
    Alternative("step regrouped", "ddim_step", step_regrouped, "coefficients of x_t and ε"),
    Alternative("step casting the schedule first", "ddim_step", step_cast_first, "float32 arithmetic throughout"),
    Alternative("sampler drawing the noise first", "ddim_sample", sample_noise_first,
                "every step's noise, then x_T: another order of draws"),
    Alternative("sampler as a loop over samples", "ddim_sample", sample_per_sample_loop,
                "one chain per sample; model batches of one; draws interleaved per sample"),
    Alternative("sampler in float64 inside", "ddim_sample", sample_float64_inside, "float64 chain, cast back"),
    Alternative("inversion regrouped in float64", "ddim_invert", invert_regrouped, "coefficients of x and ε"),
]
