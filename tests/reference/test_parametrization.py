"""Tests of reference.parametrization: ε, x₀, v, the score, SNR and loss weights.

Round-off tolerances are forward-error bounds. ``EPS`` below is ``torch.finfo(dtype).eps``,
twice the unit round-off, so a correctly rounded operation errs by at most ½·EPS relatively;
the coefficients are computed in float64 and cast once (another ½·EPS at most).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference.parametrization import (
    PARAMETRIZATIONS,
    mse_weight,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    score_from_eps,
    snr,
    training_target,
    velocity,
)
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule, q_sample
from reference.toy import GaussianData, vp_coefficients

T = 1000
SCHEDULES = {
    # Linear: σ_0 = √β_0 = 0.01 is the smallest noise level, where x₀ → ε amplifies round-off.
    "linear": compute_alphas_cumprod(linear_beta_schedule(T)),
    # Cosine: ᾱ_{T−1} ≈ 2e-9 (β capped at 0.999), where ε → x₀ amplifies round-off by 1/√ᾱ ≈ 2e4.
    "cosine": compute_alphas_cumprod(cosine_beta_schedule(T)),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Derandomized so that a failure reproduces; no database, no deadline (CI machines vary).
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=60)


@pytest.fixture(autouse=True, scope="module")
def single_threaded_torch():
    """Run this module's tests with one intra-op thread, and restore the setting afterwards.

    The tensors here are small (≤ 1e5 elements), so threads buy nothing, while on a shared 2-core CI
    machine with other test processes running, each OpenMP parallel region waits for a descheduled
    thread: elbo_bpd's T-step loop was measured 60× slower (30 s against 0.5 s) with 2 threads.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

schedules = st.sampled_from(sorted(SCHEDULES))
dtypes = st.sampled_from(sorted(DTYPES))
timesteps = st.lists(st.integers(0, T - 1), min_size=1, max_size=4)  # one per batch element: B ∈ [1, 4]
data_shapes = st.lists(st.integers(1, 4), max_size=3).map(tuple)  # non-batch dims, including none
seeds = st.integers(0, 2**32 - 1)


def _draw(shape, dtype, seed, n=2):
    """``n`` standard-normal tensors of ``shape`` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def _coefficients(t, alphas_cumprod, like):
    """(√ᾱ_t, √(1 − ᾱ_t)) in float64, shaped to broadcast against ``like``."""
    a = alphas_cumprod[t].sqrt().reshape(-1, *([1] * (like.ndim - 1)))
    return a, (1 - a**2).sqrt()


def _assert_within(actual, expected, bound, what):
    """Elementwise |actual − expected| ≤ bound, comparing in float64, with the worst element in the message."""
    error = (actual.double() - expected.double()).abs()
    excess = error - bound.double()
    worst = excess.argmax()
    assert (excess <= 0).all(), f"{what}: error {error.flatten()[worst]:.3g} above bound {bound.flatten()[worst]:.3g}"


ROUND_TRIP_BOUNDARIES = [
    example(schedule="linear", dtype="float32", t=[0, T - 1], data_shape=(3,), seed=0),
    example(schedule="cosine", dtype="float32", t=[0, T - 1], data_shape=(2, 2), seed=1),
    example(schedule="cosine", dtype="float64", t=[T - 1], data_shape=(), seed=2),
    example(schedule="linear", dtype="float64", t=[0, 1, T - 2, T - 1], data_shape=(1, 4, 4), seed=3),
]


def _with_boundaries(test):
    for ex in ROUND_TRIP_BOUNDARIES:
        test = ex(test)
    return test


@PROPERTY
@given(schedule=schedules, dtype=dtypes, t=timesteps, data_shape=data_shapes, seed=seeds)
@_with_boundaries
def test_eps_to_x0_to_eps_round_trips(schedule, dtype, t, data_shape, seed):
    """Does predict_eps_from_x0 undo predict_x0_from_eps at every t, in the data's dtype?"""
    alphas_cumprod, dtype = SCHEDULES[schedule], DTYPES[dtype]
    t = torch.tensor(t)
    xt, eps = _draw((len(t), *data_shape), dtype, seed)
    x0 = predict_x0_from_eps(xt, t, eps, alphas_cumprod)
    back = predict_eps_from_x0(xt, t, x0, alphas_cumprod)
    assert x0.dtype == back.dtype == dtype and back.shape == eps.shape
    _, sigma = _coefficients(t, alphas_cumprod, xt)
    # x̂₀ = xt/a − (σ/a)·ε errs by ≤ 3·EPS/2·(|xt| + σ|ε|)/a; multiplying by a, subtracting from xt and
    # dividing by σ gives ≤ 4·EPS·(|xt|/σ + |ε|) to first order: 16× leaves a factor-4 margin. The 1/σ
    # (up to 100 at t = 0 of the linear schedule) is the conditioning of x₀ → ε, not slack.
    bound = 16 * torch.finfo(dtype).eps * (xt.abs().double() / sigma + eps.abs().double())
    _assert_within(back, eps, bound, "eps -> x0 -> eps")


@PROPERTY
@given(schedule=schedules, dtype=dtypes, t=timesteps, data_shape=data_shapes, seed=seeds)
@_with_boundaries
def test_x0_to_eps_to_x0_round_trips(schedule, dtype, t, data_shape, seed):
    """Does predict_x0_from_eps undo predict_eps_from_x0 at every t, in the data's dtype?"""
    alphas_cumprod, dtype = SCHEDULES[schedule], DTYPES[dtype]
    t = torch.tensor(t)
    xt, x0 = _draw((len(t), *data_shape), dtype, seed)
    eps = predict_eps_from_x0(xt, t, x0, alphas_cumprod)
    back = predict_x0_from_eps(xt, t, eps, alphas_cumprod)
    assert eps.dtype == back.dtype == dtype
    a, _ = _coefficients(t, alphas_cumprod, xt)
    # The mirror image of the test above, with a in place of σ: 1/a reaches 2e4 at t = T − 1 (cosine).
    bound = 16 * torch.finfo(dtype).eps * (xt.abs().double() / a + x0.abs().double())
    _assert_within(back, x0, bound, "x0 -> eps -> x0")


@PROPERTY
@given(schedule=schedules, dtype=dtypes, t=timesteps, data_shape=data_shapes, seed=seeds)
@_with_boundaries
def test_v_recovers_x0_and_eps(schedule, dtype, t, data_shape, seed):
    """From x_t = q_sample(x₀, ε) and v = velocity(x₀, ε), do predict_x0_from_v and predict_eps_from_v give x₀, ε?"""
    alphas_cumprod, dtype = SCHEDULES[schedule], DTYPES[dtype]
    t = torch.tensor(t)
    x0, eps = _draw((len(t), *data_shape), dtype, seed)
    xt = q_sample(x0, t, alphas_cumprod, noise=eps)
    v = velocity(x0, eps, t, alphas_cumprod)
    x0_back = predict_x0_from_v(xt, t, v, alphas_cumprod)
    eps_back = predict_eps_from_v(xt, t, v, alphas_cumprod)
    assert v.dtype == x0_back.dtype == eps_back.dtype == dtype and v.shape == x0.shape
    # (x₀, ε) → (x_t, v) → back is a rotation by φ and −φ (a² + σ² = 1): x_t and v each err by
    # ≤ 2·EPS·(|x₀| + |ε|) and the rotation back adds ≤ 2·EPS·(|x₀| + |ε|) more, ≤ 6·EPS in all; 16× is safe.
    bound = 16 * torch.finfo(dtype).eps * (x0.abs().double() + eps.abs().double())
    _assert_within(x0_back, x0, bound, "v -> x0")
    _assert_within(eps_back, eps, bound, "v -> eps")


def test_score_from_eps_is_the_gaussian_score():
    """For Gaussian data and its optimal ε̂ = E[ε | x_t], is −ε̂/√(1 − ᾱ_t) the exact score of q(x_t)?"""
    alphas_cumprod = SCHEDULES["cosine"]
    data = GaussianData(torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([0.01, 2.0], dtype=torch.float64))
    t = torch.tensor([0, 1, 500, T - 1])
    (xt,) = _draw((4, 2), torch.float64, 0, n=1)
    a, n = vp_coefficients(t, alphas_cumprod)
    score = score_from_eps(data.eps(xt, a, n), t, alphas_cumprod)
    # Both sides are 3–4 correctly rounded float64 operations on the same inputs: 16·EPS relative is safe.
    torch.testing.assert_close(score, data.score(xt, a, n), rtol=16 * torch.finfo(torch.float64).eps, atol=0)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_snr_is_alpha_bar_over_one_minus_alpha_bar_in_the_schedules_dtype(schedule):
    """Is snr (B,), in alphas_cumprod's dtype, equal to ᾱ/(1 − ᾱ) and strictly decreasing in t?"""
    alphas_cumprod = SCHEDULES[schedule]
    t = torch.arange(T)
    ratio = snr(t, alphas_cumprod)
    assert ratio.shape == (T,) and ratio.dtype == torch.float64
    # Exactly the same two float64 operations.
    assert torch.equal(ratio, alphas_cumprod / (1 - alphas_cumprod))
    assert (ratio[1:] < ratio[:-1]).all()
    assert snr(t[:3], alphas_cumprod.float()).dtype == torch.float32


def test_training_target_names_the_three_parametrizations():
    """Does training_target return ε, x₀ and v for "eps", "x0" and "v"?"""
    alphas_cumprod = SCHEDULES["linear"]
    t = torch.tensor([0, 10, T - 1])
    x0, eps = _draw((3, 2, 2), torch.float32, 0)
    assert torch.equal(training_target(x0, eps, t, alphas_cumprod, "eps"), eps)
    assert torch.equal(training_target(x0, eps, t, alphas_cumprod, "x0"), x0)
    assert torch.equal(training_target(x0, eps, t, alphas_cumprod, "v"), velocity(x0, eps, t, alphas_cumprod))


@pytest.mark.parametrize("name", ["epsilon", "V", "", "sample"])
def test_unknown_parametrization_raises_a_helpful_value_error(name):
    """Does an unknown name raise ValueError that lists the accepted names, in both functions?"""
    t = torch.tensor([0])
    x0 = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="'eps', 'x0', 'v'"):
        training_target(x0, x0, t, SCHEDULES["linear"], name)
    with pytest.raises(ValueError, match="'eps', 'x0', 'v'"):
        mse_weight(t, SCHEDULES["linear"], name)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_mse_weight_is_the_measured_mse_ratio(schedule, parametrization):
    """Is ‖target − prediction‖² / ‖ε − ε̂‖² equal to mse_weight, at every t, for predictions derived from ε̂?"""
    alphas_cumprod = SCHEDULES[schedule]
    t = torch.arange(T)  # every timestep once
    x0, eps, perturbation = _draw((T, 64), torch.float64, 7, n=3)
    eps_hat = eps + 0.5 * perturbation  # ‖ε − ε̂‖² ≈ 16 (64 dims × 0.25): never near 0
    xt = q_sample(x0, t, alphas_cumprod, noise=eps)
    x0_hat = predict_x0_from_eps(xt, t, eps_hat, alphas_cumprod)
    prediction = {"eps": eps_hat, "x0": x0_hat, "v": velocity(x0_hat, eps_hat, t, alphas_cumprod)}[parametrization]
    target = training_target(x0, eps, t, alphas_cumprod, parametrization)
    ratio = ((target - prediction) ** 2).sum(1) / ((eps - eps_hat) ** 2).sum(1)
    weight = mse_weight(t, alphas_cumprod, parametrization)
    assert weight.shape == (T,) and weight.dtype == alphas_cumprod.dtype
    # The identity is exact; round-off: x̂₀ errs by ~EPS·(|x_t| + σ|ε̂|)/a against a difference x₀ − x̂₀ of
    # size σ|ε − ε̂|/a, a relative error ≲ EPS·(|x_t|/σ + 3)/0.5 ≤ 1e-13 (|x_t|/σ ≤ ~400 at t = 0, linear).
    # 1e-9 leaves four orders of magnitude and still catches any wrong power of ᾱ or SNR.
    torch.testing.assert_close(ratio, weight, rtol=1e-9, atol=0)


# -- Agreement with diffusers ------------------------------------------------------------------

def _scheduler(beta_schedule):
    """A diffusers DDPMScheduler with T steps; its betas and alphas_cumprod are float32."""
    diffusers = pytest.importorskip("diffusers")  # a test dependency; skip, not fail, without it
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_velocity_and_q_sample_match_diffusers_on_its_own_schedule(beta_schedule, dtype):
    """With diffusers' own ᾱ (float32, upcast exactly), do velocity and q_sample equal get_velocity and add_noise?"""
    scheduler = _scheduler(beta_schedule)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)  # exact: every float32 is a float64
    t = torch.tensor([0, 1, 2, 250, 500, 998, T - 1])
    x0, eps = _draw((len(t), 3, 4), dtype, 11)
    v = velocity(x0, eps, t, alphas_cumprod)
    xt = q_sample(x0, t, alphas_cumprod, noise=eps)
    # diffusers casts ᾱ to the data's dtype and takes ** 0.5 there; we take √ in float64 and cast: each
    # coefficient differs by ≤ 1.5 ulps (≤ 1.5·EPS relative), the two products and the sum by ≤ EPS more,
    # so |Δ| ≤ 2.5·EPS·(|x₀| + |ε|); 4·EPS is the bound checked.
    bound = 4 * torch.finfo(dtype).eps * (x0.abs() + eps.abs()).double()
    _assert_within(v, scheduler.get_velocity(x0, eps, t), bound, f"velocity vs get_velocity ({beta_schedule}, {dtype})")
    _assert_within(xt, scheduler.add_noise(x0, eps, t), bound, f"q_sample vs add_noise ({beta_schedule}, {dtype})")


def test_q_sample_differs_from_diffusers_only_by_its_float32_cumprod():
    """With our float64 linear schedule, does add_noise differ only by the round-off of diffusers' float32 ᾱ?"""
    scheduler = _scheduler("linear")
    alphas_cumprod = compute_alphas_cumprod(linear_beta_schedule(T))
    t = torch.tensor([0, 1, 10, 250, 500, T - 1])
    x0, eps = _draw((len(t), 8), torch.float64, 12)
    a, sigma = _coefficients(t, alphas_cumprod, x0)
    # diffusers rounds each β and 1 − β to float32 and rounds each of the t + 1 products: |Δᾱ_t| ≤
    # (t + 2)·EPS32·ᾱ_t. Then Δ√ᾱ = Δᾱ/(2√ᾱ) and Δ√(1 − ᾱ) = Δᾱ/(2σ): the latter is large at t = 0,
    # where σ = 0.01 (a relative error up to ~6e-4). Twice this first-order bound, plus float64 round-off.
    d_alpha_bar = (t + 2).double().reshape(-1, 1) * torch.finfo(torch.float32).eps * a**2
    bound = 2 * d_alpha_bar * (x0.abs() / (2 * a) + eps.abs() / (2 * sigma)) + 1e-15
    xt = q_sample(x0, t, alphas_cumprod, noise=eps)
    _assert_within(xt, scheduler.add_noise(x0, eps, t), bound, "q_sample vs add_noise")
    # The comparison is not vacuous: at t = 0 the float32 cumprod is visibly off in float64 terms.
    assert (xt - scheduler.add_noise(x0, eps, t))[0].abs().max() > 1e-12
