"""Does reference.latent_vae match the closed forms, diffusers' DiagonalGaussianDistribution, and train?"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import latent_vae as ref

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.lists(st.integers(1, 4), max_size=2).map(tuple))


def _parameters(batch, channels, rest, seed, dtype=torch.float64):
    """(B, 2C, ...): means N(0, 1), log-variances spread over [−4, 2] (exp(logvar) and exp(logvar/2) differ)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, channels, *rest, generator=g, dtype=torch.float64)
    logvar = -4 + 6 * torch.rand(batch, channels, *rest, generator=g, dtype=torch.float64)
    return torch.cat([mean, logvar], dim=1).to(dtype), mean, logvar


@SETTINGS
@given(shapes, st.integers(0, 2**16))
def test_diagonal_gaussian_matches_the_closed_forms(shape, seed):
    batch, channels, rest = shape
    params, mean, logvar = _parameters(batch, channels, rest, seed)
    dist = ref.DiagonalGaussian(params)
    torch.testing.assert_close(dist.mean, mean)
    torch.testing.assert_close(dist.logvar, logvar)
    torch.testing.assert_close(dist.std, torch.exp(logvar / 2))
    torch.testing.assert_close(dist.var, torch.exp(logvar))
    assert dist.mode() is dist.mean
    # KL(N(μ, σ²) ‖ N(0, 1)) per entry from torch.distributions, summed per sample.
    q = torch.distributions.Normal(mean, torch.exp(logvar / 2))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(q, p).reshape(batch, -1).sum(1)
    torch.testing.assert_close(dist.kl(), kl)
    x = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    torch.testing.assert_close(dist.nll(x), -q.log_prob(x).reshape(batch, -1).sum(1))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    torch.testing.assert_close(dist.sample(noise), mean + torch.exp(logvar / 2) * noise)
    torch.testing.assert_close(ref.reparameterize(mean, logvar, noise), dist.sample(noise))


def test_logvar_is_clamped_to_minus_30_and_20():
    params = torch.tensor([[0.0, 1.0, -50.0, 30.0]]).reshape(1, 4)  # mean (0, 1), logvar (−50, 30)
    dist = ref.DiagonalGaussian(params)
    assert dist.logvar.tolist() == [[-30.0, 20.0]]
    assert torch.isfinite(dist.var).all() and torch.isfinite(dist.kl()).all()


@pytest.mark.slow  # importing diffusers takes seconds
@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_diffusers_diagonal_gaussian_distribution(seed):
    vae = pytest.importorskip("diffusers.models.autoencoders.vae")
    params, _, logvar = _parameters(2, 3, (4, 4), seed)
    params[0, 3, 0, 0], params[1, 4, 1, 1] = -45.0, 28.0  # the clamp, in both directions
    ours, theirs = ref.DiagonalGaussian(params), vae.DiagonalGaussianDistribution(params)
    for name in ("mean", "logvar", "std", "var"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.kl(), theirs.kl(), rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours.nll(x), theirs.nll(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.mode(), theirs.mode())
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    torch.testing.assert_close(ours.sample(generator=g1), theirs.sample(generator=g2), rtol=1e-12, atol=0)


def test_sample_without_noise_has_the_posterior_law():
    """100,000 draws of each of 4 entries: the standardised sample's mean and variance (z-scores < 5)."""
    params, mean, logvar = _parameters(1, 4, (), 3)
    dist = ref.DiagonalGaussian(params.expand(100_000, -1).contiguous())
    z = (dist.sample(generator=torch.Generator().manual_seed(0)) - dist.mean) / dist.std
    n = z.shape[0]
    assert (z.mean(0).abs() * math.sqrt(n)).max() < 5
    assert ((z.square().mean(0) - 1).abs() * math.sqrt(n / 2)).max() < 5


def test_vae_loss_weights_only_the_kl():
    params, _, _ = _parameters(3, 2, (2, 2), 0)
    posterior = ref.DiagonalGaussian(params)
    x, x_recon = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    recon = (x - x_recon).square().sum((1, 2, 3))
    for beta in (0.0, 1e-3, 1.0, 7.0):
        torch.testing.assert_close(ref.vae_loss(x, x_recon, posterior, beta), (recon + beta * posterior.kl()).mean())


def test_latent_scale_factor_is_one_over_the_std():
    z = 5.49 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor = ref.latent_scale_factor(z)
    assert isinstance(factor, float) and abs(factor - 1 / z.std().item()) < 1e-12
    assert abs((z * factor).std().item() - 1) < 1e-12


@pytest.mark.parametrize("in_channels, latent_channels, num_down, size", [(1, 4, 2, 16), (3, 2, 1, 8), (1, 3, 3, 16)])
def test_autoencoder_shapes(in_channels, latent_channels, num_down, size):
    torch.manual_seed(0)
    model = ref.TinyAutoencoderKL(in_channels, latent_channels, num_down)
    x = torch.randn(2, in_channels, size, size)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, latent_channels, size // 2**num_down, size // 2**num_down)
    assert model.decode(posterior.mode()).shape == x.shape
    recon, post = model(x)
    assert recon.shape == x.shape and post.logvar.shape == posterior.mean.shape


def _shapes(n, seed):
    spec = importlib.util.spec_from_file_location("shapes", ROOT / "datasets" / "shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_shapes(n, torch.Generator().manual_seed(seed))[0]


@pytest.mark.slow
def test_a_short_training_run_on_the_shapes_lowers_the_loss():
    torch.manual_seed(0)
    images = _shapes(64, 0)
    model = ref.TinyAutoencoderKL(1, 4, 2, width=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        recon, posterior = model(images, generator=g)
        loss = ref.vae_loss(images, recon, posterior, kl_weight=1e-3)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_is_device_agnostic_on_the_meta_device():
    params = torch.empty(2, 8, 4, 4, device="meta")
    dist = ref.DiagonalGaussian(params)
    assert dist.kl().device.type == "meta" and dist.sample().device.type == "meta"
    model = ref.TinyAutoencoderKL().to("meta")
    assert model(torch.empty(1, 1, 16, 16, device="meta"))[0].device.type == "meta"
