"""Evaluating generative models on features: FID, KID, and precision/recall.

Notation (features are rows: ``x`` is ``(N, D)``, one D-dimensional feature vector per image):

    μ, Σ        the mean and the unbiased (N − 1) covariance of the features
    FID         ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^{1/2}
                (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
                Local Nash Equilibrium", eq. 6: the Fréchet (2-Wasserstein) distance² between
                N(μ₁, Σ₁) and N(μ₂, Σ₂))
    k(x, y)     (xᵀy/D + 1)³, the cubic polynomial kernel
    KID         the unbiased estimate of MMD² with k (Bińkowski et al. 2018, "Demystifying MMD
                GANs", eq. 4): the means of k over pairs i ≠ j within each set, minus twice
                the mean of k over all pairs across the sets
    r_k(x)      the distance from a real point x to its k-th nearest *other* real point
    precision   the fraction of fake points y with ‖y − x‖ ≤ r_k(x) for some real x;
                recall: the same with the roles of real and fake swapped
                (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
                Generative Models", eqs. 1–2)

Relation to the libraries of the field:

- :func:`frechet_distance` is pytorch-fid's ``calculate_frechet_distance`` (v0.3.0), step for
  step: ``scipy.linalg.sqrtm`` of Σ₁Σ₂; where it is not finite, Σ₁ + εI and Σ₂ + εI are used;
  a complex result whose diagonal has an imaginary part above 1e-3 is an error, a smaller one
  (round-off on a singular product) is dropped. torchmetrics' ``FrechetInceptionDistance`` takes
  Σᵢ √λᵢ(Σ₁Σ₂) instead (eigenvalues; the same trace for covariances) and agrees on full-rank
  covariances (``tests/reference/test_fid.py``).
- :func:`kid` is torchmetrics' ``KernelInceptionDistance`` on one subset holding every point
  (``subsets=1, subset_size=N``), generalised to two sets of different sizes.
- :func:`precision_recall` is the authors' ``ManifoldEstimator`` (``nhood_sizes=[k]``, no
  percentile clamping), which compares squared distances; comparing distances is the same.

numpy and scipy are allowed in this exercise: inputs are float64 tensors (on any device) or numpy
arrays; the scalar metrics return Python floats; :func:`feature_statistics` returns the type it
was given (tensors on the input's device and dtype, or arrays).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "needs_regularising",
    "kid",
    "precision_recall",
    "pairwise_distances",
    "polynomial_kernel",
    "IMAGINARY_ATOL",
]

#: pytorch-fid's bound on the imaginary part of the diagonal of (Σ₁Σ₂)^{1/2}: above it the
#: square root is genuinely complex (a covariance that is not positive semi-definite).
IMAGINARY_ATOL = 1e-3


def _array(x: Any, what: str) -> np.ndarray:
    """``x`` (a tensor on any device, or an array) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return x


def _features(x: Any, what: str) -> np.ndarray:
    x = _array(x, what)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, D) array of features, got shape {x.shape}.")
    return x


def feature_statistics(features: Any):
    """``(mu (D,), sigma (D, D))``: the mean and the unbiased (N − 1) covariance of ``features (N, D)``.

    Tensors come back as tensors (the input's device and dtype), arrays as arrays. N ≥ 2.
    """
    if isinstance(features, torch.Tensor):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got shape {tuple(features.shape)}.")
        mu = features.mean(dim=0)
        centred = features - mu
        return mu, centred.T @ centred / (features.shape[0] - 1)
    x = _features(features, "features")
    if x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {x.shape}.")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """The Fréchet distance ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^{1/2}, as pytorch-fid computes it.

    Where ``sqrtm(Σ₁Σ₂)`` is not finite (a singular product without a square root), the
    covariances are regularised to Σ + eps·I. A complex square root whose diagonal has an
    imaginary part ≤ 1e-3 is round-off and its real part is kept; a larger one is a ValueError.
    """
    mu1, mu2 = np.atleast_1d(_array(mu1, "mu1")), np.atleast_1d(_array(mu2, "mu2"))
    sigma1, sigma2 = np.atleast_2d(_array(sigma1, "sigma1")), np.atleast_2d(_array(sigma2, "sigma2"))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {mu1.shape} and {mu2.shape}.")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}.")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_ATOL):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(f"(Σ₁Σ₂)^{{1/2}} has an imaginary component {largest:.3g}: "
                             "are both covariances positive semi-definite?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(product: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # pytorch-fid's disp=False: a singular product is handled by the caller, not warned about
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(product)


def needs_regularising(sigma1: Any, sigma2: Any) -> bool:
    """Whether :func:`frechet_distance` regularises these covariances: ``sqrtm(Σ₁Σ₂)`` is not finite.

    For a singular product that depends on the last bits of Σ₁Σ₂ and on the round-off of the BLAS kernels.
    """
    sigma1, sigma2 = np.atleast_2d(_array(sigma1, "sigma1")), np.atleast_2d(_array(sigma2, "sigma2"))
    return not np.isfinite(_sqrtm(sigma1 @ sigma2)).all()


def fid_from_features(features1: Any, features2: Any) -> float:
    """FID between two feature sets ``(N₁, D)`` and ``(N₂, D)``: :func:`frechet_distance` of their statistics."""
    mu1, sigma1 = feature_statistics(_features(features1, "features1"))
    mu2, sigma2 = feature_statistics(_features(features2, "features2"))
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The ``(N, M)`` matrix of k(xᵢ, yⱼ) = (xᵢᵀyⱼ/D + 1)³."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid(features1: Any, features2: Any) -> float:
    """The unbiased MMD² between two feature sets with the cubic kernel (Bińkowski et al. 2018, eq. 4).

    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ)/(n(n−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ)/(mn),
    over all pairs (no subsets); m, n ≥ 2. It can be negative: its expectation is the true MMD² ≥ 0.
    """
    x, y = _features(features1, "features1"), _features(features2, "features2")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid needs (m, D) and (n, D) features with m, n >= 2, got {x.shape} and {y.shape}.")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def pairwise_distances(x: np.ndarray, y: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The ``(N, M)`` Euclidean distances ‖xᵢ − yⱼ‖, from the differences (no cancellation), in row chunks."""
    out = np.empty((x.shape[0], y.shape[0]))
    for start in range(0, x.shape[0], chunk):
        block = x[start:start + chunk, None, :] - y[None, :, :]  # (chunk, M, D)
        out[start:start + chunk] = np.sqrt(np.einsum("ijk,ijk->ij", block, block))
    return out


def _coverage(reference: np.ndarray, evaluated: np.ndarray, k: int) -> float:
    """The fraction of ``evaluated`` points within (≤) the k-NN radius of some ``reference`` point."""
    # Row i of the reference's own distances holds 0 at i (itself); the k-th smallest *other*
    # distance is the entry of rank k (0-based) of the row, duplicates of the point included.
    radii = np.partition(pairwise_distances(reference, reference), k, axis=1)[:, k]  # (N_ref,)
    inside = pairwise_distances(evaluated, reference) <= radii[None, :]  # (N_eval, N_ref)
    return float(inside.any(axis=1).mean())


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """``(precision, recall)`` of Kynkäänniemi et al. 2019 with k-nearest-neighbour radii.

    precision: the fraction of fake points inside the real manifold, the union of the balls
    around each real point x of radius r_k(x) (its distance to its k-th nearest other real point);
    recall: the fraction of real points inside the fake manifold, built the same way from the fakes.
    Both sets need more than k points.
    """
    x, y = _features(real, "real"), _features(fake, "fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real and fake must have the same feature dimension, got {x.shape} and {y.shape}.")
    if not 1 <= k < min(x.shape[0], y.shape[0]):
        raise ValueError(f"precision_recall needs 1 <= k < the size of each set, got k={k}, sizes {x.shape[0]}, {y.shape[0]}.")
    return _coverage(x, y, k), _coverage(y, x, k)
