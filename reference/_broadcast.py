"""Gather per-timestep coefficients and broadcast them against a batch."""

from __future__ import annotations

import torch

__all__ = ["extract", "prepend_one"]


def extract(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``coefficients[t]`` and shape it to broadcast against ``like``.

    The gather happens in the schedule's own dtype (float64 for the course's
    schedules) and only the gathered values are cast to ``like``'s dtype, so a
    float32 batch never sees a float32 cumulative product.

    Args:
        coefficients: ``(T,)`` a schedule or a quantity derived from one.
        t: ``(B,)`` integer timesteps.
        like: ``(B, ...)`` the tensor the result multiplies.

    Returns:
        ``(B, 1, ..., 1)`` with ``like.ndim`` dimensions, on ``like``'s device
        and in its dtype.
    """
    t = torch.as_tensor(t, device=coefficients.device).long()
    values = coefficients[t].to(device=like.device, dtype=like.dtype)
    return values.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def prepend_one(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``ᾱ_{t−1}`` for t = 0…T−1, with the convention ᾱ₋₁ = 1 (the clean data)."""
    one = torch.ones(1, dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    return torch.cat([one, alphas_cumprod[:-1]])
