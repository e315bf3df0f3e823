"""Device-agnosticism of the reference, checked without a GPU on PyTorch's ``meta`` device.

A meta tensor has a shape, a dtype and a device but no data. Mixing it with a
CPU tensor that is not a 0-dim scalar raises, exactly as CUDA does, so running
every reference function on meta inputs finds any tensor created on the CPU
inside the function (a ``torch.tensor(...)``, an ``arange`` without ``device=``)
and any ``.cpu()``/``.numpy()``/``.item()`` on an input, on CI machines without a
GPU. Values are checked on CUDA by ``test_devices.py`` where one exists.

Samplers that draw their starting point without an ``x_T`` draw it on the
generator's device, CPU without one (curriculum §4), so they are run from a
given start where they take one, and not at all here otherwise.
"""

from __future__ import annotations

import pytest
import torch

from reference import ddim, elbo, langevin, parametrization, q_sampler
from reference.toy import GaussianData, GaussianMixture

META = torch.device("meta")


def _setup(dtype: torch.dtype) -> dict:
    betas = q_sampler.cosine_beta_schedule(50).to(META)
    shape = (4, 3, 5)
    return {
        "betas": betas,
        "ac": q_sampler.compute_alphas_cumprod(betas),
        "x": torch.empty(shape, device=META, dtype=dtype),
        "z": torch.empty(shape, device=META, dtype=dtype),
        "t": torch.tensor([0, 1, 25, 49]).to(META),
        "sigmas": langevin.ve_sigmas(0.01, 10.0, 5).to(META),
        "gaussian": GaussianData(torch.zeros(3, 5, device=META, dtype=dtype), torch.ones(3, 5, device=META, dtype=dtype)),
        "mixture": GaussianMixture(torch.full((2,), 0.5, device=META, dtype=dtype),
                                   torch.zeros(2, 3, 5, device=META, dtype=dtype),
                                   torch.ones(2, 3, 5, device=META, dtype=dtype)),
    }


CALLS = {
    "q_sample": lambda s: q_sampler.q_sample(s["x"], s["t"], s["ac"], s["z"]),
    "q_step": lambda s: q_sampler.q_step(s["x"], s["t"], s["betas"], s["z"]),
    "q_posterior": lambda s: q_sampler.q_posterior(s["x"], s["z"], s["t"], s["betas"]),
    "predict_x0_from_eps": lambda s: parametrization.predict_x0_from_eps(s["x"], s["t"], s["z"], s["ac"]),
    "predict_eps_from_x0": lambda s: parametrization.predict_eps_from_x0(s["x"], s["t"], s["z"], s["ac"]),
    "velocity": lambda s: parametrization.velocity(s["x"], s["z"], s["t"], s["ac"]),
    "predict_x0_from_v": lambda s: parametrization.predict_x0_from_v(s["x"], s["t"], s["z"], s["ac"]),
    "predict_eps_from_v": lambda s: parametrization.predict_eps_from_v(s["x"], s["t"], s["z"], s["ac"]),
    "score_from_eps": lambda s: parametrization.score_from_eps(s["z"], s["t"], s["ac"]),
    "normal_kl": lambda s: elbo.normal_kl(s["x"], s["z"], s["z"], s["x"]),
    "discretized_gaussian_log_likelihood": lambda s: elbo.discretized_gaussian_log_likelihood(s["x"], s["z"], s["z"]),
    "prior_bpd": lambda s: elbo.prior_bpd(s["x"], s["ac"]),
    "vlb_term_bpd": lambda s: elbo.vlb_term_bpd(s["x"], s["z"], s["x"], s["z"], s["t"], s["betas"]),
    "elbo_bpd": lambda s: elbo.elbo_bpd(s["gaussian"].eps_model(s["ac"]), s["x"], s["betas"]),
    "langevin_dynamics": lambda s: langevin.langevin_dynamics(
        lambda y: s["mixture"].score_fn()(y, torch.ones(4, device=META)), s["x"], 1e-3, 3),
    "annealed_langevin_dynamics": lambda s: langevin.annealed_langevin_dynamics(
        s["mixture"].score_fn(), s["x"], s["sigmas"], 1e-3, 2),
    "reverse_diffusion_predictor": lambda s: langevin.reverse_diffusion_predictor(
        s["gaussian"].score_fn(), s["x"], s["sigmas"][0].expand(4), s["sigmas"][1].expand(4), noise=s["z"]),
    "langevin_corrector": lambda s: langevin.langevin_corrector(
        s["gaussian"].score_fn(), s["x"], s["sigmas"][0].expand(4), 0.16, noise=s["z"]),
    "ddim_sigma": lambda s: ddim.ddim_sigma(s["ac"][10], s["ac"][5], 0.5),
    "ddim_step": lambda s: ddim.ddim_step(s["z"], 10, 5, s["x"], s["ac"], 0.5, noise=s["z"]),
    "ddim_sample": lambda s: ddim.ddim_sample(
        s["gaussian"].eps_model(s["ac"]), (4, 3, 5), s["ac"], 5, eta=0.5, spacing="trailing", x_T=s["x"]),
    "ddim_invert": lambda s: ddim.ddim_invert(s["mixture"].eps_model(s["ac"]), s["x"], s["ac"], 5),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_reference_stays_on_the_input_device(name, dtype):
    """Does the function run on meta inputs, with its outputs on meta in the input's dtype?"""
    outputs = CALLS[name](_setup(dtype))
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        assert out.device == META, f"{name} returned a tensor on {out.device}"
        if name != "ddim_sigma":  # σ follows the schedule's dtype (float64), not the data's
            assert out.dtype == dtype, f"{name} returned {out.dtype} for {dtype} input"


def _to_cpu_inside(x0, t, alphas_cumprod, noise):
    return alphas_cumprod[t].sqrt().cpu().reshape(-1, 1, 1) * x0 + noise


def _cpu_arange_inside(x0, t, alphas_cumprod, noise):
    ramp = torch.linspace(0, 1, x0.shape[-1])  # made on the CPU, not on x0's device
    return alphas_cumprod[t].sqrt().reshape(-1, 1, 1) * x0 + ramp * noise


@pytest.mark.parametrize("leaky", [_to_cpu_inside, _cpu_arange_inside])
def test_device_leaks_are_caught_on_meta(leaky):
    """The check is not vacuous: .cpu() on an input, or a non-scalar CPU tensor mixed in, fails on meta."""
    s = _setup(torch.float32)
    with pytest.raises((RuntimeError, NotImplementedError)):
        leaky(s["x"], s["t"], s["ac"], s["z"])
