"""Tests of reference.fid: FID, KID and precision/recall, against closed forms and the field's code.

Oracles, each computed another way than the module does:
- the Fréchet distance between Gaussians in closed form through the *symmetric* route
  Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} with ``eigh`` (the module uses ``sqrtm`` of the non-symmetric Σ₁Σ₂);
- pytorch-fid's ``calculate_frechet_distance`` (v0.3.0), restated below (the package imports
  torchvision at import time, which must not be installed beside this torch);
- torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` fed the course's
  feature extractor as their custom feature module (torchmetrics imports without torchvision);
- the authors' ``ManifoldEstimator`` for precision/recall (Kynkäänniemi et al. 2019, NVlabs'
  improved-precision-and-recall-metric), restated below;
- loops over pairs for KID, and hand-built point sets with known answers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import fid

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=60)


# -- oracles -------------------------------------------------------------------------------------


def closed_form(mu1, sigma1, mu2, sigma2) -> float:
    """W₂² between N(μ₁, Σ₁) and N(μ₂, Σ₂) via the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2} (eigh only)."""
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root @ sigma2 @ root
    lam = np.linalg.eigvalsh((middle + middle.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def pytorch_fid_calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0's ``calculate_frechet_distance``, restated line for line.

    The only change: scipy ≥ 1.16 deprecates ``sqrtm(..., disp=False)`` (which returned a pair);
    ``sqrtm(A)`` returns the same matrix.
    """
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape, "Training and test mean vectors have different lengths"
    assert sigma1.shape == sigma2.shape, "Training and test covariances have different dimensions"
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError("Imaginary component {}".format(m))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean


def manifold_estimator_precision_recall(real, fake, k=3, batch=7):
    """NVlabs' ``ManifoldEstimator`` (``nhood_sizes=[k]``, ``clamp_to_percentile=None``), restated.

    Squared distances by the expansion ‖x‖² − 2xᵀy + ‖y‖² (clipped at 0), in batches;
    radii by ``np.partition`` at rank k of each reference point's row (itself at rank 0);
    a point is inside when its squared distance is ≤ some reference point's squared radius.
    """

    def distances(u, v):
        out = (u**2).sum(1)[:, None] - 2 * u @ v.T + (v**2).sum(1)[None, :]
        return np.maximum(out, 0)

    def evaluate(reference, evaluated):
        radii = np.zeros(len(reference))
        for start in range(0, len(reference), batch):
            block = distances(reference[start:start + batch], reference)
            radii[start:start + batch] = np.partition(block, np.arange(k + 1), axis=1)[:, k]
        inside = np.zeros(len(evaluated), dtype=bool)
        for start in range(0, len(evaluated), batch):
            block = distances(evaluated[start:start + batch], reference)
            inside[start:start + batch] = (block <= radii[None, :]).any(axis=1)
        return inside.mean()

    return evaluate(real, fake), evaluate(fake, real)


def kid_loops(x, y):
    """Unbiased MMD² with (xᵀy/D + 1)³, one pair at a time."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def features_of_rank(seed: int, n: int, d: int, rank: int, shift: float = 0.0) -> np.ndarray:
    """``(n, d)`` features on a random ``rank``-dimensional affine subspace."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + shift * rng.normal(size=d)


def size_of_terms(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂: FID is a difference of terms of this size; round-off is relative to it."""
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2))


# -- feature_statistics --------------------------------------------------------------------------


def test_feature_statistics_are_the_unbiased_mean_and_covariance_in_the_type_given():
    x = features_of_rank(0, 50, 6, 6, shift=2.0)
    mu, sigma = fid.feature_statistics(x)
    assert isinstance(mu, np.ndarray) and isinstance(sigma, np.ndarray)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1), rtol=1e-12, atol=1e-13)  # same formula, other order
    t = torch.from_numpy(x)
    mu_t, sigma_t = fid.feature_statistics(t)
    assert isinstance(mu_t, torch.Tensor) and mu_t.dtype == torch.float64 and sigma_t.shape == (6, 6)
    torch.testing.assert_close(sigma_t, torch.cov(t.T), rtol=1e-12, atol=1e-13)
    # One feature: a (1, 1) covariance, not a scalar.
    assert fid.feature_statistics(x[:, :1])[1].shape == (1, 1)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.feature_statistics(x[:1])


def test_feature_statistics_stay_on_the_inputs_device():
    # PyTorch's meta device applies CUDA's rules without a GPU: a CPU tensor made inside would raise.
    x = torch.empty((10, 3), dtype=torch.float64, device="meta")
    mu, sigma = fid.feature_statistics(x)
    assert mu.device.type == sigma.device.type == "meta" and sigma.shape == (3, 3) and sigma.dtype == torch.float64


# -- frechet_distance ----------------------------------------------------------------------------

cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16),
    "n": st.integers(2, 40),
    "d": st.integers(1, 12),
    "rank_fraction": st.sampled_from([1.0, 0.5, 0.0]),  # 0: rank 1
})


def _statistics_pair(case):
    d = case["d"]
    rank = max(1, round(case["rank_fraction"] * d))
    x = features_of_rank(case["seed"], case["n"], d, rank, shift=1.0)
    y = features_of_rank(case["seed"] + 1, case["n"] + 3, d, d, shift=1.0)
    return (*fid.feature_statistics(x), *fid.feature_statistics(y))


@PROPERTY
@given(cases)
def test_frechet_distance_is_the_gaussian_closed_form_and_symmetric(case):
    mu1, s1, mu2, s2 = _statistics_pair(case)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    # sqrtm of a product with a rank-deficient factor is accurate to ~1e-8 of the terms
    # (measured over 4 000 random cases: ≤ 7.5e-8 where both factors are singular, ≤ 1e-8
    # otherwise); 1e-6 of the terms' size keeps a 10x margin. A ‖μ‖ not squared or an elementwise
    # square root changes the value by a fraction O(1) of it.
    scale = size_of_terms(mu1, s1, mu2, s2)
    assert got == pytest.approx(closed_form(mu1, s1, mu2, s2), abs=1e-6 * scale)
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, abs=1e-6 * scale)
    assert got >= -1e-6 * scale


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = fid.feature_statistics(features_of_rank(3, 200, 16, 16, shift=3.0))
    # Tr Σ + Tr Σ − 2 Tr (Σ²)^{1/2} cancels terms of size 2 Tr Σ ≈ 500: round-off ~1e-13 of that.
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9 * np.trace(sigma))


def test_frechet_distance_in_one_dimension_and_for_commuting_covariances():
    # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)², from scalars as pytorch-fid's atleast_1d/2d allows.
    assert fid.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9 + (2 - 3) ** 2, rel=1e-12)
    # Diagonal covariances: Σᵢ (√aᵢ − √bᵢ)².
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    got = fid.frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    assert got == pytest.approx(3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-12)


@PROPERTY
@given(cases, st.integers(0, 2**16))
def test_fid_is_invariant_to_a_common_rotation_and_translation(case, seed):
    rng = np.random.default_rng(seed)
    d = case["d"]
    x = features_of_rank(case["seed"], case["n"] + 2, d, d, shift=1.0)
    y = features_of_rank(case["seed"] + 1, case["n"] + 5, d, max(1, d // 2), shift=1.0)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random orthogonal matrix
    b = 10 * rng.normal(size=d)
    before = fid.fid_from_features(x, y)
    after = fid.fid_from_features(x @ q + b, y @ q + b)
    # The statistics are rotated exactly up to round-off of the shift (‖b‖ ~ 30): 1e-6 of the
    # terms' size as above.
    scale = size_of_terms(*fid.feature_statistics(x), *fid.feature_statistics(y))
    assert after == pytest.approx(before, abs=1e-6 * scale)


#: A pair of exact rank-deficient covariances whose product has no square root that
#: scipy's sqrtm finds with OpenBLAS's Haswell kernels (it returns NaN; grader/blas.py fixes them): found by a
#: search over small integer matrices.
SINGULAR_SIGMA1 = np.array([[1.0, 1, -1, -1], [1, 1, -1, -1], [-1, -1, 1, 1], [-1, -1, 1, 1]])
SINGULAR_SIGMA2 = np.array([[2.0, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 0]])


def test_a_singular_product_takes_pytorch_fids_eps_retry(monkeypatch):
    product = SINGULAR_SIGMA1 @ SINGULAR_SIGMA2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = scipy.linalg.sqrtm(product)
    if np.isfinite(found).all():  # other BLAS kernels (AVX-512's) find a root of this product: the failure is made here
        sqrtm = scipy.linalg.sqrtm
        monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a, *args, **kwargs: np.full_like(a, np.nan)
                            if np.array_equal(a, product) else sqrtm(a, *args, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.isfinite(scipy.linalg.sqrtm(product)).all()  # the retry is needed
    mu = np.zeros(4)
    eps = 1e-6
    got = fid.frechet_distance(mu, SINGULAR_SIGMA1, mu, SINGULAR_SIGMA2, eps=eps)
    # pytorch-fid: the square root of (Σ₁ + εI)(Σ₂ + εI), the traces of the unregularised Σ's.
    offset = eps * np.eye(4)
    regularised = closed_form(mu, SINGULAR_SIGMA1 + offset, mu, SINGULAR_SIGMA2 + offset) - 8 * eps
    assert got == pytest.approx(regularised, abs=1e-9)
    assert got == pytest.approx(pytorch_fid_calculate_frechet_distance(mu, SINGULAR_SIGMA1, mu, SINGULAR_SIGMA2), abs=1e-12)
    # The regularisation moves each of the 3 null directions' root by ≤ √(ε·(‖Σ₁‖ + ‖Σ₂‖)),
    # so the answer is within 2·3·√(8e-6) ≈ 0.017 of the exact W₂² (seen: 1.6e-3).
    assert abs(got - closed_form(mu, SINGULAR_SIGMA1, mu, SINGULAR_SIGMA2)) < 6 * math.sqrt(eps * 8)
    # Another eps, another answer: eps is used.
    assert fid.frechet_distance(mu, SINGULAR_SIGMA1, mu, SINGULAR_SIGMA2, eps=1e-2) != pytest.approx(got, abs=1e-6)


def test_a_small_imaginary_part_is_dropped_and_a_large_one_is_an_error():
    # N = 3 points in D = 8: rank-2 covariances; sqrtm answers with round-off imaginary parts.
    x, y = features_of_rank(0, 3, 8, 8), features_of_rank(1, 3, 8, 8)
    mu1, s1 = fid.feature_statistics(x)
    mu2, s2 = fid.feature_statistics(y)
    root = scipy.linalg.sqrtm(s1 @ s2)
    assert np.iscomplexobj(root) and 0 < np.abs(np.diagonal(root).imag).max() < 1e-3
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    assert got == pytest.approx(closed_form(mu1, s1, mu2, s2), abs=1e-6 * size_of_terms(mu1, s1, mu2, s2))
    # Σ₂ = −I is no covariance: (Σ₁Σ₂)^{1/2} = i·I, an imaginary part of 1 on the diagonal.
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


@PROPERTY
@given(cases)
def test_frechet_distance_agrees_with_pytorch_fid(case):
    mu1, s1, mu2, s2 = _statistics_pair(case)
    # The same algorithm on the same float64 inputs: equal to round-off.
    expected = pytorch_fid_calculate_frechet_distance(mu1, s1, mu2, s2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_frechet_distance_accepts_tensors_and_arrays_alike():
    mu1, s1, mu2, s2 = _statistics_pair({"seed": 5, "n": 30, "d": 5, "rank_fraction": 1.0})
    from_arrays = fid.frechet_distance(mu1, s1, mu2, s2)
    from_tensors = fid.frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert type(from_tensors) is float and from_tensors == from_arrays
    x, y = features_of_rank(1, 40, 4, 4), features_of_rank(2, 30, 4, 4)
    assert fid.fid_from_features(torch.from_numpy(x), torch.from_numpy(y)) == fid.fid_from_features(x, y)


# -- torchmetrics --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shape_images():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("shapes", Path(__file__).resolve().parents[2] / "datasets" / "shapes.py")
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    real = shapes.load_shapes(300, torch.Generator().manual_seed(0))[0]
    fake = torch.nn.functional.avg_pool2d(shapes.load_shapes(300, torch.Generator().manual_seed(1))[0], 3, 1, 1)
    return real, fake


@pytest.mark.slow  # importing torchmetrics takes ~3 s
def test_fid_agrees_with_torchmetrics_given_the_course_feature_extractor(shape_images):
    pytest.importorskip("torchmetrics")
    import sys

    from torchmetrics.image.fid import FrechetInceptionDistance

    assert "torchvision" not in sys.modules  # torchmetrics' FID with a custom module needs no torchvision

    from reference.features import extract_features, load_feature_extractor

    real, fake = shape_images
    metric = FrechetInceptionDistance(feature=load_feature_extractor())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    got = fid.fid_from_features(extract_features(real), extract_features(fake))
    # torchmetrics sums in float64 but returns the module's dtype (float32: 6e-8 relative) and
    # takes Σ√λ(Σ₁Σ₂) by eigenvalues instead of sqrtm; 1e-5 relative is ~100 float32 ulps.
    assert got > 1 and got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # importing torchmetrics takes ~3 s
def test_kid_agrees_with_torchmetrics_on_one_subset_of_every_point(shape_images):
    pytest.importorskip("torchmetrics")
    from torchmetrics.image.kid import KernelInceptionDistance

    from reference.features import extract_features, load_feature_extractor

    real, fake = shape_images
    n = real.shape[0]
    metric = KernelInceptionDistance(feature=load_feature_extractor(), subsets=1, subset_size=n)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(0)  # torchmetrics permutes the subset with the global generator: irrelevant here
    mean, std = metric.compute()
    got = fid.kid(extract_features(real), extract_features(fake))
    # torchmetrics computes in the features' float32: the kernel (~10) loses ~1e-6 relative,
    # summed over 9e4 pairs with cancellation against a KID of ~1: 1e-4 relative covers it.
    assert got > 0.1 and got == pytest.approx(float(mean), rel=1e-4)


# -- kid -----------------------------------------------------------------------------------------


def test_kid_is_the_unbiased_mmd_over_all_pairs_for_sets_of_different_sizes():
    x, y = features_of_rank(0, 9, 3, 3, shift=0.5), features_of_rank(1, 6, 3, 3)
    assert fid.kid(x, y) == pytest.approx(kid_loops(x, y), rel=1e-10)
    assert fid.kid(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(kid_loops(x, y), rel=1e-10)
    assert fid.kid(x, y) == pytest.approx(fid.kid(y, x), rel=1e-12)


@PROPERTY
@given(st.integers(0, 2**16), st.integers(2, 12), st.integers(2, 12), st.integers(1, 6), st.integers(1, 6))
def test_kid_matches_loops_and_is_invariant_to_a_common_rotation(seed, m, n, d, rank):
    rank = min(rank, d)  # rank-deficient sets too
    x, y = features_of_rank(seed, m, d, rank, shift=1.0), features_of_rank(seed + 1, n, d, d)
    # Loops add the same ≤ 144 float64 kernel values (each ≲ 10³ here) in another order: round-off
    # ≲ 144 · 1e-16 · 10³ ≈ 1e-11; 1e-9 keeps a 100× margin, a biased or degree-2 KID is off by O(1).
    expected = kid_loops(x, y)
    assert fid.kid(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    # xᵀy is unchanged by a common orthogonal map: the kernel and KID are too.
    assert fid.kid(x @ q, y @ q) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def _sphere(rng, n, d, radius):
    u = rng.normal(size=(n, d))
    return radius * u / np.linalg.norm(u, axis=1, keepdims=True)


def _biased_kid(x, y):
    """The V-statistic (diagonal kept): a classic mistake, E > 0 even for equal distributions."""
    kxx, kyy, kxy = (fid.polynomial_kernel(a, b) for a, b in ((x, x), (y, y), (x, y)))
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def _empirical_bernstein_halfwidth(values: np.ndarray, width: float, delta: float) -> float:
    """Two-sided (1 − delta) half-width for the mean of i.i.d. values in an interval of ``width``.

    Maurer & Pontil 2009, Theorem 4, applied to each side at delta/2:
    |mean − E| ≤ √(2 V ln(4/δ)/n) + 7 w ln(4/δ)/(3(n − 1)), V the unbiased sample variance.
    A bound (no normality assumed), valid for any distribution on the interval.
    """
    n = len(values)
    log_term = math.log(4 / delta)
    return math.sqrt(2 * values.var(ddof=1) * log_term / n) + 7 * width * log_term / (3 * (n - 1))


def test_kid_has_zero_expectation_for_equal_distributions():
    # R = 4000 independent KIDs of two sets of m = 10 points drawn from the same law: points
    # uniform on the sphere of radius √D/2 in D = 4, so xᵀy/D ∈ [−¼, ¼], each kernel value in
    # [(3/4)³, (5/4)³] and each KID in [−w/2, w/2] with w = 4·((5/4)³ − (3/4)³) = 6.125.
    # The empirical Bernstein bound at δ = 1e-6 rejects a correct KID with probability ≤ 1e-6
    # (a bound, not an approximation); the test's power is shown on the biased estimator,
    # whose mean exceeds 0 by (k(x, x) − E k(x, x'))·2/m ≈ 0.19 (the half-width is ≈ 0.05).
    rng = np.random.default_rng(2024)
    m, d, radius, reps = 10, 4, 1.0, 4000
    width = 4 * ((1 + radius**2 / d) ** 3 - (1 - radius**2 / d) ** 3)
    pairs = [(_sphere(rng, m, d, radius), _sphere(rng, m, d, radius)) for _ in range(reps)]
    unbiased = np.array([fid.kid(x, y) for x, y in pairs])
    biased = np.array([_biased_kid(x, y) for x, y in pairs])
    assert abs(unbiased.mean()) <= _empirical_bernstein_halfwidth(unbiased, width, 1e-6)
    assert abs(biased.mean()) > _empirical_bernstein_halfwidth(biased, width, 1e-6)


# -- precision_recall ----------------------------------------------------------------------------


def test_precision_recall_on_a_hand_built_line():
    real = np.arange(5.0)[:, None]  # 0, 1, 2, 3, 4: with k = 1 every real radius is 1
    fake = np.array([[4.5], [5.0], [10.0]])  # radii (k = 1): 0.5, 0.5, 5
    precision, recall = fid.precision_recall(real, fake, k=1)
    # 4.5 is within 1 of 4; 5 is exactly at 4's radius (≤ counts); 10 is far from everything.
    assert precision == pytest.approx(2 / 3, abs=1e-15)
    # Only 4 lies within a fake ball (0.5 around 4.5); 10's ball of radius 5 reaches down to 5.
    assert recall == pytest.approx(1 / 5, abs=1e-15)
    assert fid.precision_recall(fake, real, k=1) == (recall, precision)  # roles swap


def test_the_radius_is_the_distance_to_the_kth_nearest_other_point():
    # Real points 0, 1, 3, 6 on a line: nearest *other* distances 1, 1, 2, 3; 2nd nearest 3, 2, 3, 5.
    real = np.array([[0.0], [1.0], [3.0], [6.0]])
    # Fakes 3.5–3.7 beyond 6: outside every k = 1 ball (6's radius is 3), inside 6's k = 2 ball (radius 5).
    fake = np.array([[9.5], [9.6], [9.7]])
    assert fid.precision_recall(real, fake, k=1)[0] == 0.0
    assert fid.precision_recall(real, fake, k=2)[0] == 1.0
    # Duplicates are other points: a real set of two copies of each point has k = 1 radius 0.
    doubled = np.repeat(real, 2, axis=0)
    assert fid.precision_recall(doubled, real + 0.1, k=1)[0] == 0.0
    assert fid.precision_recall(doubled, real, k=1)[0] == 1.0


def _mixture(rng, n, centres, std=0.1):
    which = rng.integers(0, len(centres), size=n)
    return centres[which] + std * rng.normal(size=(n, centres.shape[1]))


def test_a_dropped_mode_lowers_recall_not_precision_and_blur_lowers_precision():
    rng = np.random.default_rng(0)
    centres = 3.0 * np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)])
    real = _mixture(rng, 800, centres)
    dropped = _mixture(rng, 800, centres[:4])  # half the modes
    blurred = _mixture(rng, 800, centres, std=0.6)  # every mode, spread 6x
    p, r = fid.precision_recall(real, dropped)
    # Counts of points inside a union of k-NN balls: with 800 points per set, the fractions
    # below hold with large margins (seen: p = 0.99, r = 0.50; blurred p ≈ 0.3, r ≈ 0.97).
    assert p > 0.95 and 0.4 < r < 0.6
    p, r = fid.precision_recall(real, blurred)
    assert p < 0.6 and r > 0.9


@PROPERTY
@given(st.integers(0, 2**16), st.integers(4, 40), st.integers(4, 40), st.integers(1, 8), st.integers(1, 3))
def test_precision_recall_agrees_with_the_authors_algorithm(seed, n_real, n_fake, d, k):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, d))
    fake = 0.5 + 1.5 * rng.normal(size=(n_fake, d))
    expected = manifold_estimator_precision_recall(real, fake, k=k)
    # Fractions of counts: exact unless a distance ties a radius within round-off (the
    # expansion vs differences), probability ~1e-13 per pair for continuous draws.
    assert fid.precision_recall(real, fake, k=k) == pytest.approx(expected, abs=1e-12)
    got_t = fid.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k)
    assert all(type(v) is float for v in got_t) and got_t == fid.precision_recall(real, fake, k=k)


def test_errors_are_one_clear_sentence():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="k < the size"):
        fid.precision_recall(x, x, k=3)
    with pytest.raises(ValueError, match="NaN"):
        fid.kid(np.full((3, 2), np.nan), x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fid.fid_from_features(np.zeros(5), np.zeros(5))
