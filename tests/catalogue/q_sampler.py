"""q_sampler: realistic bugs and correct alternatives."""

from __future__ import annotations

import math

import numpy as np
import torch

from reference import q_sampler as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _bcast(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# -- bugs ------------------------------------------------------------------------------------


def linear_float32(T, beta_start=1e-4, beta_end=0.02):
    return torch.linspace(beta_start, beta_end, T)  # default dtype: float32


def linear_arange(T, beta_start=1e-4, beta_end=0.02):
    step = (beta_end - beta_start) / T
    return torch.arange(beta_start, beta_end, step, dtype=torch.float64)[:T]


def cosine_no_cap(T, s=0.008, max_beta=0.999):
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]


def cosine_no_offset_denominator(T, s=0.008, max_beta=0.999):
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((u / T) + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cosine_clamp_min(T, s=0.008, max_beta=0.999):
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], min=0, max=None).minimum(torch.tensor(1.0, dtype=torch.float64))


def cosine_shifted(T, s=0.008, max_beta=0.999):
    u = torch.arange(T, dtype=torch.float64)  # f(t)/f(t−1) starting one step late
    f = torch.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2
    f = torch.cat([f[:1], f])
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cumprod_of_betas(betas):
    return torch.cumprod(betas, dim=0)


def cumprod_exclusive(betas):
    alphas = 1 - betas
    return torch.cat([torch.ones_like(alphas[:1]), torch.cumprod(alphas, 0)[:-1]])


def q_sample_off_by_one(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod[t - 1]  # one-based thinking; t = 0 wraps to ᾱ_{T−1}
    return _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise


def q_sample_no_sqrt(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod[t]
    return _bcast(a, x0) * x0 + _bcast(1 - a, x0) * noise


def q_sample_ignores_noise(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0)  # the given noise is ignored
    a = alphas_cumprod[t]
    return _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise


def q_sample_2d_only(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod[t].to(x0.dtype)[:, None]  # works for (B, D) only
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_float64(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))  # float64: promotes the result
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_shared_noise(x0, t, alphas_cumprod, noise=None):
    if noise is None:
        noise = torch.randn(x0.shape[1:], dtype=x0.dtype, device=x0.device)  # one draw for the whole batch
    a = alphas_cumprod[t]
    return _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise


def q_sample_uniform_noise(x0, t, alphas_cumprod, noise=None):
    noise = torch.rand_like(x0) if noise is None else noise
    a = alphas_cumprod[t]
    return _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise


def q_sample_reseeds(x0, t, alphas_cumprod, noise=None):
    if noise is None:
        torch.manual_seed(0)  # "for reproducibility"
        noise = torch.randn_like(x0)
    a = alphas_cumprod[t]
    return _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise


def q_step_off_by_one(x_prev, t, betas, noise=None):
    noise = torch.randn_like(x_prev) if noise is None else noise
    b = betas[t - 1]
    return _bcast((1 - b).sqrt(), x_prev) * x_prev + _bcast(b.sqrt(), x_prev) * noise


def q_step_no_sqrt_mean(x_prev, t, betas, noise=None):
    noise = torch.randn_like(x_prev) if noise is None else noise
    b = betas[t]
    return _bcast(1 - b, x_prev) * x_prev + _bcast(b.sqrt(), x_prev) * noise


def q_step_uses_alphas_cumprod(x_prev, t, betas, noise=None):
    noise = torch.randn_like(x_prev) if noise is None else noise
    a = torch.cumprod(1 - betas, 0)[t]  # confuses the one-step kernel with q(x_t | x_0)
    return _bcast(a.sqrt(), x_prev) * x_prev + _bcast((1 - a).sqrt(), x_prev) * noise


def q_step_no_default_noise(x_prev, t, betas, noise=None):
    noise = torch.zeros_like(x_prev) if noise is None else noise  # "no noise by default"
    b = betas[t]
    return _bcast((1 - b).sqrt(), x_prev) * x_prev + _bcast(b.sqrt(), x_prev) * noise


def q_posterior_unclipped(x0, xt, t, betas):
    mean, variance, _ = ref.q_posterior(x0, xt, t, betas)
    return mean, variance, torch.log(variance)


def q_posterior_swapped(x0, xt, t, betas):
    mean, variance, log_variance = ref.q_posterior(xt, x0, t, betas)  # coefficients on the wrong inputs
    return mean, variance, log_variance


def q_posterior_wraps(x0, xt, t, betas):
    alphas = 1 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = ac[t - 1]  # t = 0 wraps to ᾱ_{T−1} instead of ᾱ₋₁ = 1
    ac_t, b = ac[t], betas[t]
    c1 = _bcast(b * ac_prev.sqrt() / (1 - ac_t), xt)
    c2 = _bcast((1 - ac_prev) * alphas[t].sqrt() / (1 - ac_t), xt)
    var = _bcast(b * (1 - ac_prev) / (1 - ac_t), xt)
    _, _, log_variance = ref.q_posterior(x0, xt, t, betas)
    return c1 * x0 + c2 * xt, var.expand_as(xt), log_variance


def q_posterior_beta_variance(x0, xt, t, betas):
    mean, _, _ = ref.q_posterior(x0, xt, t, betas)
    var = _bcast(betas[t], xt).expand_as(xt)  # β_t, the forward variance, instead of β̃_t
    return mean, var, torch.log(var)


def q_posterior_cpu_prepend(x0, xt, t, betas):
    ac = torch.cumprod(1 - betas, 0)
    ac_prev = torch.cat([torch.tensor([1.0], dtype=betas.dtype), ac[:-1]])  # made on the CPU: fails on a GPU
    variance = betas * (1 - ac_prev) / (1 - ac)
    log_variance = torch.log(torch.cat([variance[1:2], variance[1:]]))
    coef_x0, coef_xt = betas * ac_prev.sqrt() / (1 - ac), (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)
    return (_bcast(coef_x0[t], xt) * x0 + _bcast(coef_xt[t], xt) * xt, _bcast(variance[t], xt).expand_as(xt),
            _bcast(log_variance[t], xt).expand_as(xt))


BUGS = [
    Bug("linear schedule in float32", "linear_beta_schedule", linear_float32,
        "torch.linspace without dtype returns float32; schedules are float64"),
    Bug("linear schedule by arange", "linear_beta_schedule", linear_arange,
        "arange with a step (end − start)/T misses the endpoint"),
    Bug("cosine schedule without its cap", "cosine_beta_schedule", cosine_no_cap,
        "β_{T−1} = 1 without the max_beta clamp"),
    Bug("cosine schedule without the (1 + s) denominator", "cosine_beta_schedule", cosine_no_offset_denominator,
        "f(u) = cos²((u/T + s)·π/2)"),
    Bug("cosine schedule clamped from below", "cosine_beta_schedule", cosine_clamp_min,
        "clamp(min=…) where clamp(max=max_beta) was meant"),
    Bug("cosine schedule one step late", "cosine_beta_schedule", cosine_shifted,
        "β_0 = 0 and every later β shifted by one step"),
    Bug("cumprod of the betas", "compute_alphas_cumprod", cumprod_of_betas, "∏β in place of ∏(1 − β)"),
    Bug("exclusive cumprod", "compute_alphas_cumprod", cumprod_exclusive, "ᾱ_t computed as ∏_{s<t} (1 − β_s)"),
    Bug("q_sample off by one timestep", "q_sample", q_sample_off_by_one, "alphas_cumprod[t − 1]"),
    Bug("q_sample without square roots", "q_sample", q_sample_no_sqrt, "ᾱ·x0 + (1 − ᾱ)·ε"),
    Bug("q_sample ignores the given noise", "q_sample", q_sample_ignores_noise, "always torch.randn_like"),
    Bug("q_sample broadcasts for 2-D data only", "q_sample", q_sample_2d_only, "coefficients indexed [:, None]"),
    Bug("q_sample returns float64 for float32 data", "q_sample", q_sample_float64, "float64 schedule not cast"),
    Bug("q_sample draws one noise for the whole batch", "q_sample", q_sample_shared_noise, "randn(x0.shape[1:])"),
    Bug("q_sample draws uniform noise", "q_sample", q_sample_uniform_noise, "torch.rand_like in place of randn_like"),
    Bug("q_sample reseeds the global generator", "q_sample", q_sample_reseeds,
        "torch.manual_seed(0) inside: every call draws the same noise"),
    Bug("q_step off by one timestep", "q_step", q_step_off_by_one, "betas[t − 1]"),
    Bug("q_step without the mean's square root", "q_step", q_step_no_sqrt_mean, "(1 − β)·x in place of √(1 − β)·x"),
    Bug("q_step uses ᾱ", "q_step", q_step_uses_alphas_cumprod, "the one-step kernel confused with q(x_t | x_0)"),
    Bug("q_step adds no noise by default", "q_step", q_step_no_default_noise, "noise=None means zeros"),
    Bug("q_posterior log-variance not clipped", "q_posterior", q_posterior_unclipped, "log β̃_0 = −∞ at t = 0"),
    Bug("q_posterior coefficients swapped", "q_posterior", q_posterior_swapped, "x0 and xt exchanged"),
    Bug("q_posterior wraps at t = 0", "q_posterior", q_posterior_wraps, "ᾱ_{t−1} = alphas_cumprod[t − 1] at t = 0"),
    Bug("q_posterior variance is β_t", "q_posterior", q_posterior_beta_variance, "the forward variance"),
    Bug("q_posterior builds ᾱ_{t−1} on the CPU", "q_posterior", q_posterior_cpu_prepend,
        "torch.cat([torch.tensor([1.0]), ᾱ[:-1]]): right on the CPU, fails with --device cuda"),
]

# -- correct alternatives ----------------------------------------------------------------------


def linear_numpy(T, beta_start=1e-4, beta_end=0.02):
    return torch.from_numpy(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def cosine_numpy_loop(T, s=0.008, max_beta=0.999):
    def f(u):
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)


def cumprod_log_space(betas):
    return torch.exp(torch.cumsum(torch.log1p(-betas), dim=0))


def cumprod_loop(betas):
    out, running = [], torch.ones((), dtype=betas.dtype, device=betas.device)
    for b in betas:
        running = running * (1 - b)
        out.append(running)
    return torch.stack(out) if out else betas.clone()


def q_sample_float64_inside(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod.double()[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).to(x0.dtype)


def q_sample_loop(x0, t, alphas_cumprod, noise=None):
    if noise is None:
        noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    rows = []
    for i in range(x0.shape[0]):
        a = alphas_cumprod[t[i]].to(x0.dtype)
        rows.append(torch.sqrt(a) * x0[i] + torch.sqrt(1 - a) * noise[i])
    return torch.stack(rows)


def q_sample_cast_first(x0, t, alphas_cumprod, noise=None):
    """Casts the schedule to the data's dtype before any arithmetic (float32 all the way)."""
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod.to(x0.dtype)[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_step_loop(x_prev, t, betas, noise=None):
    rows = []
    for i in range(x_prev.shape[0]):
        b = betas[t[i]].to(x_prev.dtype)
        z = torch.randn_like(x_prev[i]) if noise is None else noise[i]  # noise drawn row by row
        rows.append((1 - b).sqrt() * x_prev[i] + b.sqrt() * z)
    return torch.stack(rows)


def q_posterior_float32_broadcast(x0, xt, t, betas):
    """Coefficients in the data's dtype, variance returned as (B, 1, …) (broadcastable)."""
    b = betas.to(xt.dtype)
    alphas = 1 - b
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones_like(ac[:1]), ac[:-1]])
    var = b * (1 - ac_prev) / (1 - ac)
    log_var = torch.log(torch.cat([var[1:2], var[1:]]))
    shape = (-1,) + (1,) * (xt.ndim - 1)
    mean = (b * ac_prev.sqrt() / (1 - ac))[t].view(shape) * x0 + ((1 - ac_prev) * alphas.sqrt() / (1 - ac))[t].view(shape) * xt
    return mean, var[t].view(shape), log_var[t].view(shape)


def q_posterior_regrouped(x0, xt, t, betas):
    """The mean as a weighted average written through the SNR-style grouping."""
    ac = torch.cumprod(1 - betas, 0)
    ac_prev = torch.cat([torch.ones_like(ac[:1]), ac[:-1]])
    shape = (-1,) + (1,) * (xt.ndim - 1)
    a_t, a_prev, b = ac[t].view(shape), ac_prev[t].view(shape), betas[t].view(shape)
    var = b * (1 - a_prev) / (1 - a_t)
    mean = var * (a_prev.sqrt() * x0 / (1 - a_prev).clamp_min(1e-300) + (1 - b).sqrt() * xt / b)
    mean = torch.where(a_prev == 1, x0.to(mean.dtype), mean)  # t = 0: the posterior is a point mass at x0
    var_clip = torch.cat([(betas * (1 - ac_prev) / (1 - ac))[1:2], (betas * (1 - ac_prev) / (1 - ac))[1:]])
    return mean.to(xt.dtype), var.to(xt.dtype).expand_as(xt), torch.log(var_clip)[t].view(shape).to(xt.dtype).expand_as(xt)


ALTERNATIVES = [
    Alternative("linear schedule with numpy", "linear_beta_schedule", linear_numpy, "np.linspace then torch.from_numpy"),
    Alternative("cosine schedule as a Python loop", "cosine_beta_schedule", cosine_numpy_loop, "math.cos per step"),
    Alternative("cumprod in log space", "compute_alphas_cumprod", cumprod_log_space, "exp(cumsum(log1p(−β)))"),
    Alternative("cumprod as a loop", "compute_alphas_cumprod", cumprod_loop, "a running product"),
    Alternative("q_sample in float64 inside", "q_sample", q_sample_float64_inside, "upcast, compute, cast back"),
    Alternative("q_sample as a loop over the batch", "q_sample", q_sample_loop, "one row at a time"),
    Alternative("q_sample casting the schedule first", "q_sample", q_sample_cast_first, "float32 arithmetic throughout"),
    Alternative("q_step as a loop drawing noise per row", "q_step", q_step_loop, "noise drawn in another order"),
    Alternative("q_posterior in float32 with broadcast variance", "q_posterior", q_posterior_float32_broadcast,
                "coefficients in the data's dtype; (B, 1, …) variance"),
    Alternative("q_posterior regrouped", "q_posterior", q_posterior_regrouped, "another grouping of the mean"),
]
