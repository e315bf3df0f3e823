"""fid: realistic bugs and correct alternatives (FID, KID, precision/recall on features).

Every implementation takes float64 tensors or numpy arrays, as the curriculum says, and the
scalar metrics return Python floats (or numpy floats): the same contract as the reference.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from reference import fid as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in
           ("feature_statistics", "frechet_distance", "fid_from_features", "kid", "precision_recall")}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


# -- bugs ------------------------------------------------------------------------------------------


def statistics_biased(features):
    x = _np(features)
    return x.mean(0), np.cov(x, rowvar=False, bias=True)  # divides by N: the ML estimate


def statistics_rows_as_variables(features):
    x = _np(features)
    return x.mean(0), np.cov(x)  # np.cov's default rowvar=True: an (N, N) matrix of the images


def frechet_elementwise_sqrt(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, sigma1, mu2, sigma2 = map(_np, (mu1, sigma1, mu2, sigma2))
    covmean = np.sqrt(np.abs(sigma1 @ sigma2))  # entrywise √, not the matrix square root
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_norm_not_squared(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, sigma1, mu2, sigma2 = map(_np, (mu1, sigma1, mu2, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.linalg.norm(mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_product_of_roots(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, sigma1, mu2, sigma2 = map(_np, (mu1, sigma1, mu2, sigma2))
    covmean = (scipy.linalg.sqrtm(sigma1) @ scipy.linalg.sqrtm(sigma2)).real  # Σ₁^½Σ₂^½ ≠ (Σ₁Σ₂)^½ unless they commute
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_no_factor_two(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, sigma1, mu2, sigma2 = map(_np, (mu1, sigma1, mu2, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - np.trace(covmean))


def frechet_no_retry(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, sigma1, mu2, sigma2 = map(_np, (mu1, sigma1, mu2, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)  # NaN where the product has no square root
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_torch_cov_untransposed(features1, features2):
    x1, x2 = _t(features1), _t(features2)
    # torch.cov wants variables in rows: torch.cov(x) is the (N, N) covariance of the images.
    return ref.frechet_distance(x1.mean(0), torch.cov(x1), x2.mean(0), torch.cov(x2))


def fid_same_set_twice(features1, features2):
    mu1, sigma1 = ref.feature_statistics(_np(features1))
    mu2, _ = ref.feature_statistics(_np(features2))
    return ref.frechet_distance(mu1, sigma1, mu2, sigma1)  # copy-paste: the first covariance twice


def _kernel_parts(features1, features2, degree=3, gamma=None):
    x, y = _np(features1), _np(features2)
    gamma = 1 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (gamma * a @ b.T + 1) ** degree  # noqa: E731
    return k(x, x), k(y, y), k(x, y)


def kid_biased(features1, features2):
    kxx, kyy, kxy = _kernel_parts(features1, features2)
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # keeps k(x, x): the biased V-statistic


def kid_degree_two(features1, features2):
    kxx, kyy, kxy = _kernel_parts(features1, features2, degree=2)
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_no_gamma(features1, features2):
    kxx, kyy, kxy = _kernel_parts(features1, features2, gamma=1.0)  # (xᵀy + 1)³: the 1/D is missing
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_diagonal_dropped_but_divided_by_m_squared(features1, features2):
    kxx, kyy, kxy = _kernel_parts(features1, features2)
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / m**2 + (kyy.sum() - np.trace(kyy)) / n**2 - 2 * kxy.mean())


def _pr(real, fake, k, rank_shift=0, strict=False, swap=False):
    x, y = _np(real), _np(fake)

    def coverage(reference, evaluated):
        d_ref = ref.pairwise_distances(reference, reference)
        radii = np.sort(d_ref, axis=1)[:, k - rank_shift]
        d = ref.pairwise_distances(evaluated, reference)
        inside = d < radii[None, :] if strict else d <= radii[None, :]
        return float(inside.any(axis=1).mean())

    precision, recall = coverage(x, y), coverage(y, x)
    return (recall, precision) if swap else (precision, recall)


def pr_self_as_neighbour(real, fake, k=3):
    return _pr(real, fake, k, rank_shift=1)  # sorted row [k − 1]: the point itself counts as its first neighbour


def pr_strict_radius(real, fake, k=3):
    return _pr(real, fake, k, strict=True)  # < where the paper has ≤


def pr_swapped_roles(real, fake, k=3):
    return _pr(real, fake, k, swap=True)  # returns (recall, precision)


def pr_radius_from_the_other_set(real, fake, k=3):
    x, y = _np(real), _np(fake)

    def coverage(own, other):  # a fake's own k-NN radius decides whether it lies on the real manifold
        radii = np.sort(ref.pairwise_distances(own, own), axis=1)[:, k]
        return float((ref.pairwise_distances(own, other) <= radii[:, None]).any(axis=1).mean())

    return coverage(y, x), coverage(x, y)


BUGS = [
    Bug("biased covariance", "feature_statistics", statistics_biased, "divides by N, not N − 1"),
    Bug("np.cov with rows as variables", "feature_statistics", statistics_rows_as_variables,
        "np.cov(x) without rowvar=False: the covariance of the images, (N, N)"),
    Bug("elementwise square root", "frechet_distance", frechet_elementwise_sqrt,
        "np.sqrt of the matrix Σ₁Σ₂ entry by entry instead of its matrix square root"),
    Bug("‖μ₁ − μ₂‖ not squared", "frechet_distance", frechet_norm_not_squared, "the norm of the mean difference, not its square"),
    Bug("product of square roots", "frechet_distance", frechet_product_of_roots,
        "Tr(Σ₁^½ Σ₂^½) for Tr((Σ₁Σ₂)^½): equal only when the covariances commute"),
    Bug("no factor 2", "frechet_distance", frechet_no_factor_two, "Tr Σ₁ + Tr Σ₂ − Tr(Σ₁Σ₂)^½"),
    Bug("no eps retry", "frechet_distance", frechet_no_retry,
        "sqrtm of a singular product returns NaN and is not retried with Σ + εI"),
    Bug("torch.cov untransposed", "fid_from_features", fid_torch_cov_untransposed,
        "torch.cov(x) treats rows as variables: the (N, N) covariance of the images"),
    Bug("first covariance twice", "fid_from_features", fid_same_set_twice, "σ₁ passed where σ₂ belongs"),
    Bug("biased KID", "kid", kid_biased, "k(xᵢ, xᵢ) kept: the biased V-statistic"),
    Bug("degree-2 kernel", "kid", kid_degree_two, "(xᵀy/D + 1)² instead of the cubic kernel"),
    Bug("kernel without 1/D", "kid", kid_no_gamma, "(xᵀy + 1)³: the features' dimension is not divided out"),
    Bug("diagonal dropped, divided by m²", "kid", kid_diagonal_dropped_but_divided_by_m_squared,
        "Σ_{i≠j} over m² pairs instead of m(m − 1)"),
    Bug("self as neighbour", "precision_recall", pr_self_as_neighbour,
        "the point itself counted as its nearest neighbour: the radius is the (k − 1)-th other point's"),
    Bug("strict radius", "precision_recall", pr_strict_radius, "distance < radius where the paper has ≤"),
    Bug("swapped roles", "precision_recall", pr_swapped_roles, "returns (recall, precision)"),
    Bug("radius of the evaluated point", "precision_recall", pr_radius_from_the_other_set,
        "each fake point's own k-NN radius used, not the real points' radii"),
]


# -- correct alternatives ---------------------------------------------------------------------------


def statistics_torch_second_moment(features):
    x = _t(features)
    n = x.shape[0]
    mu = x.mean(0)
    return mu, (x.T @ x - n * torch.outer(mu, mu)) / (n - 1)  # E[xxᵀ] − μμᵀ, rescaled by n/(n − 1)


def frechet_eigenvalues_torch(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """torchmetrics' route: Tr (Σ₁Σ₂)^½ = Σ √λᵢ(Σ₁Σ₂), the eigenvalues of a product of PSD matrices being ≥ 0."""
    mu1, sigma1, mu2, sigma2 = map(_t, (mu1, sigma1, mu2, sigma2))
    diff = mu1 - mu2
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def frechet_symmetric_torch(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Tr (Σ₁^½ Σ₂ Σ₁^½)^½ with eigh only (the symmetric form of the same trace)."""
    mu1, sigma1, mu2, sigma2 = map(_t, (mu1, sigma1, mu2, sigma2))
    w, v = torch.linalg.eigh(sigma1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = root @ sigma2 @ root
    lam = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * lam.sqrt().sum())


def fid_torch(features1, features2):
    x1, x2 = _t(features1), _t(features2)
    return frechet_eigenvalues_torch(x1.mean(0), torch.cov(x1.T).reshape(x1.shape[1], -1),
                                     x2.mean(0), torch.cov(x2.T).reshape(x2.shape[1], -1))


def kid_loops(features1, features2):
    x, y = _np(features1).tolist(), _np(features2).tolist()
    d = len(x[0])

    def k(a, b):
        return (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    xy = sum(k(a, b) for a in x for b in y)
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def kid_torch(features1, features2):
    x, y = _t(features1), _t(features2)
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = x.shape[0], y.shape[0]
    value = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) \
        - 2 * kxy.mean()
    return value  # a 0-d tensor: accepted like a float


def pr_torch_cdist(real, fake, k=3):
    x, y = _t(real), _t(fake)

    def coverage(reference, evaluated):
        radii = torch.cdist(reference, reference).kthvalue(k + 1, dim=1).values  # rank k + 1 counts the point itself
        return (torch.cdist(evaluated, reference) <= radii).any(dim=1).double().mean().item()

    return coverage(x, y), coverage(y, x)


def pr_loops(real, fake, k=3):
    x, y = _np(real).tolist(), _np(fake).tolist()

    def dist(a, b):
        return sum((p - q) ** 2 for p, q in zip(a, b)) ** 0.5

    def coverage(reference, evaluated):
        radii = [sorted(dist(a, b) for j, b in enumerate(reference) if j != i)[k - 1] for i, a in enumerate(reference)]
        inside = [any(dist(e, r) <= radius for r, radius in zip(reference, radii)) for e in evaluated]
        return sum(inside) / len(inside)

    return coverage(x, y), coverage(y, x)


ALTERNATIVES = [
    Alternative("second moment minus mean², in torch", "feature_statistics", statistics_torch_second_moment,
                "(XᵀX − nμμᵀ)/(n − 1), tensors in and out"),
    Alternative("eigenvalue route (torchmetrics)", "frechet_distance", frechet_eigenvalues_torch,
                "Σ√λ(Σ₁Σ₂) with torch.linalg.eigvals, no scipy, no eps retry needed"),
    Alternative("symmetric route with eigh", "frechet_distance", frechet_symmetric_torch,
                "Tr(Σ₁^½Σ₂Σ₁^½)^½ by two symmetric eigendecompositions"),
    Alternative("torch instead of scipy", "fid_from_features", fid_torch, "torch.cov and torch.linalg.eigvals"),
    Alternative("loops over pairs", "kid", kid_loops, "plain Python loops over every pair"),
    Alternative("vectorised torch, 0-d tensor result", "kid", kid_torch, "torch matrices; returns a 0-d tensor"),
    Alternative("torch.cdist and kthvalue", "precision_recall", pr_torch_cdist,
                "vectorised distances (the matmul expansion) and the (k + 1)-th smallest including itself"),
    Alternative("loops over points", "precision_recall", pr_loops, "the k-th smallest distance to the *other* points, by loops"),
]
