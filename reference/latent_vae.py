"""The KL-regularised autoencoder of latent diffusion: a diagonal Gaussian posterior, its loss, its scale.

Notation (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
§3 and appendix G; Kingma & Welling 2014 for the reparameterisation; code names as in
diffusers' ``DiagonalGaussianDistribution`` and ``AutoencoderKL``):

    parameters   the encoder's output (B, 2C, ...), split along dim 1 into (mean, logvar)
    logvar       log σ², clamped to [−30, 20] so that exp never under- or overflows float32
    z            mean + σ·ε, ε ~ N(0, I)                          (the reparameterisation trick)
    KL           ½ Σ (μ² + σ² − 1 − log σ²)  to N(0, I), per sample   (summed over non-batch dims)
    NLL(x)       ½ Σ (log 2π + log σ² + (x − μ)²/σ²), per sample
    loss         mean over the batch of Σ (x − x̂)² + β·KL          (β = kl_weight, ~1e-6 in SD)
    scale        1 / std(z): Stable Diffusion multiplies latents by 0.18215 so that the
                 diffusion model sees unit-variance data

Agreement with diffusers' ``DiagonalGaussianDistribution`` (mean, logvar, std, var, kl, nll,
mode, sample with the same noise) is tested in tests/reference/test_latent_vae.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DiagonalGaussian", "reparameterize", "vae_loss", "latent_scale_factor", "TinyAutoencoderKL"]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def _sum_over_non_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = μ + e^{logvar/2}·ε: a draw of N(μ, e^{logvar}) that is differentiable in μ and logvar."""
    return mean + torch.exp(0.5 * logvar) * noise


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) from an encoder's output ``parameters`` (B, 2C, ...), split along dim 1.

    Attributes:
        mean, logvar: ``(B, C, ...)``; logvar clamped to [−30, 20].
        std, var: e^{logvar/2} and e^{logvar}.
    """

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std·noise; ``noise`` N(0, I) like ``mean`` (drawn from ``generator`` when not given)."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return reparameterize(self.mean, self.logvar, noise)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per sample, ``(B,)``, in nats."""
        return 0.5 * _sum_over_non_batch(self.mean**2 + self.var - 1.0 - self.logvar)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """−log q(x) per sample, ``(B,)``, in nats."""
        return 0.5 * _sum_over_non_batch(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.var)


def vae_loss(x: torch.Tensor, x_recon: torch.Tensor, posterior, kl_weight: float) -> torch.Tensor:
    """Scalar: batch mean of (Σ (x − x̂)² over non-batch dims + kl_weight·posterior.kl())."""
    return (_sum_over_non_batch((x - x_recon) ** 2) + kl_weight * posterior.kl()).mean()


def latent_scale_factor(latents: torch.Tensor) -> float:
    """1 / std of all latent entries: the factor that gives the diffusion model unit-variance latents."""
    return 1.0 / float(latents.detach().flatten().std())


class TinyAutoencoderKL(nn.Module):
    """A small convolutional KL-autoencoder: ``num_down`` stride-2 stages, ``latent_channels`` latent channels.

    encode: (B, in_channels, H, W) → DiagonalGaussian of (B, latent_channels, H/2^k, W/2^k), k = num_down;
    decode: latents → (B, in_channels, H, W); forward(x) → (decode(posterior.sample()), posterior).
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, num_down: int = 2, width: int = 32) -> None:
        super().__init__()
        encoder = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(num_down):
            encoder += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
        encoder.append(nn.Conv2d(width, 2 * latent_channels, 3, padding=1))  # (mean, logvar)
        decoder = [nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(num_down):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        decoder.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(noise, generator)), posterior
