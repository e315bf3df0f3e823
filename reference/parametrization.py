"""What the network predicts: ε, x₀, v and the score, and how to convert between them.

Notation (Ho et al. 2020; Salimans & Ho 2022, "Progressive Distillation", §4 and App. D):

    ᾱ_t      alphas_cumprod[t];   a_t = √ᾱ_t,   σ_t = √(1 − ᾱ_t),   a_t² + σ_t² = 1
    x_t      a_t · x₀ + σ_t · ε                                   (Ho et al. eq. 4)
    v        a_t · ε − σ_t · x₀                                   (Salimans & Ho eq. 9 / App. D)
    SNR(t)   ᾱ_t / (1 − ᾱ_t) = a_t² / σ_t²                        (Kingma et al. 2021, "Variational Diffusion Models")
    score    ∇ log q(x_t) = −E[ε | x_t] / σ_t                     (Song et al. 2021, eq. 4 of "Score-Based
                                                                   Generative Modeling through SDEs"; Vincent 2011)

Every conversion is linear in its tensor arguments with per-timestep
coefficients; the coefficients are computed from ``alphas_cumprod`` in its own
dtype (float64 for the course's schedules), gathered with
:func:`reference._broadcast.extract` and only then cast to the data's dtype and
device. Results have the data's dtype and device.

The ``(B,)`` quantities :func:`snr` and :func:`mse_weight` take no data tensor:
they are returned in ``alphas_cumprod``'s dtype and on its device (float64 for the
course's schedules), so that a float32 batch never sees a float32 SNR near
t = 0 or t = T − 1, where 1 − ᾱ_t or ᾱ_t is tiny.
"""

from __future__ import annotations

import torch

from reference._broadcast import extract

__all__ = [
    "PARAMETRIZATIONS",
    "predict_x0_from_eps",
    "predict_eps_from_x0",
    "velocity",
    "predict_x0_from_v",
    "predict_eps_from_v",
    "score_from_eps",
    "snr",
    "training_target",
    "mse_weight",
]

PARAMETRIZATIONS = ("eps", "x0", "v")
"""The regression targets a network can be trained on, by the names :func:`training_target` accepts."""


def _check_parametrization(parametrization: str) -> None:
    """Raise ValueError with the accepted names when ``parametrization`` is not one of them."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"unknown parametrization {parametrization!r}: expected one of "
            f"{', '.join(repr(p) for p in PARAMETRIZATIONS)} "
            "(the network predicts the noise ε, the clean data x0, or the velocity v)"
        )


def _gather(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t]``, ``(B,)``, on ``alphas_cumprod``'s device and in its dtype."""
    return alphas_cumprod[torch.as_tensor(t, device=alphas_cumprod.device).long()]


def predict_x0_from_eps(
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """x̂₀ from a noise prediction: invert x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε for x₀.

    x̂₀ = x_t / √ᾱ_t − √(1/ᾱ_t − 1) · ε                       (Ho et al. 2020, eq. 15)

    The two coefficients are improved-diffusion's ``sqrt_recip_alphas_cumprod``
    and ``sqrt_recipm1_alphas_cumprod``; both grow like 1/√ᾱ_t, so near t = T − 1
    of a cosine schedule x̂₀ amplifies the rounding error of x_t and ε by 1/√ᾱ_t.
    The second is computed as √((1 − ᾱ_t)/ᾱ_t), not improved-diffusion's
    √(1/ᾱ_t − 1), which cancels where ᾱ_t ≈ 1 (a relative error of ~1e-12 in
    float64 at t = 0 of the linear schedule, where 1 − ᾱ_0 = 1e-4).

    Args:
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps.
        eps: ``(B, ...)`` the (predicted) noise ε.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` x̂₀, in ``xt``'s dtype and device.
    """
    sqrt_recip_alpha_bar = extract((1 / alphas_cumprod).sqrt(), t, xt)
    sqrt_recipm1_alpha_bar = extract(((1 - alphas_cumprod) / alphas_cumprod).sqrt(), t, xt)
    return sqrt_recip_alpha_bar * xt - sqrt_recipm1_alpha_bar * eps


def predict_eps_from_x0(
    xt: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """ε̂ from a clean-data prediction: invert x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε for ε.

    ε̂ = (x_t − √ᾱ_t · x₀) / √(1 − ᾱ_t)                        (Ho et al. 2020, eq. 4 solved for ε)

    Args:
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps.
        x0: ``(B, ...)`` the (predicted) clean data x₀.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` ε̂, in ``xt``'s dtype and device.
    """
    sqrt_alpha_bar = extract(alphas_cumprod.sqrt(), t, xt)
    sqrt_one_minus_alpha_bar = extract((1 - alphas_cumprod).sqrt(), t, xt)
    return (xt - sqrt_alpha_bar * x0) / sqrt_one_minus_alpha_bar


def velocity(
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The v-prediction target: v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀.

    Salimans & Ho (2022), "Progressive Distillation for Fast Sampling of
    Diffusion Models", eq. 9 and App. D; diffusers' ``DDPMScheduler.get_velocity``.
    With φ_t = arctan(σ_t / a_t), x_t = cos φ · x₀ + sin φ · ε and v = dx_t/dφ.

    Args:
        x0: ``(B, ...)`` clean data x₀.
        eps: ``(B, ...)`` noise ε.
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` v, in ``x0``'s dtype and device.
    """
    sqrt_alpha_bar = extract(alphas_cumprod.sqrt(), t, x0)
    sqrt_one_minus_alpha_bar = extract((1 - alphas_cumprod).sqrt(), t, x0)
    return sqrt_alpha_bar * eps - sqrt_one_minus_alpha_bar * x0


def predict_x0_from_v(
    xt: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """x̂₀ from a v-prediction: x̂₀ = √ᾱ_t · x_t − √(1 − ᾱ_t) · v.

    Salimans & Ho (2022), App. D (a rotation by −φ_t; well conditioned at every t
    because a_t² + σ_t² = 1).

    Args:
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps.
        v: ``(B, ...)`` the (predicted) velocity v.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` x̂₀, in ``xt``'s dtype and device.
    """
    sqrt_alpha_bar = extract(alphas_cumprod.sqrt(), t, xt)
    sqrt_one_minus_alpha_bar = extract((1 - alphas_cumprod).sqrt(), t, xt)
    return sqrt_alpha_bar * xt - sqrt_one_minus_alpha_bar * v


def predict_eps_from_v(
    xt: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """ε̂ from a v-prediction: ε̂ = √(1 − ᾱ_t) · x_t + √ᾱ_t · v.

    Salimans & Ho (2022), App. D.

    Args:
        xt: ``(B, ...)`` x_t.
        t: ``(B,)`` LongTensor of timesteps.
        v: ``(B, ...)`` the (predicted) velocity v.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` ε̂, in ``xt``'s dtype and device.
    """
    sqrt_alpha_bar = extract(alphas_cumprod.sqrt(), t, xt)
    sqrt_one_minus_alpha_bar = extract((1 - alphas_cumprod).sqrt(), t, xt)
    return sqrt_one_minus_alpha_bar * xt + sqrt_alpha_bar * v


def score_from_eps(
    eps: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The score of the noised marginal from a noise prediction: ∇ log q(x_t) ≈ −ε̂ / √(1 − ᾱ_t).

    Exact for the optimal predictor ε̂(x_t) = E[ε | x_t], by Tweedie's formula
    (Vincent 2011; Song et al. 2021, "Score-Based Generative Modeling through SDEs").

    Args:
        eps: ``(B, ...)`` the (predicted) noise ε̂ at x_t.
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B, ...)`` the score, in ``eps``' dtype and device (units of 1/x).
    """
    return -eps / extract((1 - alphas_cumprod).sqrt(), t, eps)


def snr(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t).

    Kingma et al. (2021), "Variational Diffusion Models", eq. 2 (with α_t² = ᾱ_t, σ_t² = 1 − ᾱ_t).

    Args:
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.

    Returns:
        ``(B,)`` SNR, in ``alphas_cumprod``'s dtype and on its device (there is no
        data tensor to take a dtype from; float64 for the course's schedules).
    """
    alpha_bar = _gather(alphas_cumprod, t)
    return alpha_bar / (1 - alpha_bar)


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    parametrization: str,
) -> torch.Tensor:
    """The regression target of the simple loss ‖target − network(x_t, t)‖² for a parametrization.

    "eps": ε (Ho et al. 2020, eq. 14); "x0": x₀; "v": √ᾱ_t · ε − √(1 − ᾱ_t) · x₀
    (Salimans & Ho 2022), where x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.

    Args:
        x0: ``(B, ...)`` clean data x₀.
        noise: ``(B, ...)`` the noise ε that made x_t.
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.
        parametrization: one of ``"eps"``, ``"x0"``, ``"v"``.

    Returns:
        ``(B, ...)`` the target, in ``x0``'s dtype and device ("eps" and "x0"
        return ``noise`` and ``x0`` themselves, cast to that dtype, not copies).

    Raises:
        ValueError: ``parametrization`` is not one of the three names.
    """
    _check_parametrization(parametrization)
    if parametrization == "eps":
        return noise.to(dtype=x0.dtype, device=x0.device)
    if parametrization == "x0":
        return x0
    return velocity(x0, noise, t, alphas_cumprod)


def mse_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, parametrization: str) -> torch.Tensor:
    """The factor w with ‖target − prediction‖² = w · ‖ε − ε̂‖² when the prediction is derived from ε̂.

    With x̂₀ and v̂ computed from ε̂ at the same x_t:
        x₀ − x̂₀ = √(1 − ᾱ_t)/√ᾱ_t · (ε̂ − ε)   ⇒ w = 1/SNR(t)
        v − v̂  = (ε − ε̂)/√ᾱ_t                  ⇒ w = 1/ᾱ_t = 1 + 1/SNR(t)
        ε − ε̂                                  ⇒ w = 1
    (Salimans & Ho 2022, §4; Kingma et al. 2021). Dividing a loss by w turns it
    into the ε-loss, and multiplying the ε-loss by w gives the x₀- or v-loss.

    Args:
        t: ``(B,)`` LongTensor of timesteps.
        alphas_cumprod: ``(T,)`` ᾱ.
        parametrization: one of ``"eps"``, ``"x0"``, ``"v"``.

    Returns:
        ``(B,)`` w, in ``alphas_cumprod``'s dtype and on its device, like :func:`snr`.

    Raises:
        ValueError: ``parametrization`` is not one of the three names.
    """
    _check_parametrization(parametrization)
    alpha_bar = _gather(alphas_cumprod, t)
    if parametrization == "eps":
        return torch.ones_like(alpha_bar)
    if parametrization == "x0":
        return (1 - alpha_bar) / alpha_bar  # 1/SNR, written so that it stays finite as ᾱ → 1
    return 1 / alpha_bar  # 1 + 1/SNR
