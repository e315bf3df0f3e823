"""cfg: realistic bugs and correct alternatives."""

from __future__ import annotations

import numpy as np
import torch

from reference import cfg as ref
from reference.ddim import ddim_step, ddim_timesteps
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _t(t, x):
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _abar(alphas_cumprod, t):
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)


def _per_sample(v, x):
    return v.reshape(x.shape[0], *([1] * (x.ndim - 1)))


# -- bugs: cfg_combine ---------------------------------------------------------------------------


def combine_around_cond(eps_uncond, eps_cond, guidance_scale):
    return eps_cond + guidance_scale * (eps_cond - eps_uncond)  # Ho & Salimans' (1 + w) form with diffusers' w


def combine_without_difference(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond + guidance_scale * eps_cond  # forgot − ε_u


# -- bugs: guided_eps ----------------------------------------------------------------------------


def guided_two_calls(eps_model, xt, t, cond, uncond, guidance_scale):
    eps_u = eps_model(xt, t, uncond)  # right values, twice the calls
    eps_c = eps_model(xt, t, cond)
    return eps_u + guidance_scale * (eps_c - eps_u)


def guided_swapped_halves(eps_model, xt, t, cond, uncond, guidance_scale):
    eps = eps_model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([uncond, cond]))
    eps_cond, eps_uncond = eps.chunk(2)  # the halves read the wrong way round
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_cond_first(eps_model, xt, t, cond, uncond, guidance_scale):
    eps = eps_model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([cond, uncond]))
    eps_cond, eps_uncond = eps.chunk(2)  # consistent, but the batch is [cond; uncond]
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_t_interleaved(eps_model, xt, t, cond, uncond, guidance_scale):
    eps = eps_model(torch.cat([xt, xt]), t.repeat_interleave(2), torch.cat([uncond, cond]))  # [t0, t0, t1, t1, …]
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_around_cond(eps_model, xt, t, cond, uncond, guidance_scale):
    eps_uncond, eps_cond = eps_model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([uncond, cond])).chunk(2)
    return eps_cond + guidance_scale * (eps_cond - eps_uncond)


# -- bugs: composed_eps --------------------------------------------------------------------------


def composed_one_call_per_condition(eps_model, xt, t, conds, weights, uncond):
    eps_u = eps_model(xt, t, uncond)
    out = eps_u
    for c, w in zip(conds, weights):
        out = out + w * (eps_model(xt, t, c) - eps_u)
    return out


def composed_uncond_last(eps_model, xt, t, conds, weights, uncond):
    conds = list(conds)
    k = len(conds)
    blocks = eps_model(torch.cat([xt] * (k + 1)), torch.cat([t] * (k + 1)), torch.cat([*conds, uncond])).chunk(k + 1)
    eps_u = blocks[-1]  # right values, but the batch is [c_1; …; c_k; uncond]
    return eps_u + sum(w * (e - eps_u) for w, e in zip(weights, blocks[:-1]))


def composed_without_difference(eps_model, xt, t, conds, weights, uncond):
    conds = list(conds)
    k = len(conds)
    blocks = eps_model(torch.cat([xt] * (k + 1)), torch.cat([t] * (k + 1)), torch.cat([uncond, *conds])).chunk(k + 1)
    return blocks[0] + sum(w * e for w, e in zip(weights, blocks[1:]))  # Σ w_i ε_i, no − ε_u


def composed_normalised_weights(eps_model, xt, t, conds, weights, uncond):
    conds = list(conds)
    k = len(conds)
    blocks = eps_model(torch.cat([xt] * (k + 1)), torch.cat([t] * (k + 1)), torch.cat([uncond, *conds])).chunk(k + 1)
    total = sum(abs(float(w)) for w in weights)
    return blocks[0] + sum(float(w) / total * (e - blocks[0]) for w, e in zip(weights, blocks[1:]))


# -- bugs: rescale_guidance ---------------------------------------------------------------------


def rescale_global_std(eps_cfg, eps_cond, phi):
    eps_r = eps_cfg * (eps_cond.std() / eps_cfg.std())  # one std over the whole batch
    return phi * eps_r + (1 - phi) * eps_cfg


def rescale_ratio_inverted(eps_cfg, eps_cond, phi):
    dims = list(range(1, eps_cfg.ndim))
    eps_r = eps_cfg * (eps_cfg.std(dim=dims, keepdim=True) / eps_cond.std(dim=dims, keepdim=True))
    return phi * eps_r + (1 - phi) * eps_cfg


def rescale_phi_swapped(eps_cfg, eps_cond, phi):
    dims = list(range(1, eps_cfg.ndim))
    eps_r = eps_cfg * (eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True))
    return (1 - phi) * eps_r + phi * eps_cfg


def rescale_last_dim_std(eps_cfg, eps_cond, phi):
    eps_r = eps_cfg * (eps_cond.std(dim=-1, keepdim=True) / eps_cfg.std(dim=-1, keepdim=True))  # per row, not per sample
    return phi * eps_r + (1 - phi) * eps_cfg


# -- bugs: dynamic_threshold ----------------------------------------------------------------------


def threshold_without_floor(x0, percentile=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=1)  # no max(s, 1)
    s = _per_sample(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def threshold_global_quantile(x0, percentile=0.995):
    s = torch.quantile(x0.abs().flatten(), percentile).clamp(min=1)  # one s for the whole batch
    return x0.clamp(-s, s) / s


def threshold_signed_quantile(x0, percentile=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1), percentile, dim=1).clamp(min=1)  # of x₀, not |x₀|
    s = _per_sample(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def threshold_clamp_only(x0, percentile=0.995):
    s = _per_sample(torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=1).clamp(min=1), x0)
    return torch.maximum(torch.minimum(x0, s), -s)  # forgot to divide by s


def threshold_numpy(x0, percentile=0.995):
    flat = x0.reshape(x0.shape[0], -1).abs().numpy()  # fine on the CPU, fails for a tensor on a GPU
    s = torch.from_numpy(np.maximum(np.percentile(flat, 100 * percentile, axis=1), 1.0)).to(x0.dtype)  # on the CPU
    s = _per_sample(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


# -- bugs: cfg_pp_step ----------------------------------------------------------------------------


def _cfgpp(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam, *, renoise="uncond", x0_from="lam", wrap=False):
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[t_prev] if (wrap or t_prev >= 0) else torch.ones((), dtype=alphas_cumprod.dtype)
    a_t, a_prev = a_t.to(xt.dtype), a_prev.to(xt.dtype)
    eps_lam = eps_uncond + lam * (eps_cond - eps_uncond)
    x0_hat = (xt - (1 - a_t).sqrt() * (eps_lam if x0_from == "lam" else eps_uncond)) / a_t.sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * (eps_uncond if renoise == "uncond" else eps_lam)


def cfgpp_renoise_guided(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
    return _cfgpp(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam, renoise="lam")  # plain CFG DDIM


def cfgpp_roles_swapped(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
    return _cfgpp(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam, renoise="lam", x0_from="uncond")


def cfgpp_wraps_at_minus_one(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
    return _cfgpp(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam, wrap=True)  # ᾱ_{T−1} for ᾱ_prev


# -- bugs: cfg_sample -----------------------------------------------------------------------------


def _sampler(eps_model, shape, cond, uncond, guidance_scale, alphas_cumprod, num_steps, generator=None, x_T=None, *,
             spacing="leading", ascending=False, stop_early=False, start=None, swap=False):
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = start(shape, generator, device) if start else torch.randn(shape, generator=generator, device=device)
    ts = ddim_timesteps(alphas_cumprod.shape[0], num_steps, spacing).tolist()
    if ascending:
        ts = ts[::-1]
    x = x_T
    for i, t in enumerate(ts):
        if stop_early and i + 1 == len(ts):
            break
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        c, u = (uncond, cond) if swap else (cond, uncond)
        eps = ref.guided_eps(eps_model, x, _t(t, x), c, u, guidance_scale)
        x = ddim_step(eps, t, t_prev, x, alphas_cumprod)
    return x


def sample_t_on_cpu(eps_model, shape, cond, uncond, guidance_scale, alphas_cumprod, num_steps, generator=None, x_T=None):
    ts = ddim_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x = x_T if x_T is not None else torch.randn(shape, generator=generator,
                                                device=generator.device if generator is not None else "cpu")
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)  # no device=: on the CPU, whatever x's device
        x = ddim_step(ref.guided_eps(eps_model, x, t_batch, cond, uncond, guidance_scale), t, t_prev, x, alphas_cumprod)
    return x


def sample_stops_early(*args, **kwargs):
    return _sampler(*args, **kwargs, stop_early=True)  # no final step to the data


def sample_trailing(*args, **kwargs):
    return _sampler(*args, **kwargs, spacing="trailing")  # from T − 1, not the course's "leading"


def sample_ascending(*args, **kwargs):
    return _sampler(*args, **kwargs, ascending=True)  # walks the timesteps upwards


def sample_cond_uncond_swapped(*args, **kwargs):
    return _sampler(*args, **kwargs, swap=True)  # guided_eps(…, uncond, cond, …): guides towards ∅


def sample_start_shared_by_batch(*args, **kwargs):
    def start(shape, generator, device):  # one x_T for every sample
        return torch.randn(shape[1:], generator=generator, device=device).expand(shape).clone()

    return _sampler(*args, **kwargs, start=start)


def sample_global_rng(*args, **kwargs):
    return _sampler(*args, **kwargs, start=lambda shape, generator, device: torch.randn(shape, device=device))


BUGS = [
    Bug("guidance around the conditional branch", "cfg_combine", combine_around_cond,
        "ε_c + w(ε_c − ε_u): Ho & Salimans' (1 + w) convention with diffusers' w"),
    Bug("guidance without the difference", "cfg_combine", combine_without_difference, "ε_u + w·ε_c"),
    Bug("two unbatched calls", "guided_eps", guided_two_calls, "model(x, t, uncond) and model(x, t, cond)"),
    Bug("halves swapped", "guided_eps", guided_swapped_halves, "[uncond; cond] in, read back as (cond, uncond)"),
    Bug("batch in the order [cond; uncond]", "guided_eps", guided_cond_first, "consistent values, wrong batch order"),
    Bug("timesteps interleaved", "guided_eps", guided_t_interleaved, "t.repeat_interleave(2) for torch.cat([t, t])"),
    Bug("guided_eps around the conditional branch", "guided_eps", guided_around_cond, "ε_c + w(ε_c − ε_u)"),
    Bug("one call per condition", "composed_eps", composed_one_call_per_condition, "k + 1 calls of batch B"),
    Bug("unconditional block last", "composed_eps", composed_uncond_last, "[c_1; …; c_k; uncond]"),
    Bug("composition without − ε_u", "composed_eps", composed_without_difference, "ε_u + Σ w_i ε_i"),
    Bug("composition with normalised weights", "composed_eps", composed_normalised_weights, "w_i / Σ|w_j|"),
    Bug("rescale with a global std", "rescale_guidance", rescale_global_std, "std over the whole batch"),
    Bug("rescale ratio inverted", "rescale_guidance", rescale_ratio_inverted, "std(ε_cfg)/std(ε_c)"),
    Bug("rescale with φ swapped", "rescale_guidance", rescale_phi_swapped, "(1 − φ)·ε_r + φ·ε_cfg"),
    Bug("rescale std over the last dim", "rescale_guidance", rescale_last_dim_std, "std(dim=−1)"),
    Bug("threshold without the max(s, 1) floor", "dynamic_threshold", threshold_without_floor,
        "unsaturated samples are stretched to ±1"),
    Bug("threshold with a global quantile", "dynamic_threshold", threshold_global_quantile, "one s for the batch"),
    Bug("threshold on the signed quantile", "dynamic_threshold", threshold_signed_quantile, "quantile of x₀, not |x₀|"),
    Bug("threshold without the division", "dynamic_threshold", threshold_clamp_only, "clamp(x₀, −s, s)"),
    Bug("threshold through numpy", "dynamic_threshold", threshold_numpy, "x0.abs().numpy(): fails on a GPU"),
    Bug("CFG++ renoised along the guided ε", "cfg_pp_step", cfgpp_renoise_guided, "plain guided DDIM"),
    Bug("CFG++ with the roles swapped", "cfg_pp_step", cfgpp_roles_swapped, "x̂₀ from ε_u, renoised along ε_λ"),
    Bug("CFG++ wraps at t_prev = −1", "cfg_pp_step", cfgpp_wraps_at_minus_one, "alphas_cumprod[−1]"),
    Bug("sampler stops one step early", "cfg_sample", sample_stops_early, "no final step to the data"),
    Bug("sampler builds t on the CPU", "cfg_sample", sample_t_on_cpu, "torch.full((B,), t) without device=: fails on a GPU"),
    Bug("sampler with trailing timesteps", "cfg_sample", sample_trailing, "spacing='trailing'"),
    Bug("sampler walks upwards", "cfg_sample", sample_ascending, "ascending timesteps"),
    Bug("sampler swaps cond and uncond", "cfg_sample", sample_cond_uncond_swapped, "guided_eps(…, uncond, cond, …)"),
    Bug("sampler shares x_T across the batch", "cfg_sample", sample_start_shared_by_batch, "randn(shape[1:])"),
    Bug("sampler ignores the generator", "cfg_sample", sample_global_rng, "torch.randn(shape) from the global RNG"),
]

# -- correct alternatives -------------------------------------------------------------------------


def combine_lerp(eps_uncond, eps_cond, guidance_scale):
    """torch.lerp(ε_u, ε_c, w) = ε_u + w·(ε_c − ε_u), w outside [0, 1] included."""
    return torch.lerp(eps_uncond, eps_cond, guidance_scale)


def combine_affine(eps_uncond, eps_cond, guidance_scale):
    """(1 − w)·ε_u + w·ε_c."""
    return (1 - guidance_scale) * eps_uncond + guidance_scale * eps_cond


def guided_split(eps_model, xt, t, cond, uncond, guidance_scale):
    """torch.split by the batch size, x and t by repeat."""
    B = xt.shape[0]
    x_in = xt.repeat(2, *([1] * (xt.ndim - 1)))
    eps_uncond, eps_cond = torch.split(eps_model(x_in, t.repeat(2), torch.cat([uncond, cond], dim=0)), B)
    return torch.lerp(eps_uncond, eps_cond, guidance_scale)


def composed_stacked(eps_model, xt, t, conds, weights, uncond):
    """The blocks stacked (k + 1, B, …), the weights as a tensor, the sum by tensordot; float64 inside."""
    conds = list(conds)
    k = len(conds)
    eps = eps_model(torch.cat([xt] * (k + 1)), torch.cat([t] * (k + 1)), torch.cat([uncond, *conds]))
    blocks = eps.double().reshape(k + 1, *xt.shape)
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64, device=xt.device)
    return (blocks[0] + torch.tensordot(w, blocks[1:] - blocks[0], dims=1)).to(xt.dtype)


def rescale_biased_std_float64(eps_cfg, eps_cond, phi):
    """Population std (correction = 0) in float64: the ratio of two stds is the same."""
    c, g = eps_cfg.double().flatten(1), eps_cond.double().flatten(1)
    ratio = g.std(1, correction=0) / c.std(1, correction=0)
    out = phi * eps_cfg.double() * _per_sample(ratio, eps_cfg) + (1 - phi) * eps_cfg.double()
    return out.to(eps_cfg.dtype)


def threshold_loop(x0, percentile=0.995):
    """One sample at a time, the quantile of each sample's |x₀| alone."""
    out = []
    for sample in x0:
        s = torch.quantile(sample.abs().flatten(), percentile).clamp(min=1)
        out.append(torch.clamp(sample, -s, s) / s)
    return torch.stack(out)


def threshold_float64(x0, percentile=0.995):
    """The quantile and the division in float64, cast back."""
    x = x0.double()
    s = _per_sample(x.flatten(1).abs().quantile(percentile, dim=1).clamp(min=1), x)
    return (torch.maximum(torch.minimum(x, s), -s) / s).to(x0.dtype)


def cfgpp_float64(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
    """float64 inside, x_prev regrouped as √(ᾱ_prev/ᾱ_t)·x_t + c_u·ε_u + c_c·ε_c."""
    a_t, a_prev = _abar(alphas_cumprod.double(), t), _abar(alphas_cumprod.double(), t_prev)
    ratio = (a_prev / a_t).sqrt()
    k = ratio * (1 - a_t).sqrt()
    c_u = (1 - a_prev).sqrt() - k * (1 - lam)
    c_c = -k * lam
    out = ratio * xt.double() + c_u * eps_uncond.double() + c_c * eps_cond.double()
    return out.to(xt.dtype)


def cfgpp_cast_first(eps_uncond, eps_cond, t, t_prev, xt, alphas_cumprod, lam):
    """The schedule cast to the data's dtype before any arithmetic (float32 throughout)."""
    ac = alphas_cumprod.to(xt.dtype)
    a_t, a_prev = _abar(ac, t), _abar(ac, t_prev)
    x0_hat = (xt - (1 - a_t).sqrt() * torch.lerp(eps_uncond, eps_cond, lam)) / a_t.sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps_uncond


def sample_float64_inside(eps_model, shape, cond, uncond, guidance_scale, alphas_cumprod, num_steps, generator=None,
                          x_T=None):
    """The chain in float64 (the model is called with float64 samples), cast back at the end."""
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    ts = ddim_timesteps(alphas_cumprod.shape[0], num_steps).tolist()
    x = x_T.double()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = ref.guided_eps(eps_model, x, _t(t, x), cond, uncond, guidance_scale).double()
        x = ddim_step(eps, t, t_prev, x, alphas_cumprod.double())
    return x.to(x_T.dtype)


ALTERNATIVES = [
    Alternative("combine by torch.lerp", "cfg_combine", combine_lerp, "torch.lerp(ε_u, ε_c, w)"),
    Alternative("combine as an affine mix", "cfg_combine", combine_affine, "(1 − w)·ε_u + w·ε_c"),
    Alternative("guided_eps with torch.split", "guided_eps", guided_split, "repeat, split by B, lerp"),
    Alternative("composition stacked in float64", "composed_eps", composed_stacked, "tensordot over the blocks"),
    Alternative("rescale with the population std", "rescale_guidance", rescale_biased_std_float64,
                "correction = 0, float64 inside"),
    Alternative("threshold sample by sample", "dynamic_threshold", threshold_loop, "a loop over the batch"),
    Alternative("threshold in float64", "dynamic_threshold", threshold_float64, "upcast, threshold, cast back"),
    Alternative("CFG++ regrouped in float64", "cfg_pp_step", cfgpp_float64, "coefficients of x_t, ε_u, ε_c"),
    Alternative("CFG++ casting the schedule first", "cfg_pp_step", cfgpp_cast_first, "float32 arithmetic, lerp"),
    Alternative("sampler in float64 inside", "cfg_sample", sample_float64_inside, "float64 chain, cast back"),
]
