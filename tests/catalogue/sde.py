"""sde: realistic bugs and correct alternatives."""

from __future__ import annotations

import torch

from reference import sde as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _b(v, x):
    """A (B,) coefficient broadcast over x's non-batch dims, in x's dtype."""
    v = torch.as_tensor(v).to(device=x.device, dtype=x.dtype)
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1))) if v.ndim else v


def _t(t, x):
    t = torch.as_tensor(t).to(device=x.device, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


# -- bugs: vp_beta, vp_marginal --------------------------------------------------------------------


def beta_discrete_scale(t, beta_min=0.1, beta_max=20.0):
    return (beta_min + t * (beta_max - beta_min)) / 1000  # DDPM's β_t = β(t)/T with T = 1000, not the rate β(t)


def beta_without_subtraction(t, beta_min=0.1, beta_max=20.0):
    return beta_min + t * beta_max  # β_min + t·β_max


def marginal_std_is_variance(t, beta_min=0.1, beta_max=20.0):
    mean, std = ref.vp_marginal(t, beta_min, beta_max)
    return mean, std**2  # 1 − m²: the variance, no square root


def marginal_mean_is_alpha_bar(t, beta_min=0.1, beta_max=20.0):
    log_mean = -0.5 * t**2 * (beta_max - beta_min) - t * beta_min  # −∫β: ᾱ(t), the squared coefficient
    mean = torch.exp(log_mean)
    return mean, torch.sqrt(1 - mean**2)


def marginal_quarter_as_half(t, beta_min=0.1, beta_max=20.0):
    log_mean = -0.5 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min  # ∫₀ᵗ s ds = t²/2, times ½ forgotten
    return torch.exp(log_mean), torch.sqrt(1 - torch.exp(2 * log_mean))


# -- bugs: dsm_loss ------------------------------------------------------------------------------


def _dsm(score_fn, x0, t, beta_min, beta_max, noise, *, half=0.5, reduce="sum", mean_coef=True, sign=1.0,
         weighted=True):
    noise = torch.randn_like(x0) if noise is None else noise
    t = _t(t, x0)
    m, s = (_b(v, x0) for v in ref.vp_marginal(t, beta_min, beta_max))
    xt = (m if mean_coef else 1.0) * x0 + s * noise
    score = score_fn(xt, t)
    r = (s * score + sign * noise) if weighted else (score + noise / s)
    r = r.pow(2).reshape(x0.shape[0], -1)
    return half * (r.sum(-1) if reduce == "sum" else r.mean(-1))


def dsm_without_half(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    return _dsm(score_fn, x0, t, beta_min, beta_max, noise, half=1.0)


def dsm_mean_over_dims(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    return _dsm(score_fn, x0, t, beta_min, beta_max, noise, reduce="mean")


def dsm_without_mean_coef(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    return _dsm(score_fn, x0, t, beta_min, beta_max, noise, mean_coef=False)  # x_t = x₀ + σz (VE perturbation)


def dsm_target_sign(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    return _dsm(score_fn, x0, t, beta_min, beta_max, noise, sign=-1.0)  # regresses σs onto +z


def dsm_unweighted(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    return _dsm(score_fn, x0, t, beta_min, beta_max, noise, weighted=False)  # ½‖s + z/σ‖², λ(t) = 1


# -- bugs: the steps -----------------------------------------------------------------------------


def _step(score_fn, x, t, dt, beta_min, beta_max, noise, *, x_coef=0.5, score_coef=1.0, beta_scale=1.0,
          noise_kind="sqrt"):
    t = _t(t, x)
    beta = _b(ref.vp_beta(t, beta_min, beta_max), x) * beta_scale
    x_mean = x + (x_coef * beta * x + score_coef * beta * score_fn(x, t)) * dt
    if noise is None:
        return x_mean
    scale = {"sqrt": torch.sqrt(beta * dt), "dt": torch.sqrt(beta) * dt, "beta": beta * dt ** 0.5}[noise_kind]
    return x_mean + scale * noise, x_mean


def step_drift_sign(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    if noise is None:
        noise = torch.randn_like(x)
    return _step(score_fn, x, t, dt, beta_min, beta_max, noise, x_coef=-0.5)  # the forward drift's −½βx kept


def step_noise_dt(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    if noise is None:
        noise = torch.randn_like(x)
    return _step(score_fn, x, t, dt, beta_min, beta_max, noise, noise_kind="dt")  # √β·dt: dt where √dt belongs


def step_half_score(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    if noise is None:
        noise = torch.randn_like(x)
    return _step(score_fn, x, t, dt, beta_min, beta_max, noise, score_coef=0.5)  # the ODE's ½ in the SDE


def step_discrete_beta(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    if noise is None:
        noise = torch.randn_like(x)
    return _step(score_fn, x, t, dt, beta_min, beta_max, noise, beta_scale=dt)  # β_t = β(t)·dt for the rate β(t)


def step_noise_beta_not_sqrt(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    if noise is None:
        noise = torch.randn_like(x)
    return _step(score_fn, x, t, dt, beta_min, beta_max, noise, noise_kind="beta")  # β·√dt


def flow_without_half(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0):
    return _step(score_fn, x, t, dt, beta_min, beta_max, None, score_coef=1.0)  # the SDE's drift, no ½ on the score


def flow_drift_sign(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0):
    return _step(score_fn, x, t, dt, beta_min, beta_max, None, x_coef=-0.5, score_coef=0.5)


def flow_score_sign(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0):
    return _step(score_fn, x, t, dt, beta_min, beta_max, None, score_coef=-0.5)  # f − ½g²s read as f + ½g²s


# -- bugs: sde_sample -----------------------------------------------------------------------------


def _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T, *, grid=None,
             dt=None, end="x_mean", draw=None, start_dtype=None):
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=start_dtype or torch.get_default_dtype())
    x = x_mean = x_T
    step = 1.0 / n_steps if dt is None else dt(n_steps, eps)
    ts = torch.linspace(1.0, eps, n_steps, dtype=torch.float64) if grid is None else grid(n_steps, eps)
    for t in ts.tolist():
        t_b = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        if probability_flow:
            x = x_mean = ref.probability_flow_step(score_fn, x, t_b, step, beta_min, beta_max)
        else:
            z = draw(x, generator) if draw else torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x, x_mean = ref.reverse_sde_step(score_fn, x, t_b, step, beta_min, beta_max, noise=z)
    return x if end == "x" else x_mean


def sample_grid_spacing_dt(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                           generator=None, x_T=None):
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T,
                    dt=lambda n, e: (1 - e) / max(n - 1, 1))  # the grid's spacing


def sample_returns_noisy_x(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                           generator=None, x_T=None):
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T, end="x")


def sample_arange_grid(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                       generator=None, x_T=None):
    grid = lambda n, e: 1 - torch.arange(n, dtype=torch.float64) / n  # noqa: E731  t = 1, 1 − 1/n, …, 1/n
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T, grid=grid)


def sample_ascending_grid(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                          generator=None, x_T=None):
    grid = lambda n, e: torch.linspace(e, 1.0, n, dtype=torch.float64)  # noqa: E731  forward in time
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T, grid=grid)


def sample_global_rng(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                      generator=None, x_T=None):
    if x_T is None:
        x_T = torch.randn(shape)  # the generator ignored
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, None, x_T)


def sample_noise_shared_by_batch(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3,
                                 probability_flow=False, generator=None, x_T=None):
    draw = lambda x, g: torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)  # noqa: E731
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T, draw=draw)


def sample_start_float64(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                         generator=None, x_T=None):
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, probability_flow, generator, x_T,
                    start_dtype=torch.float64)


def sample_ode_with_sde_step(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                             generator=None, x_T=None):
    # the flag ignored: always the reverse SDE
    return _sampler(score_fn, shape, n_steps, beta_min, beta_max, eps, False, generator, x_T)


BUGS = [
    Bug("β(t) on DDPM's β_t scale", "vp_beta", beta_discrete_scale, "β(t)/1000, the discrete schedule's β_t"),
    Bug("β(t) without −β_min", "vp_beta", beta_without_subtraction, "β_min + t·β_max"),
    Bug("std without the square root", "vp_marginal", marginal_std_is_variance, "returns 1 − mean_coef²"),
    Bug("mean_coef is ᾱ(t)", "vp_marginal", marginal_mean_is_alpha_bar, "exp(−∫₀ᵗβ): the squared coefficient"),
    Bug("¼ read as ½", "vp_marginal", marginal_quarter_as_half, "−½t²(β_max − β_min) − ½tβ_min"),
    Bug("DSM without the ½", "dsm_loss", dsm_without_half, "Σ (σs + z)²"),
    Bug("DSM mean over dimensions", "dsm_loss", dsm_mean_over_dims, "½·mean instead of ½·sum"),
    Bug("DSM perturbs without mean_coef", "dsm_loss", dsm_without_mean_coef, "x_t = x₀ + σz"),
    Bug("DSM target +z", "dsm_loss", dsm_target_sign, "½‖σs − z‖²"),
    Bug("DSM unweighted", "dsm_loss", dsm_unweighted, "½‖s + z/σ‖², λ(t) = 1 instead of σ²"),
    Bug("reverse step keeps the forward drift's sign", "reverse_sde_step", step_drift_sign, "x + (−½βx + βs)·dt"),
    Bug("reverse step noise √β·dt", "reverse_sde_step", step_noise_dt, "dt where √dt belongs"),
    Bug("reverse step with the ODE's ½", "reverse_sde_step", step_half_score, "x + (½βx + ½βs)·dt + …"),
    Bug("reverse step with β_t = β(t)·dt", "reverse_sde_step", step_discrete_beta, "the rate scaled by dt twice"),
    Bug("reverse step noise β·√dt", "reverse_sde_step", step_noise_beta_not_sqrt, "β where √β belongs"),
    Bug("ODE without the ½", "probability_flow_step", flow_without_half, "x + (½βx + βs)·dt"),
    Bug("ODE keeps the forward drift's sign", "probability_flow_step", flow_drift_sign, "x + (−½βx + ½βs)·dt"),
    Bug("ODE score sign", "probability_flow_step", flow_score_sign, "x + (½βx − ½βs)·dt"),
    Bug("sampler with dt the grid's spacing", "sde_sample", sample_grid_spacing_dt, "dt = (1 − eps)/(n − 1)"),
    Bug("sampler returns the noisy x", "sde_sample", sample_returns_noisy_x, "the last step's x, not x_mean"),
    Bug("sampler on t = 1 − i/n", "sde_sample", sample_arange_grid, "arange grid, ending at 1/n instead of eps"),
    Bug("sampler forward in time", "sde_sample", sample_ascending_grid, "linspace(eps, 1, n)"),
    Bug("sampler ignores the generator", "sde_sample", sample_global_rng, "torch.randn from the global RNG"),
    Bug("sampler shares noise across the batch", "sde_sample", sample_noise_shared_by_batch, "randn(shape[1:])"),
    Bug("sampler starts in float64", "sde_sample", sample_start_float64, "x_T drawn in float64"),
    Bug("sampler ignores probability_flow", "sde_sample", sample_ode_with_sde_step, "always the reverse SDE"),
]

# -- correct alternatives -------------------------------------------------------------------------


def marginal_expm1(t, beta_min=0.1, beta_max=20.0):
    log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return torch.exp(log_mean), torch.sqrt(-torch.expm1(2 * log_mean))  # the accurate std


def marginal_via_integral(t, beta_min=0.1, beta_max=20.0):
    integral = t * beta_min + 0.5 * t**2 * (beta_max - beta_min)  # ∫₀ᵗ β(s) ds
    alpha_bar = torch.exp(-integral)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def dsm_float64_inside(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    t64 = _t(t, x0).double()
    m, s = ref.vp_marginal(t64, beta_min, beta_max)
    m, s = m.reshape(-1, *([1] * (x0.ndim - 1))), s.reshape(-1, *([1] * (x0.ndim - 1)))
    xt = (m * x0.double() + s * noise.double()).to(x0.dtype)
    score = score_fn(xt, _t(t, x0)).double()
    return (0.5 * ((s * score + noise.double()) ** 2).reshape(x0.shape[0], -1).sum(1)).to(x0.dtype)


def dsm_target_form(score_fn, x0, t, beta_min=0.1, beta_max=20.0, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    t = _t(t, x0)
    m, s = (_b(v, x0) for v in ref.vp_marginal(t, beta_min, beta_max))
    score = score_fn(m * x0 + s * noise, t)
    target = -noise / s  # regression onto −z/σ, weighted by λ(t) = σ²
    return 0.5 * (s**2 * (score - target) ** 2).reshape(x0.shape[0], -1).sum(1)


def step_float64_inside(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    t = _t(t, x)
    beta = _b(ref.vp_beta(t.double(), beta_min, beta_max), x.double())
    x64 = x.double()
    x_mean = x64 + (0.5 * beta * x64 + beta * score_fn(x, t).double()) * dt
    return (x_mean + (beta * dt).sqrt() * noise.double()).to(x.dtype), x_mean.to(x.dtype)


def step_score_sde_form(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    t = _t(t, x)
    beta = _b(ref.vp_beta(t, beta_min, beta_max), x)
    drift = -0.5 * beta * x - beta * score_fn(x, t)  # score_sde: reverse drift f − g²s with a negative dt
    x_mean = x + drift * (-dt)
    return x_mean + beta.sqrt() * (dt**0.5) * noise, x_mean


def flow_regrouped(score_fn, x, t, dt, beta_min=0.1, beta_max=20.0):
    t = _t(t, x)
    beta = _b(ref.vp_beta(t, beta_min, beta_max), x)
    return x + 0.5 * beta * dt * (x + score_fn(x, t))


def sample_noise_first(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                       generator=None, x_T=None):
    device = generator.device if generator is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    dtype = x_T.dtype if x_T is not None else torch.get_default_dtype()
    noises = None if probability_flow else torch.randn((n_steps, *shape), generator=generator, device=device,
                                                        dtype=dtype)  # every step's noise first, then the start
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = x_mean = x_T
    for i, t in enumerate(torch.linspace(1.0, eps, n_steps, dtype=torch.float64).tolist()):
        t_b = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        if probability_flow:
            x = x_mean = ref.probability_flow_step(score_fn, x, t_b, 1 / n_steps, beta_min, beta_max)
        else:
            x, x_mean = ref.reverse_sde_step(score_fn, x, t_b, 1 / n_steps, beta_min, beta_max,
                                             noise=noises[i].to(x.device))
    return x_mean


def sample_float64_inside(score_fn, shape, n_steps, beta_min=0.1, beta_max=20.0, eps=1e-3, probability_flow=False,
                          generator=None, x_T=None):
    if x_T is None:
        device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.get_default_dtype())
    x = x_T.double()
    dt = 1 / n_steps
    for t in torch.linspace(1.0, eps, n_steps, dtype=torch.float64).tolist():
        t_b = torch.full((x.shape[0],), t, device=x.device, dtype=x_T.dtype)
        beta = beta_min + t * (beta_max - beta_min)
        score = score_fn(x.to(x_T.dtype), t_b).double()
        if probability_flow:
            x = x + 0.5 * beta * (x + score) * dt
        else:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_T.dtype).double()
            x_mean = x + (0.5 * beta * x + beta * score) * dt
            x = x_mean + (beta * dt) ** 0.5 * z
    return (x if probability_flow else x_mean).to(x_T.dtype)


ALTERNATIVES = [
    Alternative("std by expm1", "vp_marginal", marginal_expm1, "√(−expm1(2 log mean_coef))"),
    Alternative("marginal through ᾱ(t)", "vp_marginal", marginal_via_integral, "ᾱ = exp(−∫β), √ᾱ and √(1 − ᾱ)"),
    Alternative("DSM in float64", "dsm_loss", dsm_float64_inside, "coefficients and the sum in float64, cast back"),
    Alternative("DSM as weighted regression onto −z/σ", "dsm_loss", dsm_target_form, "½σ²‖s − (−z/σ)‖²"),
    Alternative("reverse step in float64", "reverse_sde_step", step_float64_inside, "float64 inside, cast back"),
    Alternative("reverse step as score_sde writes it", "reverse_sde_step", step_score_sde_form,
                "drift f − g²s times −dt, noise g·√dt"),
    Alternative("ODE step regrouped", "probability_flow_step", flow_regrouped, "x + ½β·dt·(x + s)"),
    Alternative("sampler draws every noise first", "sde_sample", sample_noise_first,
                "the n step noises in one draw, then the start"),
    Alternative("sampler in float64", "sde_sample", sample_float64_inside, "the chain in float64, cast back"),
]
