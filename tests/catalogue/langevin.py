"""langevin: realistic bugs and correct alternatives."""

from __future__ import annotations

import math

import numpy as np
import torch

from reference import langevin as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _sigma_batch(sigma, x):
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _g2(sigma, sigma_next):
    return float(sigma) ** 2 - float(sigma_next) ** 2


def _norms(v):
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)


# -- bugs ------------------------------------------------------------------------------------


def ve_sigmas_ascending(sigma_min, sigma_max, n):
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n, dtype=torch.float64))


def ve_sigmas_linear(sigma_min, sigma_max, n):
    return torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)


def ve_sigmas_float32(sigma_min, sigma_max, n):
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n)  # default dtype: float32


def langevin_full_step_score(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(n_steps):
        x = x + step_size * score_fn(x) + math.sqrt(step_size) * _randn(x, generator)  # α·s, not (α/2)·s
    return x


def langevin_noise_step_size(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(n_steps):
        x = x + step_size / 2 * score_fn(x) + step_size * _randn(x, generator)  # α·z, not √α·z
    return x


def langevin_off_by_one(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(1, n_steps):  # "steps 1…n_steps"
        x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * _randn(x, generator)
    return x


def langevin_global_rng(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(n_steps):
        x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * torch.randn_like(x)  # generator ignored
    return x


def langevin_shared_noise(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(n_steps):
        z = torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=x.dtype)  # one z for the batch
        x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * z
    return x


def langevin_noise_before_score(score_fn, x, step_size, n_steps, generator=None):
    for _ in range(n_steps):
        x = x + math.sqrt(step_size) * _randn(x, generator)
        x = x + step_size / 2 * score_fn(x)  # the score of the already-noised x
    return x


def annealed_ratio_not_squared(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    for sigma in sigmas:
        alpha = float(step_lr * sigma / sigmas[-1])
        for _ in range(n_steps_each):
            x = x + alpha / 2 * score_fn(x, _sigma_batch(sigma, x)) + math.sqrt(alpha) * _randn(x, generator)
    return x


def annealed_ratio_over_first(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    for sigma in sigmas:
        alpha = float(step_lr * (sigma / sigmas[0]) ** 2)  # σ_i/σ_0 instead of σ_i/σ_L
        for _ in range(n_steps_each):
            x = x + alpha / 2 * score_fn(x, _sigma_batch(sigma, x)) + math.sqrt(alpha) * _randn(x, generator)
    return x


def annealed_ncsn_code_step(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    """The authors' code's x + ε·s + √(2ε)·z with ε = step_lr·(σ_i/σ_L)²: steps twice the paper's."""
    for sigma in sigmas:
        eps = float(step_lr * (sigma / sigmas[-1]) ** 2)
        for _ in range(n_steps_each):
            x = x + eps * score_fn(x, _sigma_batch(sigma, x)) + math.sqrt(2 * eps) * _randn(x, generator)
    return x


def annealed_scalar_sigma(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    for sigma in sigmas:
        alpha = float(step_lr * (sigma / sigmas[-1]) ** 2)
        for _ in range(n_steps_each):
            x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * _randn(x, generator)  # σ not a (B,) tensor
    return x


def annealed_last_level_only(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    sigma = sigmas[-1]  # "annealing" forgotten: every step at the smallest σ
    for _ in range(len(sigmas) * n_steps_each):
        x = x + step_lr / 2 * score_fn(x, _sigma_batch(sigma, x)) + math.sqrt(step_lr) * _randn(x, generator)
    return x


def predictor_full_variance(score_fn, x, sigma, sigma_next, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    g2 = float(sigma) ** 2  # σ² where σ² − σ_next² belongs
    x_mean = x + g2 * score_fn(x, _sigma_batch(sigma, x))
    return x_mean + math.sqrt(g2) * noise, x_mean


def predictor_score_at_next(score_fn, x, sigma, sigma_next, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    g2 = _g2(sigma, sigma_next)
    x_mean = x + g2 * score_fn(x, _sigma_batch(sigma_next, x))
    return x_mean + math.sqrt(g2) * noise, x_mean


def predictor_noise_variance(score_fn, x, sigma, sigma_next, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    g2 = _g2(sigma, sigma_next)
    x_mean = x + g2 * score_fn(x, _sigma_batch(sigma, x))
    return x_mean + g2 * noise, x_mean  # g², not g


def predictor_returns_swapped(score_fn, x, sigma, sigma_next, noise=None):
    out, out_mean = ref.reverse_diffusion_predictor(score_fn, x, sigma, sigma_next, noise=noise)
    return out_mean, out


def corrector_whole_batch_norm(score_fn, x, sigma, snr, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    score = score_fn(x, _sigma_batch(sigma, x))
    eps = 2 * (snr * torch.norm(noise) / torch.norm(score)) ** 2  # one norm over the whole batch
    x_mean = x + eps * score
    return x_mean + torch.sqrt(2 * eps) * noise, x_mean


def corrector_no_factor_two(score_fn, x, sigma, snr, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    score = score_fn(x, _sigma_batch(sigma, x))
    eps = (snr * _norms(noise).mean() / _norms(score).mean()) ** 2
    x_mean = x + eps * score
    return x_mean + torch.sqrt(2 * eps) * noise, x_mean


def corrector_noise_sqrt_eps(score_fn, x, sigma, snr, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    score = score_fn(x, _sigma_batch(sigma, x))
    eps = 2 * (snr * _norms(noise).mean() / _norms(score).mean()) ** 2
    x_mean = x + eps * score
    return x_mean + torch.sqrt(eps) * noise, x_mean  # √ε, not √(2ε)


def corrector_per_sample_step(score_fn, x, sigma, snr, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    score = score_fn(x, _sigma_batch(sigma, x))
    eps = 2 * (snr * _norms(noise) / _norms(score)) ** 2  # one ε per sample, not averaged norms
    eps = eps.reshape(-1, *([1] * (x.ndim - 1)))
    x_mean = x + eps * score
    return x_mean + torch.sqrt(2 * eps) * noise, x_mean


def _pc(score_fn, shape, sigmas, snr, n_corrector, generator, *, order="cp", final="mean", start_scale=True,
        levels=None, keep_noise=True, start_dtype=None, shared_noise=False, rng=None):
    """A pc_sample with one mistake switched on (the keyword arguments)."""
    device = generator.device if generator is not None else torch.device("cpu")
    draw = rng or (lambda x: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    x = torch.randn(shape, generator=generator, device=device, dtype=start_dtype or torch.get_default_dtype())
    if start_scale:
        x = sigmas[0] * x
    n = len(sigmas) if levels is None else levels
    x_mean = x
    for i in range(n):
        sigma = sigmas[i]
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else torch.zeros_like(sigma)
        z_shared = draw(x) if shared_noise else None

        def correct(x):
            for _ in range(n_corrector):
                x, _ = ref.langevin_corrector(score_fn, x, sigma, snr, noise=z_shared if shared_noise else draw(x))
            return x

        if order == "cp":
            x = correct(x)
            x, x_mean = ref.reverse_diffusion_predictor(score_fn, x, sigma, sigma_next,
                                                        noise=z_shared if shared_noise else draw(x))
        else:  # predictor first, then the corrector at the same σ_i
            x, x_mean = ref.reverse_diffusion_predictor(score_fn, x, sigma, sigma_next, noise=draw(x))
            for _ in range(n_corrector):
                x, x_mean = ref.langevin_corrector(score_fn, x, sigma, snr, noise=draw(x))
        if not keep_noise:
            x = x_mean
    return x_mean if final == "mean" else x


def pc_returns_noisy_x(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, final="x")


def pc_predictor_then_corrector(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, order="pc")


def pc_unscaled_start(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, start_scale=False)


def pc_missing_last_step(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, levels=len(sigmas) - 1)


def pc_chain_from_x_mean(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, keep_noise=False)


def pc_start_in_float64(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, start_dtype=sigmas.dtype)


def pc_same_noise_each_level(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, shared_noise=True)


def pc_global_rng(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    return _pc(score_fn, shape, sigmas, snr, n_corrector, generator, rng=torch.randn_like)


BUGS = [
    Bug("ve_sigmas ascending", "ve_sigmas", ve_sigmas_ascending, "from sigma_min up to sigma_max"),
    Bug("ve_sigmas evenly spaced", "ve_sigmas", ve_sigmas_linear, "linspace in place of a geometric sequence"),
    Bug("ve_sigmas in float32", "ve_sigmas", ve_sigmas_float32, "torch.logspace without dtype"),
    Bug("Langevin with α·∇log p", "langevin_dynamics", langevin_full_step_score, "step_size, not step_size/2, on the score"),
    Bug("Langevin noise scaled by α", "langevin_dynamics", langevin_noise_step_size, "step_size·z, not √step_size·z"),
    Bug("Langevin one step short", "langevin_dynamics", langevin_off_by_one, "range(1, n_steps)"),
    Bug("Langevin ignores the generator", "langevin_dynamics", langevin_global_rng, "torch.randn_like"),
    Bug("Langevin shares noise across the batch", "langevin_dynamics", langevin_shared_noise, "randn(x.shape[1:])"),
    Bug("Langevin adds the noise before the score step", "langevin_dynamics", langevin_noise_before_score,
        "the score evaluated at the already-noised x"),
    Bug("annealing ratio not squared", "annealed_langevin_dynamics", annealed_ratio_not_squared,
        "α_i = step_lr·σ_i/σ_L"),
    Bug("annealing ratio over the first σ", "annealed_langevin_dynamics", annealed_ratio_over_first,
        "α_i = step_lr·(σ_i/σ_0)²"),
    Bug("annealed steps with the authors' code's convention", "annealed_langevin_dynamics", annealed_ncsn_code_step,
        "x + ε·s + √(2ε)·z with ε = step_lr·(σ_i/σ_L)²: steps twice the paper's"),
    Bug("annealed score called with a 0-dim σ", "annealed_langevin_dynamics", annealed_scalar_sigma,
        "score_fn(x, sigma) with sigma an element of sigmas, not a (B,) tensor"),
    Bug("no annealing", "annealed_langevin_dynamics", annealed_last_level_only,
        "every step at the smallest σ with step_lr"),
    Bug("predictor with σ²", "reverse_diffusion_predictor", predictor_full_variance, "g² = σ², not σ² − σ_next²"),
    Bug("predictor score at σ_next", "reverse_diffusion_predictor", predictor_score_at_next, "s(x, σ_next)"),
    Bug("predictor noise scaled by g²", "reverse_diffusion_predictor", predictor_noise_variance, "g²·z, not g·z"),
    Bug("predictor returns (x_mean, x)", "reverse_diffusion_predictor", predictor_returns_swapped, "outputs swapped"),
    Bug("corrector norms over the whole batch", "langevin_corrector", corrector_whole_batch_norm,
        "torch.norm(noise)/torch.norm(score) over every entry"),
    Bug("corrector step without the factor 2", "langevin_corrector", corrector_no_factor_two,
        "ε = (snr·‖z‖/‖s‖)²"),
    Bug("corrector noise scaled by √ε", "langevin_corrector", corrector_noise_sqrt_eps, "√ε·z, not √(2ε)·z"),
    Bug("corrector step per sample", "langevin_corrector", corrector_per_sample_step,
        "ε_b = 2(snr·‖z_b‖/‖s_b‖)², not averaged norms"),
    Bug("pc_sample returns the noisy x", "pc_sample", pc_returns_noisy_x, "the last step adds noise"),
    Bug("pc_sample predictor before corrector", "pc_sample", pc_predictor_then_corrector,
        "the predictor first, then the corrector at the same σ_i"),
    Bug("pc_sample starts at z", "pc_sample", pc_unscaled_start, "x = z, not σ_0·z"),
    Bug("pc_sample misses the last step", "pc_sample", pc_missing_last_step,
        "range(len(sigmas) − 1): no final step to σ = 0"),
    Bug("pc_sample continues from x_mean", "pc_sample", pc_chain_from_x_mean, "the noise of every step dropped"),
    Bug("pc_sample starts in float64", "pc_sample", pc_start_in_float64, "x drawn in sigmas' dtype"),
    Bug("pc_sample reuses one noise per level", "pc_sample", pc_same_noise_each_level,
        "the same z for the corrector and the predictor"),
    Bug("pc_sample ignores the generator", "pc_sample", pc_global_rng, "torch.randn_like in the loop"),
]

# -- correct alternatives ----------------------------------------------------------------------


def ve_sigmas_numpy(sigma_min, sigma_max, n):
    return torch.from_numpy(np.geomspace(sigma_max, sigma_min, n))


def ve_sigmas_power(sigma_min, sigma_max, n):
    i = torch.arange(n, dtype=torch.float64)
    return sigma_max * (sigma_min / sigma_max) ** (i / (n - 1))


def langevin_noise_up_front(score_fn, x, step_size, n_steps, generator=None):
    """Every step's noise drawn at once, before the loop (another order of draws)."""
    z = torch.randn((n_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    for k in range(n_steps):
        x = x + step_size / 2 * score_fn(x) + step_size**0.5 * z[k]
    return x


def langevin_float64_rows(score_fn, x, step_size, n_steps, generator=None):
    """float64 inside, one sample at a time (the score called on rows), cast back."""
    rows = []
    for b in range(x.shape[0]):
        y = x[b: b + 1].double()
        for _ in range(n_steps):
            z = torch.randn(y.shape, generator=generator, device=y.device, dtype=torch.float64)
            y = y + 0.5 * step_size * score_fn(y.to(x.dtype)).double() + math.sqrt(step_size) * z
        rows.append(y)
    return torch.cat(rows).to(x.dtype) if rows else x


def annealed_noise_per_level(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    """A block of noise per level, drawn up front; α from Python floats."""
    last = float(sigmas[-1])
    for sigma in sigmas.tolist():
        alpha = step_lr * (sigma / last) ** 2
        z = torch.randn((n_steps_each, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        level = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        for k in range(n_steps_each):
            x = x + (alpha / 2) * score_fn(x, level) + math.sqrt(alpha) * z[k]
    return x


def annealed_float64(score_fn, x, sigmas, step_lr, n_steps_each, generator=None):
    y = x.double()
    for sigma in sigmas.double():
        alpha = step_lr * (sigma / sigmas[-1].double()) ** 2
        level = sigma.expand(x.shape[0]).to(x.dtype)
        for _ in range(n_steps_each):
            z = torch.randn(y.shape, generator=generator, device=y.device, dtype=torch.float64)
            y = y + alpha / 2 * score_fn(y.to(x.dtype), level).double() + alpha.sqrt() * z
    return y.to(x.dtype)


def predictor_float64(score_fn, x, sigma, sigma_next, noise=None):
    noise = torch.randn_like(x) if noise is None else noise
    g2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2 - torch.as_tensor(sigma_next, dtype=torch.float64) ** 2
    score = score_fn(x, torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device))
    x_mean = (x.double() + g2 * score.double())
    return (x_mean + g2.sqrt() * noise.double()).to(x.dtype), x_mean.to(x.dtype)


def corrector_sum_of_squares(score_fn, x, sigma, snr, noise=None):
    """Norms as √Σ over non-batch dims (loop-free), ε in float64."""
    noise = torch.randn_like(x) if noise is None else noise
    score = score_fn(x, _sigma_batch(sigma, x))
    dims = tuple(range(1, x.ndim))
    s_norm = (score.double() ** 2).sum(dims).sqrt().mean() if dims else score.double().abs().mean()
    z_norm = (noise.double() ** 2).sum(dims).sqrt().mean() if dims else noise.double().abs().mean()
    eps = float(2 * (snr * z_norm / s_norm) ** 2)
    x_mean = x + eps * score
    return x_mean + math.sqrt(2 * eps) * noise, x_mean


def pc_predictor_noise_first(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    """At each level the predictor's noise is drawn before the correctors'; the final noise is never drawn."""
    device = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(shape, generator=generator, device=device) * float(sigmas[0])
    x_mean = x
    n = len(sigmas)
    for i in range(n):
        z_pred = torch.randn(shape, generator=generator, device=device) if i + 1 < n else torch.zeros(shape, device=device)
        zs = torch.randn((n_corrector, *shape), generator=generator, device=device)
        for k in range(n_corrector):
            x, _ = ref.langevin_corrector(score_fn, x, float(sigmas[i]), snr, noise=zs[k])
        sigma_next = float(sigmas[i + 1]) if i + 1 < n else 0.0
        x, x_mean = ref.reverse_diffusion_predictor(score_fn, x, float(sigmas[i]), sigma_next, noise=z_pred)
    return x_mean


def pc_float64_inside(score_fn, shape, sigmas, snr=0.16, n_corrector=1, generator=None):
    """The chain in float64 (the score called in float64), the result cast to the default dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    x = sigmas[0].double() * torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    x_mean = x
    for i in range(len(sigmas)):
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        for _ in range(n_corrector):
            x, _ = ref.langevin_corrector(score_fn, x, sigmas[i], snr, generator=generator)
        x, x_mean = ref.reverse_diffusion_predictor(score_fn, x, sigmas[i], sigma_next, generator=generator)
    return x_mean.to(torch.get_default_dtype())


ALTERNATIVES = [
    Alternative("ve_sigmas with numpy", "ve_sigmas", ve_sigmas_numpy, "np.geomspace"),
    Alternative("ve_sigmas as powers", "ve_sigmas", ve_sigmas_power, "σ_max·(σ_min/σ_max)^(i/(n−1))"),
    Alternative("Langevin noise drawn up front", "langevin_dynamics", langevin_noise_up_front,
                "noise drawn in another order"),
    Alternative("Langevin in float64 row by row", "langevin_dynamics", langevin_float64_rows,
                "a loop over samples, float64 inside"),
    Alternative("annealed noise per level", "annealed_langevin_dynamics", annealed_noise_per_level,
                "a block of noise per level, Python-float steps"),
    Alternative("annealed in float64", "annealed_langevin_dynamics", annealed_float64, "float64 inside"),
    Alternative("predictor in float64", "reverse_diffusion_predictor", predictor_float64, "float64 inside"),
    Alternative("corrector with sums of squares", "langevin_corrector", corrector_sum_of_squares,
                "norms as √Σ², ε in float64"),
    Alternative("pc_sample predictor noise first", "pc_sample", pc_predictor_noise_first,
                "noise drawn in another order; the final noise not drawn"),
    Alternative("pc_sample in float64", "pc_sample", pc_float64_inside, "the chain in float64"),
]
