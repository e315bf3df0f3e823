"""Small 2-D toy datasets for the notebooks' plots: Gaussian mixtures on a ring or a grid, two moons, a swiss roll.

Every generator is a pure function ``name(n, generator=None, ...) -> (n, 2)``:
all randomness comes from ``generator`` (deterministic given its state), the
points are drawn on the generator's device (the CPU without one) in
``torch.get_default_dtype()``. The mixtures also expose their parameters
(``ring_mixture``, ``grid_mixture`` → ``(weights, means, vars)``), so that
``reference.toy.GaussianMixture(*ring_mixture())`` gives their exact scores.

This folder is deliberately *not* a Python package (no ``__init__.py``): a
top-level package named ``datasets`` would shadow Hugging Face's ``datasets``.
Load the module by path::

    import importlib.util
    spec = importlib.util.spec_from_file_location("toy2d", "datasets/toy2d.py")
    toy2d = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy2d)
    x = toy2d.load("two_moons", 1000, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ring_mixture",
    "grid_mixture",
    "gaussian_ring",
    "gaussian_grid",
    "two_moons",
    "swiss_roll",
    "DATASETS",
    "load",
]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randn(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(n, 2)`` standard normal draws."""
    return torch.randn((n, 2), generator=generator, device=_device(generator), dtype=torch.get_default_dtype())


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(n,)`` uniform draws on [0, 1)."""
    return torch.rand((n,), generator=generator, device=_device(generator), dtype=torch.get_default_dtype())


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights (k,), means (k, 2), vars (k, 2))`` of k equal isotropic Gaussians on a circle, float64."""
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return torch.full((k,), 1 / k, dtype=torch.float64), means, torch.full((k, 2), std**2, dtype=torch.float64)


def grid_mixture(side: int = 5, spacing: float = 1.0, std: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights, means, vars)`` of side² equal isotropic Gaussians on a centred square grid, float64."""
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(coords, coords)  # (side², 2)
    k = side * side
    return torch.full((k,), 1 / k, dtype=torch.float64), means, torch.full((k, 2), std**2, dtype=torch.float64)


def _sample_mixture(params, n: int, generator: torch.Generator | None) -> torch.Tensor:
    weights, means, vars_ = (p.to(device=_device(generator), dtype=torch.get_default_dtype()) for p in params)
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    return means[k] + vars_[k].sqrt() * _randn(n, generator)


def gaussian_ring(
    n: int, generator: torch.Generator | None = None, k: int = 8, radius: float = 2.0, std: float = 0.1
) -> torch.Tensor:
    """``(n, 2)`` draws from :func:`ring_mixture` (component index first, then the offsets)."""
    return _sample_mixture(ring_mixture(k, radius, std), n, generator)


def gaussian_grid(
    n: int, generator: torch.Generator | None = None, side: int = 5, spacing: float = 1.0, std: float = 0.05
) -> torch.Tensor:
    """``(n, 2)`` draws from :func:`grid_mixture`."""
    return _sample_mixture(grid_mixture(side, spacing, std), n, generator)


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """``(n, 2)`` points on two interleaving half circles plus N(0, noise²) jitter (as scikit-learn's ``make_moons``).

    Each point picks a moon with probability ½ and an angle uniform on [0, π):
    upper moon (cos θ, sin θ), lower moon (1 − cos θ, ½ − sin θ).
    """
    theta = math.pi * _rand(n, generator)
    upper = _rand(n, generator) < 0.5
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    return torch.stack([x, y], dim=1) + noise * _randn(n, generator)


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """``(n, 2)`` points on the 2-D swiss roll t·(cos t, sin t)/10, t ~ U[1.5π, 4.5π), plus N(0, noise²) jitter."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    points = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 10
    return points + noise * _randn(n, generator)


DATASETS = {
    "gaussian_ring": gaussian_ring,
    "gaussian_grid": gaussian_grid,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
}


def load(name: str, n: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """``(n, 2)`` points of the dataset ``name`` (a key of ``DATASETS``); ``kwargs`` go to its generator."""
    try:
        make = DATASETS[name]
    except KeyError:
        raise ValueError(f"Unknown toy dataset {name!r}; choose one of {sorted(DATASETS)}.") from None
    return make(n, generator, **kwargs)
