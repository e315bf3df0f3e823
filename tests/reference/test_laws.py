"""Are reference.laws the exact output laws of the reference samplers on Gaussian data?

Two kinds of checks:

- Deterministic. From a fixed start (a point law) one step's law is
  N(mean, var) with mean + √var · z *equal* to the step run with noise z, so
  the law's affine coefficients are compared with the sampler to round-off;
  and independent derivations are compared with each other (DDPM through the
  posterior vs DDIM with η = 1; the ULA fixed point; annealed Langevin on one
  level vs plain Langevin).
- Monte Carlo. Many samples of a reference sampler, drawn with a fixed
  generator, standardised by the exact law: r = (x − mean)/√var is i.i.d.
  N(0, 1) per coordinate under a correct law (batch elements are independent,
  the law is diagonal). Per coordinate, z = Σr/√N ~ N(0, 1) and
  q = Σr² ~ χ²_N exactly. Each test rejects when any of its 2K statistics
  (K coordinates) falls outside its two-sided 1 − α quantiles, with
  α = 1e-6/(2K) (Bonferroni), so a correct sampler fails a test with
  probability ≤ 1e-6 over seeds; the fixed seeds make the outcome reproducible.
  With N = 40 000 a variance error of 3.5% in one coordinate is detected
  (the χ² threshold sits at ≈ 5.4 standard errors of √(2/N) = 0.7%).

The Langevin corrector has no Gaussian law; its exact first two moments for a
fixed batch are tested with the central limit theorem over independent
replicates (see that test).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from reference.ddim import ddim_invert, ddim_sample, ddim_step
from reference.langevin import (
    annealed_langevin_dynamics,
    langevin_corrector,
    langevin_dynamics,
    pc_sample,
    reverse_diffusion_predictor,
    ve_sigmas,
)
from reference.laws import (
    annealed_langevin_law,
    chi_moments,
    ddim_invert_law,
    ddim_sample_law,
    ddim_step_law,
    ddpm_step_law,
    langevin_corrector_moments,
    langevin_corrector_step_moments,
    langevin_dynamics_law,
    langevin_stationary_law,
    pc_sample_law,
    point_law,
    reverse_diffusion_predictor_law,
)
from reference.q_sampler import compute_alphas_cumprod, linear_beta_schedule
from reference.toy import GaussianData

FALSE_FAILURE = 1e-6  # per test, for a correct sampler (Bonferroni over the test's statistics)
N = 40_000  # Monte Carlo samples per test; see the module docstring for the power this buys
ATOL = 1e-10  # float64 round-off of a few chained affine steps (≤ 1e-12 each, values ≤ 10)

ALPHAS_CUMPROD = compute_alphas_cumprod(linear_beta_schedule(1000))
DATA = GaussianData(
    mean=torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
    # A tiny variance magnifies errors of the ε-coefficient; 0.04 keeps Langevin with α = 0.02 stable.
    var=torch.tensor([1.0, 0.04, 4.0, 0.25], dtype=torch.float64),
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64)


def assert_matches_law(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Reject when the samples' standardised residuals are not N(0, 1) by mean (z) or spread (χ²_N).

    ``samples`` ``(N, *D)``; ``mean``/``var`` broadcast against them. Under the
    exact law each of the 2K statistics falls outside its bounds with
    probability α = FALSE_FAILURE/(2K), so the test fails with probability ≤ FALSE_FAILURE.
    """
    r = ((samples.double() - mean) / var.sqrt()).reshape(samples.shape[0], -1)
    n, k = r.shape
    alpha = FALSE_FAILURE / (2 * k)
    z = r.sum(0) / math.sqrt(n)
    q = (r**2).sum(0)
    z_max = stats.norm.isf(alpha / 2)
    q_lo, q_hi = stats.chi2.ppf(alpha / 2, n), stats.chi2.isf(alpha / 2, n)
    assert torch.all(z.abs() <= z_max), f"mean z-statistics {z.tolist()} beyond ±{z_max:.2f}"
    assert torch.all((q >= q_lo) & (q <= q_hi)), (
        f"variance ratios {(q / n).tolist()} outside [{q_lo / n:.4f}, {q_hi / n:.4f}]"
    )


# --- deterministic: the laws' affine maps are the samplers' steps -------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t,t_prev", [(999, 899), (500, 480), (1, 0), (0, -1), (999, -1), (20, -1)])
def test_ddim_step_law_from_a_point_is_the_step(eta, t, t_prev):
    """From a fixed x_t, is ddim_step(ε*(x_t), …, noise=z) exactly mean + √var · z of ddim_step_law?"""
    x, z = _randn((5, 4), 1), _randn((5, 4), 2)
    eps = DATA.eps_model(ALPHAS_CUMPROD)(x, torch.full((5,), t))
    mean, var = ddim_step_law(DATA, t, t_prev, ALPHAS_CUMPROD, eta, point_law(x))
    actual = ddim_step(eps, t, t_prev, x, ALPHAS_CUMPROD, eta, noise=z)
    torch.testing.assert_close(actual, mean + var.sqrt() * z, rtol=0, atol=ATOL)


@pytest.mark.parametrize("t", [0, 1, 2, 100, 999])
def test_ddpm_step_law_equals_ddim_eta_one(t):
    """Does the DDPM law (through the posterior and E[x₀|x_t]) equal DDIM's with η = 1, t_prev = t − 1?"""
    law = (_randn((4,), 3), _randn((4,), 4).abs())
    ddpm = ddpm_step_law(DATA, t, ALPHAS_CUMPROD, law)
    ddim = ddim_step_law(DATA, t, t - 1, ALPHAS_CUMPROD, 1.0, law)
    # Two float64 formulas for the same coefficients; relative round-off ≤ ~1e-13 after the 1/√ᾱ_t ≤ 160 amplification.
    torch.testing.assert_close(ddpm, ddim, rtol=1e-11, atol=1e-13)


def test_ddim_invert_law_from_a_point_is_the_inversion():
    """For a fixed x₀, is ddim_invert_law's mean the inverted sample and its variance 0?"""
    x0 = DATA.sample(8, _gen(5))
    mean, var = ddim_invert_law(DATA, ALPHAS_CUMPROD, 20, "trailing", x0=x0)
    inverted = ddim_invert(DATA.eps_model(ALPHAS_CUMPROD), x0, ALPHAS_CUMPROD, 20, "trailing")
    torch.testing.assert_close(inverted, mean, rtol=0, atol=ATOL)
    assert torch.all(var == 0)


@pytest.mark.parametrize("sigma_next", [0.3, 0.0])
def test_predictor_law_from_a_point_is_the_step(sigma_next):
    """From a fixed x, is reverse_diffusion_predictor's (x, x_mean) = (mean + √var·z, mean) of its law?"""
    x, z = _randn((5, 4), 6), _randn((5, 4), 7)
    out, out_mean = reverse_diffusion_predictor(DATA.score_fn(), x, 0.8, sigma_next, noise=z)
    mean, var = reverse_diffusion_predictor_law(DATA, point_law(x), 0.8, sigma_next)
    torch.testing.assert_close(out, mean + var.sqrt() * z, rtol=0, atol=ATOL)
    torch.testing.assert_close(out_mean, mean, rtol=0, atol=ATOL)
    assert torch.all(reverse_diffusion_predictor_law(DATA, point_law(x), 0.8, sigma_next, noise_free=True)[1] == 0)


def test_langevin_law_from_a_point_is_one_step():
    """From a fixed x, is one langevin_dynamics step mean + √var·z with the generator's z?"""
    x = _randn((5, 4), 8)
    out = langevin_dynamics(lambda y: DATA.score(y, 1.0, 0.0), x, 0.02, 1, generator=_gen(9))
    mean, var = langevin_dynamics_law(DATA, point_law(x), 0.02, 1)
    z = torch.randn((5, 4), generator=_gen(9), dtype=torch.float64)
    torch.testing.assert_close(out, mean + var.sqrt() * z, rtol=0, atol=ATOL)


def test_langevin_law_converges_to_the_ula_stationary_law():
    """Does the n-step Langevin law reach ULA's fixed point N(m, v/(1 − α/(4v))), derived independently?"""
    # The slowest coordinate contracts by ρ = 1 − α/(2v) = 0.9975 per step: ρ^{2·8000} = e^{−40} ≈ 4e-18.
    mean, var = langevin_dynamics_law(DATA, (torch.zeros(4), torch.zeros(4)), 0.02, 8000)
    stationary_mean, stationary_var = langevin_stationary_law(DATA, 0.02)
    torch.testing.assert_close(mean, stationary_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, stationary_var, rtol=1e-12, atol=0)
    assert torch.all(stationary_var > DATA.var)  # the discretisation inflates the variance


def test_annealed_law_on_one_level_is_langevin_on_the_noised_target():
    """With a single σ, is the annealed law Langevin's on N(μ, s² + σ²) with α = step_lr?"""
    law = (_randn((4,), 10), torch.ones(4, dtype=torch.float64))
    sigma = torch.tensor([0.5], dtype=torch.float64)
    noised = GaussianData(DATA.mean, DATA.var + 0.25)
    torch.testing.assert_close(
        annealed_langevin_law(DATA, law, sigma, 0.01, 7), langevin_dynamics_law(noised, law, 0.01, 7), rtol=1e-14, atol=0
    )


def test_pc_law_approaches_the_data_law_at_first_order():
    """As the σ grid refines, does the predictor-only PC law's variance error shrink ∝ 1/N (toward the data's)?"""
    errors = []
    for n in (250, 1000):
        _, var = pc_sample_law(DATA, ve_sigmas(0.01, 50.0, n))
        errors.append(((var - DATA.var) / DATA.var).abs().max().item())
    # Euler–Maruyama on the reverse SDE is first order in the log-σ step: 4× the steps, ≈ ¼ the error.
    assert 0.2 <= errors[1] / errors[0] <= 0.3, errors
    assert errors[1] < 0.02, errors


def test_corrector_step_moments_for_one_sample_are_chi_square():
    """With B = 1, is ε = c·‖z‖², c = 2snr²/g², ‖z‖² ~ χ²_d: E ε = c·d, Var ε = 2c²d, E[ε‖z‖²] = c·d(d+2)?"""
    d, snr, g = 7, 0.2, 1.5
    m = langevin_corrector_step_moments(g, d, 1, snr)
    c = 2 * snr**2 / g**2
    assert m["mean"] == pytest.approx(c * d, rel=1e-12)
    assert m["var"] == pytest.approx(c**2 * 2 * d, rel=1e-9)  # a difference of O(d²) terms: 1e-9 covers cancellation
    assert m["mean_times_r2"] == pytest.approx(c * d * (d + 2), rel=1e-12)


@pytest.mark.parametrize("d", [1, 2, 5, 100, 3072])
def test_chi_moments_match_scipy(d):
    """Are chi_moments the raw moments of scipy's chi distribution?"""
    expected = [stats.chi(d).moment(k) for k in (1, 2, 3, 4)]
    assert chi_moments(d) == pytest.approx(expected, rel=1e-10)  # scipy's own gamma-ratio round-off


# --- Monte Carlo: the samplers' output laws -----------------------------------------------------


@pytest.mark.parametrize(
    "eta,spacing,num_steps",
    [(0.0, "leading", 10), (0.5, "leading", 10), (1.0, "leading", 10), (0.5, "trailing", 7), (1.0, "linspace", 4)],
)
def test_ddim_sample_has_the_exact_law(eta, spacing, num_steps):
    """Are ddim_sample's outputs from x_T ~ N(0, I) distributed as ddim_sample_law says?"""
    generator = _gen(100)
    x_T = torch.randn((N, 4), generator=generator, dtype=torch.float64)
    samples = ddim_sample(
        DATA.eps_model(ALPHAS_CUMPROD), None, ALPHAS_CUMPROD, num_steps, eta, spacing, generator, x_T
    )
    assert_matches_law(samples, *ddim_sample_law(DATA, ALPHAS_CUMPROD, num_steps, eta, spacing))


def test_ddim_sample_from_fixed_starts_has_the_exact_law():
    """From fixed, distinct x_T per sample (η = 0.5), are the outputs distributed per element as the law says?"""
    x_T = 2 * _randn((N, 4), 101)
    samples = ddim_sample(DATA.eps_model(ALPHAS_CUMPROD), None, ALPHAS_CUMPROD, 5, 0.5, generator=_gen(102), x_T=x_T)
    mean, var = ddim_sample_law(DATA, ALPHAS_CUMPROD, 5, 0.5, x_T=x_T)
    assert mean.shape == (N, 4)
    assert_matches_law(samples, mean, var)


def test_langevin_dynamics_from_a_fixed_start_has_the_exact_law():
    """Is langevin_dynamics from a fixed x (same for all samples) distributed as langevin_dynamics_law says?"""
    x = torch.tensor([3.0, 0.0, -2.0, 2.0], dtype=torch.float64).expand(N, 4)
    samples = langevin_dynamics(lambda y: DATA.score(y, 1.0, 0.0), x, 0.02, 25, generator=_gen(103))
    assert_matches_law(samples, *langevin_dynamics_law(DATA, point_law(x[0]), 0.02, 25))


def test_annealed_langevin_has_the_exact_law():
    """From x ~ N(0, σ_1²), is annealed_langevin_dynamics distributed as annealed_langevin_law says?"""
    sigmas = ve_sigmas(0.1, 3.0, 5)
    x = 3.0 * _randn((N, 4), 104)
    samples = annealed_langevin_dynamics(DATA.score_fn(), x, sigmas, 2e-3, 6, generator=_gen(105))
    law = (torch.zeros(4, dtype=torch.float64), torch.full((4,), 9.0, dtype=torch.float64))
    assert_matches_law(samples, *annealed_langevin_law(DATA, law, sigmas, 2e-3, 6))


def test_pc_sample_without_corrector_has_the_exact_law():
    """Is pc_sample(n_corrector=0) distributed as pc_sample_law says?

    pc_sample computes in the default dtype (float32 start): its round-off,
    ~1e-7 of a standard deviation, is 1e-4 of the mean test's standard error 1/√N.
    """
    sigmas = ve_sigmas(0.01, 10.0, 30)
    samples = pc_sample(DATA.score_fn(), (N, 4), sigmas, n_corrector=0, generator=_gen(106))
    assert_matches_law(samples, *pc_sample_law(DATA, sigmas))


def test_langevin_corrector_has_the_exact_moments_for_a_fixed_batch():
    """Over independent calls on one fixed batch, do the corrector's outputs have the exact mean and variance?

    The law is not Gaussian and the batch elements share ε, so we replicate the
    call R times (replicates are independent) and test each of the 2·B·D
    statistics with the central limit theorem: the mean with the exact
    variance, z = (x̄ − E x′)/√(Var x′/R); the variance with Y = (x′ − E x′)²,
    whose mean is Var x′ exactly, studentised by Y's sample standard deviation.
    ε has all moments (r̄² is a smooth function of a mean of chi variables), so
    with R = 20 000 the normal tail is accurate and the per-test false-failure
    probability is ≈ FALSE_FAILURE; with snr = 0.5 the drift term ε·s is ~1/3
    of the noise term, so a wrong E ε moves the mean by many standard errors.
    """
    replicates, snr, sigma = 20_000, 0.5, 0.3
    x = torch.tensor([[1.5, -0.8, 2.0, 2.5], [0.0, -1.3, -3.0, 1.0], [0.7, -1.0, 1.0, 2.2]], dtype=torch.float64)
    generator, score_fn = _gen(107), DATA.score_fn()
    outs = torch.stack([langevin_corrector(score_fn, x, sigma, snr, generator=generator)[0] for _ in range(replicates)])
    moments = langevin_corrector_moments(DATA, x, sigma, snr)
    k = x.numel()
    z_max = stats.norm.isf(FALSE_FAILURE / (2 * 2 * k))
    z_mean = (outs.mean(0) - moments["mean"]) / (moments["var"] / replicates).sqrt()
    y = (outs - moments["mean"]) ** 2
    z_var = (y.mean(0) - moments["var"]) / (y.std(0) / math.sqrt(replicates))
    assert torch.all(z_mean.abs() <= z_max), z_mean
    assert torch.all(z_var.abs() <= z_max), z_var


# --- the chains, walks and term sizes the checks use (moved here from grader/exercises) ------------


@pytest.mark.parametrize("spacing, num_steps", [("leading", 10), ("trailing", 3), ("linspace", 1)])
def test_ddim_walks_are_the_reference_sampler_and_inversion(spacing, num_steps):
    """Does η = 0 DDIM along ddim_sample_moves / ddim_invert_moves equal ddim_sample / ddim_invert exactly?"""
    from reference.laws import ddim_invert_moves, ddim_run_moves, ddim_sample_moves

    model, x = DATA.eps_model(ALPHAS_CUMPROD), _randn((5, 4), 6)
    sampled = ddim_sample(model, None, ALPHAS_CUMPROD, num_steps, 0.0, spacing, None, x)
    torch.testing.assert_close(ddim_run_moves(model, x, ALPHAS_CUMPROD, ddim_sample_moves(1000, num_steps, spacing)),
                               sampled, rtol=0, atol=0)
    inverted = ddim_invert(model, x, ALPHAS_CUMPROD, num_steps, spacing)
    torch.testing.assert_close(ddim_run_moves(model, x, ALPHAS_CUMPROD, ddim_invert_moves(1000, num_steps, spacing)),
                               inverted, rtol=0, atol=0)
    assert ddim_sample_moves(1000, num_steps, spacing)[-1][1] == -1 and ddim_invert_moves(1000, num_steps, spacing)[0][0] == -1


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_ddpm_ancestral_step_is_ddim_with_eta_one_and_its_law_is_ddpm_step_law(t):
    """Through the posterior, is DDPM's step DDIM's with η = 1, t_prev = t − 1, and mean + √var·z of ddpm_step_law?"""
    from reference.laws import ddpm_ancestral_step

    x, z = _randn((5, 4), 7), _randn((5, 4), 8)
    eps = DATA.eps_model(ALPHAS_CUMPROD)(x, torch.full((5,), t))
    step = ddpm_ancestral_step(eps, t, x, ALPHAS_CUMPROD, z)
    # Two float64 formulas; relative round-off ≤ ~1e-13 after the 1/√ᾱ_t ≤ 160 amplification.
    torch.testing.assert_close(step, ddim_step(eps, t, t - 1, x, ALPHAS_CUMPROD, 1.0, noise=z), rtol=1e-11, atol=1e-12)
    mean, var = ddpm_step_law(DATA, t, ALPHAS_CUMPROD, point_law(x))
    torch.testing.assert_close(step, mean + var.sqrt() * z, rtol=1e-11, atol=1e-12)


def test_ddim_term_sizes_bound_the_step_and_grow_along_the_chain():
    """Is Σ|terms| ≥ |step| (a size, not a value) and ≥ the amplified x, and the chain's size finite and positive?"""
    from reference.laws import alpha_bar, ddim_chain_terms_size, ddim_sample_moves, ddim_terms_size

    assert alpha_bar(ALPHAS_CUMPROD, -1) == 1 and alpha_bar(ALPHAS_CUMPROD, 3) == ALPHAS_CUMPROD[3]
    x, eps = _randn((5, 4), 9), _randn((5, 4), 10)
    a_t, a_prev = alpha_bar(ALPHAS_CUMPROD, 999), alpha_bar(ALPHAS_CUMPROD, 499)
    size = ddim_terms_size(x, eps, a_t, a_prev)
    assert torch.all(size >= ddim_step(eps, 999, 499, x, ALPHAS_CUMPROD).abs() * (1 - 1e-12))
    assert torch.all(size >= (a_prev / a_t).sqrt() * x.abs())  # 1/√ᾱ_999 amplifies x: the size says so
    moves = ddim_sample_moves(1000, 2, "trailing")
    chain = ddim_chain_terms_size(DATA, ALPHAS_CUMPROD, moves, x)
    assert torch.all(torch.isfinite(chain)) and torch.all(chain > 0)


def test_langevin_chains_of_affine_steps_are_the_samplers_laws():
    """Do affine_chain of langevin_steps / annealed_langevin_steps / pc_predictor_steps give the laws above exactly?"""
    from reference.laws import affine_chain, annealed_langevin_steps, langevin_steps, pc_predictor_steps

    start = point_law(_randn((3, 4), 11))
    target = GaussianData(DATA.mean, DATA.var)
    torch.testing.assert_close(affine_chain(start, langevin_steps(DATA.mean, DATA.var, 0.02, 5)),
                               langevin_dynamics_law(target, start, 0.02, 5), rtol=0, atol=ATOL)
    sigmas = ve_sigmas(0.1, 2.0, 4)
    alphas = [1e-3 * (s / sigmas[-1]) ** 2 for s in sigmas]
    torch.testing.assert_close(affine_chain(start, annealed_langevin_steps(DATA, sigmas, alphas, 3)),
                               annealed_langevin_law(DATA, start, sigmas, 1e-3, 3), rtol=1e-12, atol=ATOL)
    zero = torch.zeros(4, dtype=torch.float64)
    pc = affine_chain((zero, sigmas[0] ** 2 * torch.ones_like(zero)), pc_predictor_steps(DATA, sigmas))
    torch.testing.assert_close(pc, pc_sample_law(DATA, sigmas), rtol=1e-12, atol=ATOL)
    # A known mistake is another law: noise on the last step adds σ_L² of variance.
    noisy = affine_chain((zero, sigmas[0] ** 2 * torch.ones_like(zero)), pc_predictor_steps(DATA, sigmas, noisy_end=True))
    torch.testing.assert_close(noisy[1], pc[1] + sigmas[-1] ** 2, rtol=1e-12, atol=ATOL)


def test_variant_laws_without_a_mistake_are_the_exact_laws_and_with_one_differ():
    """Are the variant laws (the laws of known mistakes) the exact laws when no mistake is switched on?"""
    from reference.laws import annealed_langevin_variant_law, langevin_variant_law, pc_sample_variant_law

    start, sigmas = point_law(_randn((3, 4), 12)), ve_sigmas(0.1, 2.0, 4)
    torch.testing.assert_close(langevin_variant_law(DATA, start, 0.02, 3), langevin_dynamics_law(DATA, start, 0.02, 3),
                               rtol=0, atol=ATOL)
    torch.testing.assert_close(annealed_langevin_variant_law(DATA, start, sigmas, 1e-3, 2),
                               annealed_langevin_law(DATA, start, sigmas, 1e-3, 2), rtol=1e-12, atol=ATOL)
    torch.testing.assert_close(pc_sample_variant_law(DATA, sigmas), pc_sample_law(DATA, sigmas), rtol=1e-12, atol=ATOL)
    ascending = annealed_langevin_variant_law(DATA, start, sigmas, 1e-3, 2, ascending=True)
    assert not torch.allclose(ascending[1], annealed_langevin_law(DATA, start, sigmas, 1e-3, 2)[1])
    assert torch.all(langevin_variant_law(DATA, start, 0.02, 3, noise_coef=0.0)[1] == 0)


def test_pc_transition_noises_recover_the_noises_of_a_chain():
    """Run pc_sample's chain with known noises (2 correctors per level): are exactly those noises read off its states?"""
    from reference.laws import pc_transition_noises

    sigmas, snr, score = ve_sigmas(0.05, 5.0, 3), 0.2, DATA.score_fn()
    z0 = _randn((64, 4), 13)
    x, states, injected = sigmas[0] * z0, [], [z0]
    for i, sigma in enumerate(sigmas):
        for j in range(2):
            states.append(x)
            z = _randn((64, 4), 100 + 10 * i + j)
            x, _ = langevin_corrector(score, x, sigma, snr, noise=z)
            injected.append(z)
        states.append(x)
        if i + 1 < len(sigmas):
            z = _randn((64, 4), 200 + i)
            x, _ = reverse_diffusion_predictor(score, x, sigma, sigmas[i + 1], noise=z)
            injected.append(z)
    noises, kinds = pc_transition_noises(DATA, states, sigmas, 2, snr)
    assert kinds[:4] == ["start", "corrector", "corrector", "predictor"] and len(noises) == len(injected)
    for got, want in zip(noises, injected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8)  # bisection to 1e-15 relative in ε, amplified by 1/√ε
