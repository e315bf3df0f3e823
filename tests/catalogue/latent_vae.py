"""latent_vae: realistic bugs and correct alternatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reference import latent_vae as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


def _sum(x):
    return x.reshape(x.shape[0], -1).sum(1)


# -- DiagonalGaussian bugs ----------------------------------------------------------------------


class StdIsVar(ref.DiagonalGaussian):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.std = torch.exp(self.logvar)  # e^{logvar} is the variance


class NoClamp(ref.DiagonalGaussian):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.logvar = torch.chunk(parameters, 2, dim=1)[1]
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)


class ClampSwapped(ref.DiagonalGaussian):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.logvar = torch.chunk(parameters, 2, dim=1)[1].clamp(-20.0, 30.0)
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)


class SplitLastDim(ref.DiagonalGaussian):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.mean, logvar = torch.chunk(parameters, 2, dim=-1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)


class KlNoHalf(ref.DiagonalGaussian):
    def kl(self):
        return _sum(self.mean**2 + self.var - 1.0 - self.logvar)


class KlMean(ref.DiagonalGaussian):
    def kl(self):
        return 0.5 * (self.mean**2 + self.var - 1.0 - self.logvar).reshape(self.mean.shape[0], -1).mean(1)


class KlSign(ref.DiagonalGaussian):
    def kl(self):
        return 0.5 * _sum(self.mean**2 + self.var - 1.0 + self.logvar)


class NllNoLogTwoPi(ref.DiagonalGaussian):
    def nll(self, x):
        return 0.5 * _sum(self.logvar + (x - self.mean) ** 2 / self.var)


class NllStd(ref.DiagonalGaussian):
    def nll(self, x):
        return 0.5 * _sum(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.std)


class SampleIgnoresNoise(ref.DiagonalGaussian):
    def sample(self, noise=None, generator=None):
        return self.mean + self.std * torch.randn_like(self.mean)


class SampleVar(ref.DiagonalGaussian):
    def sample(self, noise=None, generator=None):
        noise = torch.randn_like(self.mean) if noise is None else noise
        return self.mean + self.var * noise


class SampleSameNoise(ref.DiagonalGaussian):
    def sample(self, noise=None, generator=None):
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=torch.Generator().manual_seed(0),
                                dtype=self.mean.dtype).to(self.mean.device)  # "reproducible": the same every call
        return self.mean + self.std * noise


# -- function bugs --------------------------------------------------------------------------------


def reparameterize_var(mean, logvar, noise):
    return mean + torch.exp(logvar) * noise


def reparameterize_half_var(mean, logvar, noise):
    return mean + 0.5 * torch.exp(logvar) * noise


def loss_weights_reconstruction(x, x_recon, posterior, kl_weight):
    return (kl_weight * _sum((x - x_recon) ** 2) + posterior.kl()).mean()


def loss_per_pixel(x, x_recon, posterior, kl_weight):
    return ((x - x_recon) ** 2).mean() + kl_weight * posterior.kl().mean()


def loss_batch_sum(x, x_recon, posterior, kl_weight):
    return (_sum((x - x_recon) ** 2) + kl_weight * posterior.kl()).sum()


def scale_rms(latents):
    return 1.0 / float(latents.square().mean().sqrt())  # not centred


def scale_per_channel(latents):
    return 1.0 / latents.std(dim=(0, 2, 3))


def scale_std(latents):
    return float(latents.std())


class EncoderOneHalf(ref.TinyAutoencoderKL):
    """The encoder ends in latent_channels, not 2 · latent_channels: the split halves the latent."""

    def __init__(self, in_channels=1, latent_channels=4, num_down=2):
        super().__init__(in_channels, latent_channels, num_down)
        self.encoder[-1] = nn.Conv2d(32, latent_channels, 3, padding=1)
        self.decoder[0] = nn.Conv2d(max(latent_channels // 2, 1), 32, 3, padding=1)


class OneUpsampleShort(ref.TinyAutoencoderKL):
    def __init__(self, in_channels=1, latent_channels=4, num_down=2):
        super().__init__(in_channels, latent_channels, num_down)
        self.decoder = nn.Sequential(*list(self.decoder)[:2], *list(self.decoder)[5:])  # drops one upsampling stage


BUGS = [
    Bug("std is e^logvar", "DiagonalGaussian", StdIsVar, "std = exp(logvar), the variance"),
    Bug("no clamp", "DiagonalGaussian", NoClamp, "logvar not clamped to [−30, 20]"),
    Bug("clamp swapped", "DiagonalGaussian", ClampSwapped, "clamp(−20, 30) for clamp(−30, 20)"),
    Bug("split last dim", "DiagonalGaussian", SplitLastDim, "chunk along the last dim, not the channels"),
    Bug("kl without ½", "DiagonalGaussian", KlNoHalf, "the ½ of the Gaussian KL forgotten"),
    Bug("kl mean", "DiagonalGaussian", KlMean, "the KL averaged over entries, not summed"),
    Bug("kl sign", "DiagonalGaussian", KlSign, "+ logvar for − logvar in the KL"),
    Bug("nll without log 2π", "DiagonalGaussian", NllNoLogTwoPi, "the normalising constant dropped"),
    Bug("nll by std", "DiagonalGaussian", NllStd, "(x − μ)²/σ for (x − μ)²/σ²"),
    Bug("sample ignores noise", "DiagonalGaussian", SampleIgnoresNoise, "noise= is ignored"),
    Bug("sample by var", "DiagonalGaussian", SampleVar, "mean + var · noise"),
    Bug("sample same noise", "DiagonalGaussian", SampleSameNoise, "a fixed seed inside sample(): every call the same"),
    Bug("reparameterize by var", "reparameterize", reparameterize_var, "e^{logvar} for e^{logvar/2}"),
    Bug("reparameterize half var", "reparameterize", reparameterize_half_var, "½ e^{logvar} for e^{logvar/2}"),
    Bug("weights the reconstruction", "vae_loss", loss_weights_reconstruction, "kl_weight on the wrong term"),
    Bug("per-pixel mean", "vae_loss", loss_per_pixel, "MSE averaged over pixels"),
    Bug("batch sum", "vae_loss", loss_batch_sum, "summed over the batch, not averaged"),
    Bug("rms", "latent_scale_factor", scale_rms, "1/√mean(z²): the mean not removed"),
    Bug("per channel", "latent_scale_factor", scale_per_channel, "one factor per channel"),
    Bug("std not inverse", "latent_scale_factor", scale_std, "std instead of 1/std"),
    Bug("encoder one half", "TinyAutoencoderKL", EncoderOneHalf, "encoder ends in C channels, not 2C"),
    Bug("one upsampling short", "TinyAutoencoderKL", OneUpsampleShort, "one stage fewer in the decoder"),
]


# -- correct alternatives -----------------------------------------------------------------------


class SlicedPerElement:
    """Slicing instead of torch.chunk, KL and NLL written per element then summed, std as √var."""

    def __init__(self, parameters):
        c = parameters.shape[1] // 2
        self.mean = parameters[:, :c]
        self.logvar = parameters[:, c:].clamp(min=-30.0, max=20.0)
        self.var = self.logvar.exp()
        self.std = self.var.sqrt()

    def sample(self, noise=None):
        if noise is None:
            noise = torch.randn_like(self.mean)
        return self.mean + self.std * noise

    def mode(self):
        return self.mean

    def kl(self):
        per_element = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return per_element.flatten(1).sum(-1)

    def nll(self, x):
        log_prob = -0.5 * (math.log(2 * math.pi) + self.logvar + (x - self.mean).pow(2) / self.var)
        return -log_prob.flatten(1).sum(-1)


def reparameterize_sqrt(mean, logvar, noise):
    return mean + logvar.exp().sqrt() * noise


def loss_mse_sum(x, x_recon, posterior, kl_weight):
    return F.mse_loss(x_recon, x, reduction="sum") / x.shape[0] + kl_weight * posterior.kl().mean()


def scale_from_var(latents):
    return float(latents.var(unbiased=False).rsqrt())


class TransposedConvAutoencoder(nn.Module):
    """ConvTranspose2d upsampling and a GroupNorm, as AutoencoderKL's blocks have."""

    def __init__(self, in_channels=1, latent_channels=4, num_down=2):
        super().__init__()
        width = 16
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.SiLU()]
        for _ in range(num_down):
            layers += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, 2 * latent_channels, 1)]
        self.encoder = nn.Sequential(*layers)
        layers = [nn.Conv2d(latent_channels, width, 1), nn.SiLU()]
        for _ in range(num_down):
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x):
        return ref.DiagonalGaussian(self.encoder(x))

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        posterior = self.encode(x)
        return self.decode(posterior.sample()), posterior


ALTERNATIVES = [
    Alternative("slicing, per element", "DiagonalGaussian", SlicedPerElement, "slices and per-element KL/NLL"),
    Alternative("√exp", "reparameterize", reparameterize_sqrt, "std as √(e^{logvar})"),
    Alternative("mse_loss sum", "vae_loss", loss_mse_sum, "F.mse_loss(reduction='sum') / B"),
    Alternative("from the variance", "latent_scale_factor", scale_from_var, "1/√var, biased"),
    Alternative("transposed convolutions", "TinyAutoencoderKL", TransposedConvAutoencoder, "ConvTranspose2d"),
]
