"""Does reference.cfg agree with diffusers and the CFG++ authors, and is guided DDIM's law exact?

Oracles:

* diffusers' ``rescale_noise_cfg`` — the copy in the Stable Diffusion pipeline module
  (read from that file's source: importing the pipeline needs ``transformers``, which the
  course does not install) and the importable one in ``diffusers.guiders.guider_utils``;
  diffusers' ``ClassifierFreeGuidance`` guider for the combination (with its rescale);
* the schedulers' ``_threshold_sample`` (``DDPMScheduler(thresholding=True)``) with an
  uncapped ``sample_max_value``;
* diffusers' ``DDIMScheduler.step`` driven as the Stable Diffusion pipeline drives it
  (``noise_pred_uncond + w·(noise_pred_text − noise_pred_uncond)`` from a batch of 2B);
* the CFG++ authors' DDIM update (``BaseDDIMCFGpp.sample`` in CFGpp-diffusion/CFGpp's
  ``latent_diffusion.py``), restated below since the repository is not a package;
* the exact affine law of guided DDIM on class-conditional Gaussians (reference.laws),
  and a Monte-Carlo check of it;
* for the toys, the implicit classifier: ε_c − ε_u = −√(1 − ᾱ)·∇ₓ log p(c | x) with
  p(c | x) from Bayes' rule, by autograd.

Round-off: everything is float64 on values of size ≲ 10; one formula is a few dozen
operations, so 1e-12 absolute is ~100x above its round-off; the DDIM chains divide by
√ᾱ_t ≥ 1/160 (linear schedule, T = 1000) at most ~50 times, so 1e-9 covers them.
"""

from __future__ import annotations

import ast
import math
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference import cfg
from reference.ddim import ddim_sample, ddim_step
from reference.laws import cfg_sample_law
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule
from reference.toy import ClassConditionalGaussians, ClassConditionalMixture, GaussianData, GaussianMixture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import diffusers
    from diffusers import DDIMScheduler, DDPMScheduler

    try:  # diffusers ≥ 0.35 (the guiders); the pipeline's own rescale_noise_cfg is read from its source below
        from diffusers.guiders import ClassifierFreeGuidance
        from diffusers.guiders.guider_utils import rescale_noise_cfg as guider_rescale_noise_cfg
    except ImportError:  # pragma: no cover -- older diffusers
        ClassifierFreeGuidance = guider_rescale_noise_cfg = None

needs_guiders = pytest.mark.skipif(ClassifierFreeGuidance is None, reason="diffusers.guiders needs diffusers ≥ 0.35")

ATOL = 1e-12  # a few dozen float64 operations on O(10) values: see the module docstring
CHAIN_ATOL = 1e-9  # a DDIM chain of ≤ 50 steps, each amplifying by ≤ 160: see the module docstring
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=40)

shapes = st.tuples(st.integers(1, 4), st.lists(st.integers(2, 5), min_size=1, max_size=3).map(tuple)).map(
    lambda bs: (bs[0], *bs[1]))
scales = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 7.5]), st.floats(-3, 15, allow_nan=False))


def _randn(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _sd_pipeline_rescale_noise_cfg():
    """``rescale_noise_cfg`` exactly as written in diffusers' Stable Diffusion pipeline module (parsed, not imported)."""
    path = diffusers.__file__.replace("__init__.py", "pipelines/stable_diffusion/pipeline_stable_diffusion.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "rescale_noise_cfg")
    namespace = {"torch": torch}
    exec(compile(ast.Module([node], []), path, "exec"), namespace)  # noqa: S102 -- diffusers' own source
    return namespace["rescale_noise_cfg"]


SD_RESCALE_NOISE_CFG = _sd_pipeline_rescale_noise_cfg()


# --- cfg_combine ------------------------------------------------------------------------------


@needs_guiders
@PROPERTY
@given(shape=shapes, w=scales, seed=st.integers(0, 2**16))
@example(shape=(2, 3), w=0.0, seed=0)
@example(shape=(2, 3), w=1.0, seed=0)
def test_combine_is_diffusers_classifier_free_guidance(shape, w, seed):
    """Is cfg_combine diffusers' ClassifierFreeGuidance guider (its w = 1 short-cut included)?"""
    eps_u, eps_c = _randn(shape, seed), _randn(shape, seed + 1)
    guider = ClassifierFreeGuidance(guidance_scale=w)
    expected = guider.forward(eps_c, eps_u).pred
    torch.testing.assert_close(cfg.cfg_combine(eps_u, eps_c, w), expected, rtol=0, atol=ATOL * max(1, abs(w)))


def test_combine_at_zero_and_one_is_the_unconditional_and_conditional_model():
    eps_u, eps_c = _randn((3, 4), 0), _randn((3, 4), 1)
    assert torch.equal(cfg.cfg_combine(eps_u, eps_c, 0.0), eps_u)
    torch.testing.assert_close(cfg.cfg_combine(eps_u, eps_c, 1.0), eps_c, rtol=0, atol=ATOL)
    # Ho & Salimans' (1 + w')·ε_c − w'·ε_u is the same combination with w = 1 + w'.
    torch.testing.assert_close(cfg.cfg_combine(eps_u, eps_c, 4.0), 4.0 * eps_c - 3.0 * eps_u, rtol=0, atol=ATOL)


# --- guided_eps and composed_eps: one batched call --------------------------------------------


class Recording:
    """A conditional model that records each call and answers ε = x·(1 + cond) + t/1000 (row-distinct)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone(), cond.clone()))
        c = cond.to(x.dtype).reshape(cond.shape[0], *([1] * (x.ndim - 1)))
        return x * (1 + c) + t.to(x.dtype).reshape(c.shape) / 1000


@PROPERTY
@given(shape=shapes, w=scales, seed=st.integers(0, 2**16))
def test_guided_eps_makes_one_call_on_uncond_then_cond(shape, w, seed):
    """One call of batch 2B: x and t repeated, conditions [uncond; cond]; the halves combined as cfg_combine."""
    B = shape[0]
    x = _randn(shape, seed)
    t = torch.arange(B) * 7 + 3
    cond, uncond = torch.arange(B) + 1, torch.zeros(B, dtype=torch.long) - 1
    model = Recording()
    out = cfg.guided_eps(model, x, t, cond, uncond, w)
    assert len(model.calls) == 1
    x_in, t_in, c_in = model.calls[0]
    assert torch.equal(x_in, torch.cat([x, x])) and torch.equal(t_in, torch.cat([t, t]))
    assert torch.equal(c_in, torch.cat([uncond, cond]))
    expected = cfg.cfg_combine(Recording()(x, t, uncond), Recording()(x, t, cond), w)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL * max(1, abs(w)))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_composed_eps_makes_one_call_of_k_plus_one_blocks(k):
    """[uncond; c_1; …; c_k] in one call; ε_u + Σ w_i (ε_i − ε_u); k = 1 is guided_eps; a tensor of conds works too."""
    B = 3
    x, t = _randn((B, 2, 2), k), torch.tensor([5, 9, 1])
    conds = [torch.full((B,), i + 1) for i in range(k)]
    weights = [2.0, -1.5, 0.5][:k]
    uncond = torch.zeros(B, dtype=torch.long)
    model = Recording()
    out = cfg.composed_eps(model, x, t, conds, weights, uncond)
    assert len(model.calls) == 1
    x_in, t_in, c_in = model.calls[0]
    assert x_in.shape[0] == (k + 1) * B and torch.equal(t_in, torch.cat([t] * (k + 1)))
    assert torch.equal(c_in, torch.cat([uncond, *conds]))
    eps_u = Recording()(x, t, uncond)
    expected = eps_u + sum(w * (Recording()(x, t, c) - eps_u) for w, c in zip(weights, conds))
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(cfg.composed_eps(Recording(), x, t, torch.stack(conds), weights, uncond), out)
    if k == 1:
        torch.testing.assert_close(out, cfg.guided_eps(Recording(), x, t, conds[0], uncond, weights[0]))


# --- rescale_guidance ---------------------------------------------------------------------------


@PROPERTY
@given(shape=shapes, phi=st.one_of(st.sampled_from([0.0, 1.0, 0.7]), st.floats(0, 1)), seed=st.integers(0, 2**16),
       spread=st.floats(0.1, 10))
@example(shape=(1, 2), phi=1.0, seed=0, spread=1.0)
def test_rescale_guidance_is_diffusers_rescale_noise_cfg(shape, phi, seed, spread):
    """Is rescale_guidance the Stable Diffusion pipeline's rescale_noise_cfg (and the guiders' copy of it)?"""
    eps_cfg, eps_c = _randn(shape, seed, spread), _randn(shape, seed + 1)
    out = cfg.rescale_guidance(eps_cfg, eps_c, phi)
    torch.testing.assert_close(out, SD_RESCALE_NOISE_CFG(eps_cfg, eps_c, guidance_rescale=phi), rtol=1e-12, atol=ATOL)
    if guider_rescale_noise_cfg is not None:
        torch.testing.assert_close(out, guider_rescale_noise_cfg(eps_cfg, eps_c, guidance_rescale=phi), rtol=1e-12,
                                   atol=ATOL)


def test_rescale_guidance_restores_the_conditional_std_per_sample():
    """φ = 1 gives each sample the std of its ε_c; φ = 0 is the identity; the biased std gives the same answer."""
    eps_c = _randn((4, 3, 5), 0) * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64).reshape(4, 1, 1)
    eps_cfg = 5 * _randn((4, 3, 5), 1)
    out = cfg.rescale_guidance(eps_cfg, eps_c, 1.0)
    torch.testing.assert_close(out.flatten(1).std(1), eps_c.flatten(1).std(1), rtol=1e-12, atol=0)
    assert torch.equal(cfg.rescale_guidance(eps_cfg, eps_c, 0.0), eps_cfg)
    biased = eps_cfg * eps_c.flatten(1).std(1, correction=0).reshape(4, 1, 1) / eps_cfg.flatten(1).std(
        1, correction=0).reshape(4, 1, 1)
    torch.testing.assert_close(out, biased, rtol=1e-12, atol=ATOL)
    # per sample, not over the whole batch: a global std would change sample 0's answer
    assert not torch.allclose(out[0], eps_cfg[0] * eps_c.std() / eps_cfg.std())


# --- dynamic_threshold ---------------------------------------------------------------------------


def _diffusers_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    scheduler = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=percentile, sample_max_value=math.inf)
    return scheduler._threshold_sample(x0)


@PROPERTY
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6)).map(tuple),
       percentile=st.one_of(st.sampled_from([0.995, 0.9, 0.5, 1.0, 0.0]), st.floats(0, 1)),
       seed=st.integers(0, 2**16), spread=st.sampled_from([0.3, 1.0, 3.0, 20.0]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
@example(shape=(2, 1, 1), percentile=0.995, seed=0, spread=0.3, dtype=torch.float64)
def test_dynamic_threshold_is_diffusers_threshold_sample(shape, percentile, seed, spread, dtype):
    """Is dynamic_threshold the schedulers' _threshold_sample with no cap (sample_max_value = ∞)?"""
    x0 = _randn(shape, seed, spread).to(dtype)
    out = cfg.dynamic_threshold(x0, percentile)
    assert out.dtype == dtype and out.shape == x0.shape
    tol = 1e-6 if dtype == torch.float32 else ATOL  # float32: one quantile interpolation and a division (≈ 10 u)
    torch.testing.assert_close(out, _diffusers_threshold(x0, percentile), rtol=tol, atol=tol)
    assert float(out.abs().max()) <= 1 + tol


def test_dynamic_threshold_is_per_sample_and_leaves_unsaturated_samples_alone():
    x0 = torch.stack([0.5 * torch.ones(10, dtype=torch.float64), torch.linspace(-10, 10, 10, dtype=torch.float64)])
    out = cfg.dynamic_threshold(x0, 0.9)
    assert torch.equal(out[0], x0[0])  # s = max(0.5, 1) = 1: nothing to do
    s = torch.quantile(x0[1].abs(), 0.9)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert float(out[1].abs().max()) == 1.0
    # Without the floor, the unsaturated sample would be stretched to ±1.
    assert not torch.allclose(out[0], x0[0] / torch.quantile(x0[0].abs(), 0.9))


# --- cfg_pp_step ------------------------------------------------------------------------------------


def _authors_cfgpp_update(zt, noise_uc, noise_c, cfg_guidance, at, at_prev):
    """The loop body of ``BaseDDIMCFGpp.sample`` in CFGpp-diffusion/CFGpp (latent_diffusion.py), restated.

    noise_pred = noise_uc + cfg_guidance * (noise_c - noise_uc)
    z0t = (zt - (1-at).sqrt() * noise_pred) / at.sqrt()
    zt = at_prev.sqrt() * z0t + (1-at_prev).sqrt() * noise_uc
    (``at = alpha(t)``, ``at_prev = alpha(t - skip)``, ᾱ = 1 before the first timestep.)
    """
    noise_pred = noise_uc + cfg_guidance * (noise_c - noise_uc)
    z0t = (zt - (1 - at).sqrt() * noise_pred) / at.sqrt()
    return at_prev.sqrt() * z0t + (1 - at_prev).sqrt() * noise_uc


@PROPERTY
@given(T=st.sampled_from([10, 1000]), data=st.data(), lam=st.one_of(st.sampled_from([0.0, 1.0, 0.6]), st.floats(0, 2)),
       shape=shapes, seed=st.integers(0, 2**16), schedule=st.sampled_from(["linear", "cosine"]))
def test_cfg_pp_step_is_the_authors_update(T, data, lam, shape, seed, schedule):
    t = data.draw(st.integers(0, T - 1))
    t_prev = data.draw(st.integers(-1, t - 1))
    ac = compute_alphas_cumprod(linear_beta_schedule(T) if schedule == "linear" else cosine_beta_schedule(T))
    at = ac[t]
    at_prev = ac[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
    xt, eps_u, eps_c = _randn(shape, seed), _randn(shape, seed + 1), _randn(shape, seed + 2)
    out = cfg.cfg_pp_step(eps_u, eps_c, t, t_prev, xt, ac, lam)
    expected = _authors_cfgpp_update(xt, eps_u, eps_c, lam, at, at_prev)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=CHAIN_ATOL)


def test_cfg_pp_step_with_lambda_zero_is_the_unconditional_ddim_step():
    ac = compute_alphas_cumprod(linear_beta_schedule(1000))
    xt, eps_u, eps_c = _randn((3, 4), 0), _randn((3, 4), 1), _randn((3, 4), 2)
    for t, t_prev in ((999, 979), (500, -1), (1, 0)):
        torch.testing.assert_close(cfg.cfg_pp_step(eps_u, eps_c, t, t_prev, xt, ac, 0.0),
                                   ddim_step(eps_u, t, t_prev, xt, ac), rtol=1e-12, atol=CHAIN_ATOL)
        # and with λ > 0 it is not guided DDIM, which renoises along ε_λ (except into the data, where 1 − ᾱ_prev = 0)
        assert t_prev < 0 or not torch.allclose(cfg.cfg_pp_step(eps_u, eps_c, t, t_prev, xt, ac, 0.5),
                                  ddim_step(cfg.cfg_combine(eps_u, eps_c, 0.5), t, t_prev, xt, ac))


# --- cfg_sample -------------------------------------------------------------------------------------

MEANS = torch.tensor([[1.5, -1.0, 0.5], [-1.0, 2.0, 0.0], [0.0, -2.0, 1.0]], dtype=torch.float64)
VARS = torch.tensor([[0.1, 0.5, 0.01], [0.2, 0.01, 1.0], [1.0, 0.05, 0.3]], dtype=torch.float64)
TOY = ClassConditionalGaussians.with_null(torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64), MEANS, VARS)


def _diffusers_cfg_loop(toy, x_T, cond, uncond, w, T, num_steps):
    """Guided DDIM as diffusers' Stable Diffusion pipeline runs it: one 2B batch, chunk(2), scheduler.step.

    The scheduler's ᾱ (its float32 values, promoted to float64) is also the toy model's.
    """
    scheduler = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="leading")
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    model = toy.eps_model(scheduler.alphas_cumprod)
    scheduler.set_timesteps(num_steps)
    latents = x_T
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents] * 2)
        t_in = torch.full((latent_model_input.shape[0],), int(t), dtype=torch.long)
        noise_pred = model(latent_model_input, t_in, torch.cat([uncond, cond]))
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + w * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return latents, scheduler.alphas_cumprod


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.5, -1.0])
@pytest.mark.parametrize("num_steps", [1, 4, 20])
def test_cfg_sample_is_diffusers_guided_ddim_and_follows_the_exact_law(w, num_steps):
    """Is cfg_sample diffusers' guided DDIM loop, and its output the exact law's (deterministic) mean?"""
    B, T = 6, 1000
    cond, uncond = torch.tensor([0, 1, 2, 0, 1, 2]), torch.full((B,), TOY.null_label)
    uncond[3] = 1  # a negative prompt in one row
    x_T = _randn((B, 3), num_steps)
    expected, ac = _diffusers_cfg_loop(TOY, x_T, cond, uncond, w, T, num_steps)
    model = TOY.eps_model(ac)
    out = cfg.cfg_sample(model, None, cond, uncond, w, ac, num_steps, x_T=x_T)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=CHAIN_ATOL)
    mean, var = cfg_sample_law(TOY, ac, num_steps, cond, uncond, w, x_T=x_T)
    torch.testing.assert_close(out, mean, rtol=1e-9, atol=CHAIN_ATOL)
    assert float(var.abs().max()) == 0.0


def test_cfg_sample_at_zero_and_one_is_unconditional_and_conditional_ddim():
    ac = compute_alphas_cumprod(cosine_beta_schedule(1000))
    cond, uncond = torch.tensor([0, 1, 2]), torch.full((3,), TOY.null_label)
    x_T = _randn((3, 3), 5)
    for w, labels in ((0.0, uncond), (1.0, cond)):
        data = TOY.given(labels)
        plain = ddim_sample(data.eps_model(ac), None, ac, 10, x_T=x_T)
        torch.testing.assert_close(cfg.cfg_sample(TOY.eps_model(ac), None, cond, uncond, w, ac, 10, x_T=x_T), plain,
                                   rtol=1e-9, atol=CHAIN_ATOL)


def test_cfg_sample_law_matches_monte_carlo():
    """Do 40,000 draws of cfg_sample from x_T ~ N(0, I) have the exact law's mean and variance?

    Per coordinate, the sample mean's error is ≤ 6 standard errors √(var/n) and the variance's
    ≤ 6·√(2/n)·var (Gaussian output): a false failure has probability < 1e-8 per coordinate.
    """
    ac = compute_alphas_cumprod(linear_beta_schedule(1000))
    n = 40_000
    cond, uncond = torch.full((n,), 2), torch.full((n,), TOY.null_label)
    g = torch.Generator().manual_seed(0)
    out = cfg.cfg_sample(TOY.eps_model(ac), (n, 3), cond, uncond, 3.0, ac, 8,
                         generator=g, x_T=torch.randn((n, 3), generator=g, dtype=torch.float64))
    mean, var = cfg_sample_law(TOY, ac, 8, cond[:1], uncond[:1], 3.0)
    assert torch.all((out.mean(0) - mean[0]).abs() <= 6 * (var[0] / n).sqrt())
    assert torch.all((out.var(0) - var[0]).abs() <= 6 * (2 / n) ** 0.5 * var[0])
    # guidance at w = 3 sharpens the class: less variance than the class itself (1.0, 0.05, 0.3)
    assert torch.all(var[0] < VARS[2])


def test_cfg_sample_draws_x_T_from_the_generator_in_the_default_dtype():
    ac = compute_alphas_cumprod(linear_beta_schedule(100))
    cond, uncond = torch.tensor([0, 1]), torch.full((2,), TOY.null_label)
    model = ClassConditionalGaussians(TOY.means.float(), TOY.vars.float()).eps_model(ac.float())  # ε in float32
    a = cfg.cfg_sample(model, (2, 3), cond, uncond, 2.0, ac, 5, generator=torch.Generator().manual_seed(3))
    b = cfg.cfg_sample(model, (2, 3), cond, uncond, 2.0, ac, 5, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.get_default_dtype() and torch.equal(a, b)


# --- the conditional toys ------------------------------------------------------------------------------


def test_class_conditional_gaussians_are_per_class_gaussian_data():
    ac = compute_alphas_cumprod(linear_beta_schedule(50))
    x, t = _randn((4, 3), 0), torch.tensor([0, 10, 30, 49])
    labels = torch.tensor([0, 3, 1, 2])
    out = TOY.eps_model(ac)(x, t, labels)
    for b in range(4):
        alone = GaussianData(TOY.means[labels[b]], TOY.vars[labels[b]]).eps_model(ac)(x[b: b + 1], t[b: b + 1])
        torch.testing.assert_close(out[b: b + 1], alone, rtol=1e-14, atol=ATOL)
    # the null label is the moment-matched Gaussian of the mixture of the classes
    g = torch.Generator().manual_seed(1)
    mixture = GaussianMixture(torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64), MEANS, VARS)
    draws, _ = mixture.sample(200_000, g)
    torch.testing.assert_close(TOY.means[-1], draws.mean(0), rtol=0, atol=0.02)  # ≈ 6 standard errors
    torch.testing.assert_close(TOY.vars[-1], draws.var(0), rtol=0.03, atol=0)


def test_the_difference_of_epsilons_is_the_implicit_classifier_gradient():
    """ε_c − ε_u = −√(1 − ᾱ)·∇ₓ log p(c | x) on the class-conditional mixture, p(c | x) by Bayes' rule (autograd)."""
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    toy = ClassConditionalMixture(weights, MEANS, VARS)
    ac = compute_alphas_cumprod(linear_beta_schedule(1000))
    model = toy.eps_model(ac)
    x = _randn((5, 3), 3, 2.0).requires_grad_(True)
    for t_value in (10, 300, 900):
        t = torch.full((5,), t_value)
        a, n = ac[t_value].sqrt(), 1 - ac[t_value]
        responsibilities = GaussianMixture(weights, MEANS, VARS).responsibilities(x, a.expand(5), n.expand(5))
        for c in range(3):
            (grad,) = torch.autograd.grad(responsibilities[c].log().sum(), x, retain_graph=True)
            diff = model(x.detach(), t, torch.full((5,), c)) - model(x.detach(), t, torch.full((5,), toy.null_label))
            torch.testing.assert_close(diff, -n.sqrt() * grad, rtol=1e-8, atol=1e-10)


# --- device-agnosticism, on the meta device (see tests/reference/test_meta_device.py) ------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_cfg_function_runs_on_the_meta_device(dtype):
    """Does every function keep its work on the inputs' device (meta checks devices as CUDA does)?"""
    meta = torch.device("meta")
    x = torch.empty((4, 3), device=meta, dtype=dtype)
    ac = compute_alphas_cumprod(linear_beta_schedule(50)).to(meta)
    t = torch.tensor([0, 1, 25, 49]).to(meta)
    labels = torch.tensor([0, 1, 2, 3]).to(meta)
    toy = ClassConditionalGaussians(TOY.means.to(meta, dtype), TOY.vars.to(meta, dtype))
    model = toy.eps_model(ac)
    outs = [
        cfg.cfg_combine(x, x, 3.0),
        cfg.guided_eps(model, x, t, labels, labels, 3.0),
        cfg.composed_eps(model, x, t, [labels, labels], [1.0, -0.5], labels),
        cfg.rescale_guidance(x, x, 0.7),
        cfg.dynamic_threshold(x, 0.995),
        cfg.cfg_pp_step(x, x, 25, 10, x, ac, 0.6),
        cfg.cfg_sample(model, None, labels, labels, 3.0, ac, 5, x_T=x),
    ]
    for out in outs:
        assert out.device == meta and out.dtype == dtype and out.shape == x.shape
