"""Is the reference device-agnostic: the same values on CUDA as on the CPU, outputs on the input's device?

Runs only where a CUDA GPU exists (skipped on CPU-only CI); the device-dependent
path of the grader (``grade submit --device cuda``) is exercised at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from reference import ddim, elbo, langevin, parametrization, q_sampler
from reference.toy import GaussianData

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[2]


def _inputs():
    g = torch.Generator().manual_seed(0)
    betas = q_sampler.linear_beta_schedule(50)
    ac = q_sampler.compute_alphas_cumprod(betas)
    x = torch.randn(4, 3, 5, generator=g)
    noise = torch.randn(4, 3, 5, generator=g)
    t = torch.tensor([0, 1, 25, 49])
    return betas, ac, x, noise, t


def _same(cpu_value, cuda_value, rtol=1e-5, atol=1e-6):
    if isinstance(cpu_value, (tuple, list)):
        for a, b in zip(cpu_value, cuda_value):
            _same(a, b, rtol, atol)
        return
    assert cuda_value.device.type == "cuda"
    torch.testing.assert_close(cuda_value.cpu(), cpu_value, rtol=rtol, atol=atol)


def _on(device, *values):
    return [v.to(device) for v in values]


def test_forward_process_and_parametrization_on_cuda():
    """Do q_sampler's and parametrization's functions give the CPU's values on CUDA?"""
    betas, ac, x, noise, t = _inputs()
    for fn, args in [(q_sampler.q_sample, (x, t, ac, noise)), (q_sampler.q_step, (x, t, betas, noise)),
                     (q_sampler.q_posterior, (x, noise, t, betas)),
                     (parametrization.predict_x0_from_eps, (x, t, noise, ac)),
                     (parametrization.velocity, (x, noise, t, ac))]:
        _same(fn(*args), fn(*_on(CUDA, *args)))


def test_elbo_terms_on_cuda():
    """Do the ELBO terms give the CPU's values on CUDA?"""
    betas, ac, x, noise, t = _inputs()
    x = x.clamp(-1, 1)
    _same(elbo.normal_kl(x, noise, noise, x), elbo.normal_kl(*_on(CUDA, x, noise, noise, x)))
    _same(elbo.prior_bpd(x, ac), elbo.prior_bpd(*_on(CUDA, x, ac)))


def test_samplers_on_cuda():
    """Do the samplers run on CUDA with a CUDA generator and keep their outputs there?"""
    betas, ac, x, noise, t = _inputs()
    data = GaussianData(torch.zeros(3, 5, device=CUDA, dtype=torch.float64),
                        torch.ones(3, 5, device=CUDA, dtype=torch.float64))
    generator = torch.Generator(device=CUDA).manual_seed(0)
    out = ddim.ddim_sample(data.eps_model(ac.to(CUDA)), (4, 3, 5), ac.to(CUDA), 10, eta=0.5, generator=generator)
    assert out.device.type == "cuda"
    sigmas = langevin.ve_sigmas(0.01, 10.0, 5)
    out = langevin.pc_sample(data.score_fn(), (4, 3, 5), sigmas.to(CUDA), generator=generator)
    assert out.device.type == "cuda"


@pytest.mark.slow
def test_grading_on_cuda(tmp_path):
    """Does grade submit --device cuda give the solution full marks?"""
    from grader.cli import main

    shutil.copytree(ROOT / "solutions" / "q_sampler", tmp_path / "q_sampler")
    assert main(["submit", str(tmp_path / "q_sampler"), "--device", "cuda"]) == 0
