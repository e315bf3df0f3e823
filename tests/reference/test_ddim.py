"""Does reference.ddim agree with diffusers' DDIM schedulers and with DDPM, and does inversion invert?

Oracles: diffusers' ``DDIMScheduler`` / ``DDIMInverseScheduler`` (the field's
implementation), the DDPM posterior of :mod:`reference.q_sampler`, and the
exact affine maps of :mod:`reference.laws` on Gaussian data.

Round-off budget used by the tolerances below: in float64 one operation errs by
at most u = 1.1e-16 relative; a DDIM step is ~10 operations on values of size
≤ 10 (|x|, |ε| ≤ 5 here), and dividing by √ᾱ_t amplifies the error of x̂₀ by at
most 1/√ᾱ_{T−1} ≈ 160 (linear schedule, T = 1000). So a step's error is below
10 · 10 · 160 · u ≈ 2e-12; ``atol=1e-10`` leaves a factor ~50 of margin while a
wrong coefficient shifts the output by ≳ 1e-4.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference.ddim import ddim_invert, ddim_sample, ddim_sigma, ddim_step, ddim_timesteps
from reference.laws import ddim_invert_law, ddim_sample_law
from reference.q_sampler import compute_alphas_cumprod, linear_beta_schedule, q_posterior
from reference.toy import GaussianData

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMInverseScheduler, DDIMScheduler

ATOL = 1e-10  # float64 round-off budget of one DDIM step, see the module docstring
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)

DATA = GaussianData(
    mean=torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
    var=torch.tensor([1.0, 0.01, 4.0, 0.25], dtype=torch.float64),  # a tiny variance magnifies x̂₀ errors
)


def _scheduler(cls, T: int, spacing: str = "leading"):
    """A diffusers scheduler with ᾱ_prev = 1 at the end, no clipping, and its ᾱ promoted to float64.

    The promotion keeps diffusers' own ᾱ values (float32 numbers, exactly
    representable in float64) but lets both sides do their arithmetic in
    float64, so they agree to round-off rather than to float32 precision.
    """
    scheduler = cls(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    return scheduler


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- ddim_timesteps ---------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_equal_diffusers_set_timesteps(spacing):
    """Are the timesteps diffusers' DDIMScheduler.set_timesteps, for many (T, num_steps)?

    Where diffusers' "trailing" float arange overshoots (e.g. T = 17, 7 steps)
    it appends a spurious −1; the reference returns the first num_steps entries.
    """
    for T in (1, 7, 10, 17, 50, 100, 999, 1000):
        scheduler = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        for num_steps in sorted({*range(1, min(T, 30) + 1), *(n for n in (50, 61, 97, 250, 999, 1000) if n <= T)}):
            scheduler.set_timesteps(num_steps)
            expected = scheduler.timesteps
            actual = ddim_timesteps(T, num_steps, spacing)
            assert actual.dtype == torch.long and actual.shape == (num_steps,)
            assert torch.all(actual[:-1] > actual[1:]), (T, num_steps, actual)
            if spacing == "trailing" and len(expected) == num_steps + 1:
                assert expected[-1] == -1, (T, num_steps, expected)
                expected = expected[:-1]
            assert torch.equal(actual, expected), (T, num_steps, actual, expected)


def test_timesteps_reject_unknown_spacing_and_step_counts():
    """Does a bad spacing or num_steps ∉ [1, T] raise ValueError?"""
    for args in [(10, 5, "karras"), (10, 0, "leading"), (10, 11, "trailing")]:
        with pytest.raises(ValueError):
            ddim_timesteps(*args)


# --- ddim_step ----------------------------------------------------------------------------------


@DETERMINISTIC
@given(
    T=st.sampled_from([10, 100, 1000]),
    num_steps=st.integers(1, 50),
    index=st.integers(0, 49),
    eta=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
@example(T=1000, num_steps=50, index=0, eta=1.0, seed=0)  # t = T − 1 − offset: smallest √ᾱ_t
@example(T=1000, num_steps=50, index=49, eta=1.0, seed=0)  # t = 0 → t_prev < 0: ᾱ_prev = 1
@example(T=1000, num_steps=1000, index=998, eta=0.5, seed=0)  # t = 1 → t_prev = 0
@example(T=1000, num_steps=1, index=0, eta=0.0, seed=0)
def test_step_equals_diffusers_step(T, num_steps, index, eta, seed):
    """Is ddim_step(ε, t, t − T//num_steps, …) diffusers' DDIMScheduler.step(ε, t, x, eta, variance_noise=z)?"""
    scheduler = _scheduler(DDIMScheduler, T)
    num_steps = min(num_steps, T)
    scheduler.set_timesteps(num_steps)
    t = int(scheduler.timesteps[min(index, num_steps - 1)])
    xt, eps, z = (_randn((3, 2, 2), seed + k) for k in range(3))
    expected = scheduler.step(eps, t, xt, eta=eta, variance_noise=z).prev_sample
    actual = ddim_step(eps, t, t - T // num_steps, xt, scheduler.alphas_cumprod, eta, noise=z)
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


@DETERMINISTIC
@given(t=st.integers(0, 999), seed=st.integers(0, 2**16))
@example(t=0, seed=0)
@example(t=1, seed=0)
@example(t=999, seed=0)
def test_eta_one_is_ddpm_ancestral_step(t, seed):
    """With η = 1 and t_prev = t − 1, is ddim_step the DDPM step μ̃_t(x̂₀, x_t) + √β̃_t · z?"""
    betas = linear_beta_schedule(1000)
    alphas_cumprod = compute_alphas_cumprod(betas)
    xt, eps, z = (_randn((4, 3), seed + k) for k in range(3))
    tt = torch.full((4,), t, dtype=torch.long)
    a_t = alphas_cumprod[t]
    x0_hat = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean, variance, _ = q_posterior(x0_hat, xt, tt, betas)
    expected = mean + variance.sqrt() * z
    actual = ddim_step(eps, t, t - 1, xt, alphas_cumprod, eta=1.0, noise=z)
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_sigma_with_eta_one_is_posterior_std():
    """Is ddim_sigma(ᾱ_t, ᾱ_{t−1}, 1)² the posterior variance β̃_t, and 0 for η = 0?"""
    betas = linear_beta_schedule(1000)
    a = compute_alphas_cumprod(betas)
    beta_tilde = betas[1:] * (1 - a[:-1]) / (1 - a[1:])
    torch.testing.assert_close(ddim_sigma(a[1:], a[:-1], 1.0) ** 2, beta_tilde, rtol=1e-12, atol=0)
    assert torch.all(ddim_sigma(a[1:], a[:-1], 0.0) == 0)


def test_step_keeps_float32_and_ignores_noise_when_eta_is_zero():
    """Does a float32 sample give a float32 result close to float64, and is η = 0 noise-free?"""
    alphas_cumprod = compute_alphas_cumprod(linear_beta_schedule(1000))
    xt, eps, z = (_randn((5, 3), k) for k in range(3))
    out64 = ddim_step(eps, 500, 400, xt, alphas_cumprod, 0.5, noise=z)
    out32 = ddim_step(eps.float(), 500, 400, xt.float(), alphas_cumprod, 0.5, noise=z.float())
    assert out32.dtype == torch.float32
    # float32 round-off: ~10 ops · 6e-8 · values ≤ 10 · amplification √(ᾱ_400/ᾱ_500) < 2 → < 1e-5.
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-5)
    assert torch.equal(
        ddim_step(eps, 500, 400, xt, alphas_cumprod, 0.0, noise=z), ddim_step(eps, 500, 400, xt, alphas_cumprod, 0.0)
    )


# --- ddim_sample --------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing,T,num_steps", [("leading", 1000, 10), ("leading", 100, 7), ("trailing", 1000, 20)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_equals_diffusers_loop(spacing, T, num_steps, eta):
    """Is ddim_sample the diffusers loop (model at each timestep, step to t − T//num_steps) with the same draws?

    The cases are those where consecutive timesteps are T // num_steps apart,
    so diffusers' step target is the next entry. The reference draws one z per
    step when η > 0, after x_T, from the same generator; the twin generator
    replays those draws for diffusers.
    """
    scheduler = _scheduler(DDIMScheduler, T, spacing)
    scheduler.set_timesteps(num_steps)
    eps_model = DATA.eps_model(scheduler.alphas_cumprod)
    x_T = _randn((6, 4), 123)
    actual = ddim_sample(
        eps_model, None, scheduler.alphas_cumprod, num_steps, eta, spacing, torch.Generator().manual_seed(7), x_T
    )
    twin = torch.Generator().manual_seed(7)
    x = x_T
    for t in scheduler.timesteps:
        eps = eps_model(x, torch.full((6,), int(t)))
        z = torch.randn(x.shape, generator=twin, dtype=x.dtype) if eta > 0 else None
        x = scheduler.step(eps, int(t), x, eta=eta, variance_noise=z).prev_sample
    # num_steps chained steps, each within ATOL and non-expanding here (|A| ≤ ~1.5 per step): ≤ 20 · 1.5 · ATOL.
    torch.testing.assert_close(actual, x, rtol=0, atol=num_steps * 2 * ATOL)


def test_sample_draws_x_T_first_in_default_dtype_on_generator_device():
    """Without x_T, is ddim_sample's start torch.randn(shape, generator) on the CPU in the default dtype?"""
    alphas_cumprod = compute_alphas_cumprod(linear_beta_schedule(100))
    eps_model = DATA.eps_model(alphas_cumprod)
    drawn = ddim_sample(eps_model, (8, 4), alphas_cumprod, 5, eta=0.5, generator=torch.Generator().manual_seed(3))
    twin = torch.Generator().manual_seed(3)
    x_T = torch.randn((8, 4), generator=twin, dtype=torch.get_default_dtype())
    given_start = ddim_sample(eps_model, None, alphas_cumprod, 5, eta=0.5, generator=twin, x_T=x_T)
    assert torch.equal(drawn, given_start)
    assert drawn.device.type == "cpu"


# --- ddim_invert --------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing,T,num_steps", [("leading", 1000, 10), ("leading", 1000, 50), ("trailing", 1000, 25)])
def test_invert_equals_diffusers_inverse_scheduler(spacing, T, num_steps):
    """Is ddim_invert diffusers' DDIMInverseScheduler loop (model at the current sample and target timestep)?

    Cases where τ − T//num_steps is the previous ascending entry (always for
    "leading"; "trailing" when num_steps divides T); otherwise diffusers takes
    ᾱ_cur from τ − T//num_steps and the two differ by that offset.
    """
    scheduler = _scheduler(DDIMInverseScheduler, T, spacing)
    scheduler.set_timesteps(num_steps)
    eps_model = DATA.eps_model(scheduler.alphas_cumprod)
    x0 = DATA.sample(16, torch.Generator().manual_seed(5))
    x = x0
    for t in scheduler.timesteps:
        x = scheduler.step(eps_model(x, torch.full((16,), int(t))), int(t), x).prev_sample
    actual = ddim_invert(eps_model, x0, scheduler.alphas_cumprod, num_steps, spacing)
    torch.testing.assert_close(actual, x, rtol=0, atol=num_steps * 2 * ATOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_inversion_then_sampling_reconstructs_x0_to_first_order(spacing):
    """Does η = 0 sampling from ddim_invert(x₀) return x₀, up to an error that halves as num_steps doubles?

    On Gaussian data the optimal ε is affine, so invert∘sample is an exact
    affine map x₀ ↦ A·x₀ + b (reference.laws, derived independently): the
    reference must realise it to round-off. Inversion evaluates ε at the start
    of each step and sampling at the end, so the reconstruction error is a
    first-order discretisation error, O(1/num_steps), not zero; we check that
    it halves (ratio in [0.4, 0.6]) from 100 to 200 steps and is below 0.1
    data standard deviations with all T = 1000 steps (measured 0.08 on this
    data, whose 0.1-std coordinate makes it large; it is ≈ 11/num_steps in
    absolute value).
    """
    alphas_cumprod = compute_alphas_cumprod(linear_beta_schedule(1000))
    eps_model = DATA.eps_model(alphas_cumprod)
    x0 = DATA.sample(500, torch.Generator().manual_seed(11))
    errors = {}
    for num_steps in (100, 200, 1000):
        x_T = ddim_invert(eps_model, x0, alphas_cumprod, num_steps, spacing)
        x_rec = ddim_sample(eps_model, None, alphas_cumprod, num_steps, spacing=spacing, x_T=x_T)
        exact_T, _ = ddim_invert_law(DATA, alphas_cumprod, num_steps, spacing, x0=x0)
        exact_rec, exact_var = ddim_sample_law(DATA, alphas_cumprod, num_steps, 0.0, spacing, x_T=exact_T)
        # 2·num_steps chained float64 steps of the ATOL budget (each map contracts or expands by ≤ ~1.5).
        torch.testing.assert_close(x_rec, exact_rec, rtol=0, atol=num_steps * 4 * ATOL)
        assert torch.all(exact_var == 0)
        errors[num_steps] = ((x_rec - x0).abs() / DATA.var.sqrt()).max().item()
    assert 0.4 <= errors[200] / errors[100] <= 0.6, errors
    assert errors[1000] < 0.1, errors
