"""Does reference.dpm_solver agree with diffusers' DPMSolverMultistepScheduler, with DDIM, and with its exact laws?

Oracles: diffusers' ``DPMSolverMultistepScheduler`` in curriculum §11's configuration
(``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
``timestep_spacing="linspace"``, ``final_sigmas_type="zero"``, ε-prediction, no thresholding),
driven by its own ``set_timesteps``/``step`` loop; ``reference.ddim.ddim_step`` with η = 0
(the first-order step is DDIM in λ); and, on Gaussian data, the exact affine map of the
sampler and the exact flow of the probability-flow ODE (``reference.laws``).

diffusers keeps its σ's in float32 and casts the sample to float32 inside ``step``; the
comparison is made in float64 by giving the scheduler float64 σ's from the same ᾱ and by
neutralising that one cast (:class:`KeepFloat64`), so both sides agree to round-off rather
than to float32 precision. Round-off budget: a step is ~10 float64 operations on values
≤ 10 (u = 1.1e-16), and x̂₀ = (x − σε)/α amplifies by 1/α_{T−1} ≈ 160 (linear schedule,
T = 1000), ≲ 2e-12 a step; 999 steps, each contracting (σ_prev/σ_t < 1) stay below 1e-10;
a wrong coefficient moves the output by ≳ 1e-4.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from reference import laws
from reference.ddim import ddim_step
from reference.dpm_solver import (dpm_lambda, dpm_solver_2m_step, dpm_solver_first_order_step, dpm_solver_sample,
                                  dpm_solver_timesteps)
from reference.q_sampler import compute_alphas_cumprod, cosine_beta_schedule, linear_beta_schedule
from reference.toy import GaussianData

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DPMSolverMultistepScheduler

ATOL = 1e-10  # float64 round-off of a whole DPM-Solver run, see the module docstring
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)
T = 1000
LINEAR = compute_alphas_cumprod(linear_beta_schedule(T))
COSINE = compute_alphas_cumprod(cosine_beta_schedule(T))
DATA = GaussianData(
    mean=torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
    var=torch.tensor([1.0, 0.01, 4.0, 0.25], dtype=torch.float64),  # a tiny variance magnifies x̂₀ errors
)


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class KeepFloat64(TorchFunctionMode):
    """``tensor.to(torch.float32)`` of a float64 tensor returns it unchanged (diffusers' upcast in ``step``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if torch.float32 in args[1:] or kwargs.get("dtype") == torch.float32:
                return args[0]
        return func(*args, **kwargs)


def _scheduler(T: int = T, **config) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="dpmsolver++", solver_order=2,
                                       solver_type="midpoint", timestep_spacing="linspace", final_sigmas_type="zero",
                                       prediction_type="epsilon", thresholding=False, **config)


def diffusers_sample(eps_model, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, num_steps: int,
                     float64: bool = True) -> torch.Tensor:
    """diffusers' loop: set_timesteps, then step(ε_θ(x, t), t, x) at each timestep, with float64 σ's from ᾱ."""
    scheduler = _scheduler(alphas_cumprod.shape[0])
    scheduler.set_timesteps(num_steps)
    ts = scheduler.timesteps
    if float64:
        a = alphas_cumprod[ts]
        scheduler.sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])
        scheduler.alphas_cumprod = alphas_cumprod
    x = x_T
    with KeepFloat64() if float64 else warnings.catch_warnings():
        for t in ts:
            eps = eps_model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
            x = scheduler.step(eps, t, x).prev_sample
    return x


# --- dpm_lambda and the timesteps ----------------------------------------------------------------------


def test_lambda_is_half_the_log_snr_and_infinite_at_the_data():
    """Is λ = ½ log(ᾱ/(1 − ᾱ)) (diffusers' lambda_t), +∞ at ᾱ = 1, in the input's dtype?"""
    scheduler = _scheduler()
    expected = 0.5 * torch.log(LINEAR / (1 - LINEAR))
    torch.testing.assert_close(dpm_lambda(LINEAR), expected, rtol=1e-12, atol=1e-12)
    # diffusers' λ is float32 from its float32 ᾱ: 1 − ᾱ near ᾱ = 1 (1 − ᾱ_0 = 1e-4) is only accurate to
    # u/(1 − ᾱ_0) = 6e-4 relative, i.e. 3e-4 in λ; 1e-3 leaves a 3x margin.
    torch.testing.assert_close(dpm_lambda(scheduler.alphas_cumprod.double()), scheduler.lambda_t.double(),
                               rtol=0, atol=1e-3)
    assert dpm_lambda(LINEAR.float()).dtype == torch.float32
    assert dpm_lambda(torch.ones((), dtype=torch.float64)) == math.inf


def test_timesteps_equal_diffusers_set_timesteps():
    """Are the timesteps diffusers' set_timesteps for many (T, num_steps), num_steps = 1 and T − 1 included?"""
    for T_ in (2, 3, 7, 10, 17, 50, 100, 999, 1000):
        scheduler = _scheduler(T_)
        for num_steps in sorted({*range(1, min(T_ - 1, 30) + 1), *(n for n in (50, 61, 97, 250, 998, 999) if n < T_)}):
            scheduler.set_timesteps(num_steps)
            actual = dpm_solver_timesteps(T_, num_steps)
            assert actual.dtype == torch.long and actual.shape == (num_steps,)
            assert int(actual[0]) == T_ - 1 and torch.all(actual[:-1] > actual[1:]), (T_, num_steps, actual)
            assert torch.equal(actual, scheduler.timesteps), (T_, num_steps, actual, scheduler.timesteps)


def test_timesteps_reject_step_counts_outside_one_to_T_minus_one():
    for args in [(10, 0), (10, 10), (1, 1)]:
        with pytest.raises(ValueError):
            dpm_solver_timesteps(*args)


# --- the whole sampling loop against diffusers ----------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 14, 15, 25, 100, 999])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sample_equals_diffusers_loop(num_steps, schedule):
    """From a given x_T, is dpm_solver_sample diffusers' set_timesteps/step loop, to float64 round-off?

    1: one first-order step from T − 1 to the data; 2: first-order both; 3: one 2M step;
    14/15: diffusers' lower_order_final threshold (with final_sigmas_type="zero" the last step
    is first order either way); 999 = T − 1: every timestep.
    """
    ac = LINEAR if schedule == "linear" else COSINE
    if num_steps == 999 and schedule == "cosine":
        pytest.skip("one 999-step run is enough")
    x_T = _randn((6, 4), num_steps)
    model = DATA.eps_model(ac)
    expected = diffusers_sample(model, x_T, ac, num_steps)
    actual = dpm_solver_sample(model, (6, 4), ac, num_steps, x_T=x_T)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_the_float64_comparison_is_needed():
    """Without the float64 σ's and the neutralised cast diffusers is only float32-accurate (so the test above is
    the strict one): the difference is ≥ 1e-8, far above ATOL."""
    x_T = _randn((6, 4), 0)
    model = DATA.eps_model(LINEAR)
    loose = diffusers_sample(model, x_T, LINEAR, 10, float64=False)
    assert (loose - dpm_solver_sample(model, (6, 4), LINEAR, 10, x_T=x_T)).abs().max() > 1e-8


# --- the steps -----------------------------------------------------------------------------------------


@DETERMINISTIC
@given(t=st.integers(0, T - 1), t_prev=st.integers(-1, T - 2), seed=st.integers(0, 2**16),
       schedule=st.sampled_from(["linear", "cosine"]))
@example(t=999, t_prev=-1, seed=0, schedule="linear")
@example(t=0, t_prev=-1, seed=0, schedule="cosine")
@example(t=1, t_prev=0, seed=0, schedule="cosine")
@example(t=999, t_prev=998, seed=0, schedule="linear")
def test_first_order_step_is_ddim_with_eta_zero(t, t_prev, seed, schedule):
    """Is dpm_solver_first_order_step(x̂₀(ε), t, t_prev, x_t) = ddim_step(ε, t, t_prev, x_t, η = 0)?"""
    t_prev = min(t_prev, t - 1)
    ac = LINEAR if schedule == "linear" else COSINE
    xt, eps = _randn((3, 2, 2), seed), _randn((3, 2, 2), seed + 1)
    a = ac[t]
    x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
    scale = 1 + xt.abs() + eps.abs() / a.sqrt()  # the terms of x̂₀, which DDIM and DPM group differently
    torch.testing.assert_close(dpm_solver_first_order_step(x0, t, t_prev, xt, ac) / scale,
                               ddim_step(eps, t, t_prev, xt, ac, 0.0) / scale, rtol=0, atol=ATOL)


def test_2m_step_equals_diffusers_second_order_update():
    """Is one 2M step diffusers' multistep_dpm_solver_second_order_update (midpoint) at the same three timesteps?"""
    scheduler = _scheduler()
    scheduler.set_timesteps(10)
    ts = scheduler.timesteps.tolist()
    a = LINEAR[scheduler.timesteps]
    scheduler.sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])
    for i in range(1, 9):
        x, m0, m1 = (_randn((3, 4), 10 * i + k) for k in range(3))
        scheduler._step_index = i
        expected = scheduler.multistep_dpm_solver_second_order_update([m1, m0], sample=x)
        actual = dpm_solver_2m_step(m0, m1, ts[i], ts[i + 1], ts[i - 1], x, LINEAR)
        torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_2m_step_with_equal_predictions_is_the_first_order_step():
    """With x̂₀_last = x̂₀ (D₁ = 0) the 2M step is the first-order one."""
    x, x0 = _randn((3, 4), 0), _randn((3, 4), 1)
    torch.testing.assert_close(dpm_solver_2m_step(x0, x0, 500, 400, 600, x, LINEAR),
                               dpm_solver_first_order_step(x0, 500, 400, x, LINEAR), rtol=0, atol=1e-14)


def test_float32_inputs_give_float32_results_close_to_float64():
    """Do float32 samples give float32 results (coefficients cast to the sample's dtype) near the float64 ones?"""
    x, x0, x0_last = _randn((5, 3), 0), _randn((5, 3), 1), _randn((5, 3), 2)
    for fn, args in [(dpm_solver_first_order_step, (x0, 500, 400, x)), (dpm_solver_first_order_step, (x0, 3, -1, x)),
                     (dpm_solver_2m_step, (x0, x0_last, 500, 400, 600, x))]:
        out64 = fn(*args, LINEAR)
        out32 = fn(*(a.float() if isinstance(a, torch.Tensor) else a for a in args), LINEAR)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)
    model = GaussianData(DATA.mean.float(), DATA.var.float()).eps_model(LINEAR)  # a float32 model
    out = dpm_solver_sample(model, (5, 4), LINEAR, 10, x_T=_randn((5, 4), 3).float())
    assert out.dtype == torch.float32


def test_sampler_without_x_T_draws_it_from_the_generator_in_the_default_dtype():
    model = GaussianData(DATA.mean.float(), DATA.var.float()).eps_model(LINEAR)
    a = dpm_solver_sample(model, (5, 4), LINEAR, 5, generator=torch.Generator().manual_seed(3))
    x_T = torch.randn((5, 4), generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.get_default_dtype()
    assert torch.equal(a, dpm_solver_sample(model, (5, 4), LINEAR, 5, x_T=x_T))


# --- device-agnosticism on the meta device (see tests/reference/test_meta_device.py) ---------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_dpm_solver_function_runs_on_the_meta_device(dtype):
    """Does every function keep its work on the inputs' device (meta checks devices as CUDA does)?"""
    meta = torch.device("meta")
    ac = compute_alphas_cumprod(cosine_beta_schedule(50)).to(meta)
    x = torch.empty((4, 3), device=meta, dtype=dtype)
    data = GaussianData(torch.zeros(3, device=meta, dtype=dtype), torch.ones(3, device=meta, dtype=dtype))
    assert dpm_lambda(ac).device == meta
    outs = [dpm_solver_first_order_step(x, 20, 10, x, ac), dpm_solver_first_order_step(x, 20, -1, x, ac),
            dpm_solver_2m_step(x, x, 20, 10, 30, x, ac), dpm_solver_sample(data.eps_model(ac), (4, 3), ac, 5, x_T=x)]
    for out in outs:
        assert out.device == meta and out.dtype == dtype and out.shape == x.shape


# --- the exact laws on Gaussian data (reference.laws) ----------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 3, 10, 50, 999])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_affine_law_from_a_given_x_T_is_the_sampler(num_steps, schedule):
    """From a fixed x_T, is the law's mean (derived in ᾱ, independently) the sampler's output, with variance 0?"""
    ac = LINEAR if schedule == "linear" else COSINE
    x_T = _randn((5, 4), 7)
    mean, var = laws.dpm_solver_sample_law(DATA, ac, num_steps, x_T=x_T)
    torch.testing.assert_close(dpm_solver_sample(DATA.eps_model(ac), (5, 4), ac, num_steps, x_T=x_T), mean,
                               rtol=0, atol=ATOL)
    assert torch.all(var == 0)


def test_drawn_x_T_follows_the_exact_law():
    """Monte Carlo: N = 40,000 samples from drawn x_T, standardised by the law, are N(0, 1) per coordinate.

    Per coordinate z = Σr/√N ~ N(0, 1) and Σr² ~ χ²_N exactly (r are i.i.d. N(0, 1) under the law: the
    sampler is affine in x_T); 8 statistics at 1e-6/8 each (Bonferroni): false failure ≤ 1e-6 for this
    fixed seed. The law's variance P² is far from 1 (P ≈ 0.1 to 2), so a wrong law is visible.
    """
    from scipy import stats

    n = 40_000
    out = dpm_solver_sample(DATA.eps_model(LINEAR), (n, 4), LINEAR, 10, generator=torch.Generator().manual_seed(5))
    mean, var = laws.dpm_solver_sample_law(DATA, LINEAR, 10)
    r = (out.double() - mean) / var.sqrt()
    alpha = 1e-6 / 8
    assert torch.all((r.sum(0) / math.sqrt(n)).abs() <= stats.norm.isf(alpha / 2))
    q = (r**2).sum(0)
    assert torch.all((q >= stats.chi2.ppf(alpha / 2, n)) & (q <= stats.chi2.isf(alpha / 2, n)))


def test_pf_ode_flow_is_a_flow_and_carries_the_marginals():
    """Is the exact flow the identity at t, composable (t → s → u = t → u), and does it carry N(αμ, α²s² + σ²)?"""
    x = _randn((5, 4), 1)
    torch.testing.assert_close(laws.pf_ode_flow(DATA, LINEAR, 700, 700, x), x, rtol=0, atol=1e-14)
    two = laws.pf_ode_flow(DATA, LINEAR, 300, 20, laws.pf_ode_flow(DATA, LINEAR, 900, 300, x))
    torch.testing.assert_close(two, laws.pf_ode_flow(DATA, LINEAR, 900, 20, x), rtol=0, atol=1e-12)
    a, a_to = LINEAR[900], LINEAR[20]
    start = (a.sqrt() * DATA.mean, a * DATA.var + 1 - a)
    slope = laws.pf_ode_flow(DATA, LINEAR, 900, 20, start[0] + 1) - laws.pf_ode_flow(DATA, LINEAR, 900, 20, start[0])
    torch.testing.assert_close(laws.pf_ode_flow(DATA, LINEAR, 900, 20, start[0]), a_to.sqrt() * DATA.mean)
    torch.testing.assert_close(slope**2 * start[1], a_to * DATA.var + 1 - a_to)


def test_pf_ode_flow_solves_the_ode():
    """Does a fine RK4 integration of the ODE in λ, dx/dλ = σ'/σ·x + … (written as dx/dλ = (α x̂₀ − ... )),
    reach the exact flow? The ODE in λ (Lu et al. 2022, eq. 4 in x̂₀ form): d(x/σ)/dλ = e^{λ}·x̂₀(x, λ)."""
    mu, s2 = DATA.mean, DATA.var
    x = _randn((3, 4), 2)
    lam0, lam1 = float(dpm_lambda(LINEAR[900])), float(dpm_lambda(LINEAR[20]))

    def ab(lam):
        a2 = 1 / (1 + math.exp(-2 * lam))
        return math.sqrt(a2), math.sqrt(1 - a2)

    def f(lam, y):  # y = x/σ
        alpha, sigma = ab(lam)
        xx = sigma * y
        x0 = mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (xx - alpha * mu)
        return math.exp(lam) * x0

    y, lam, n = x / ab(lam0)[1], lam0, 4000
    h = (lam1 - lam0) / n
    for _ in range(n):
        k1 = f(lam, y)
        k2 = f(lam + h / 2, y + h / 2 * k1)
        k3 = f(lam + h / 2, y + h / 2 * k2)
        k4 = f(lam + h, y + h * k3)
        y, lam = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), lam + h
    torch.testing.assert_close(y * ab(lam1)[1], laws.pf_ode_flow(DATA, LINEAR, 900, 20, x), rtol=1e-9, atol=1e-9)


def test_lambda_uniform_schedule_gives_equal_steps_in_lambda():
    ac = laws.lambda_uniform_alphas_cumprod(961)
    lam = dpm_lambda(ac[dpm_solver_timesteps(961, 40)])
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((39,), 0.25, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert bool((ac[1:] < ac[:-1]).all()) and 0 < float(ac[-1]) and float(ac[0]) < 1


def test_measured_orders_are_two_for_2m_and_one_for_ddim():
    """On the λ-uniform schedule, error against the exact endpoint: DPM-Solver++(2M) ≈ 2, DDIM ≈ 1."""
    ac = laws.lambda_uniform_alphas_cumprod(961)
    x_T = _randn((8, 4), 3)
    model = DATA.eps_model(ac)
    nfes = [40, 80, 160]

    def error(fn, n):
        return float(((fn(n) - laws.dpm_solver_exact_endpoint(DATA, ac, n, x_T)) / DATA.var.sqrt()).abs().max())

    dpm = laws.convergence_order(nfes, [error(lambda n: dpm_solver_sample(model, None, ac, n, x_T=x_T), n)
                                        for n in nfes])
    ddim = laws.convergence_order(nfes, [error(lambda n: laws.affine_law(
        laws.point_law(x_T), *laws.dpm_solver_sample_affine(DATA, ac, n, first_order_only=True), 0.0)[0], n)
        for n in nfes])
    assert 1.9 < dpm < 2.1 and 0.9 < ddim < 1.1, (dpm, ddim)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_values_on_cuda_equal_the_cpu_ones():
    """Where a GPU exists: the same values on CUDA (float64), outputs on CUDA, x_T drawn on a CUDA generator there."""
    cuda = torch.device("cuda")
    x_T = _randn((6, 4), 0)
    cpu = dpm_solver_sample(DATA.eps_model(LINEAR), None, LINEAR, 10, x_T=x_T)
    data = GaussianData(DATA.mean.to(cuda), DATA.var.to(cuda))
    out = dpm_solver_sample(data.eps_model(LINEAR.to(cuda)), None, LINEAR.to(cuda), 10, x_T=x_T.to(cuda))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=1e-10)
    drawn = dpm_solver_sample(data.eps_model(LINEAR.to(cuda)), (6, 4), LINEAR.to(cuda), 10,
                              generator=torch.Generator(device=cuda).manual_seed(0))
    assert drawn.device.type == "cuda"
