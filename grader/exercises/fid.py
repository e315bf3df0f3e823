"""Checks of exercise 9, fid: feature statistics, the Fréchet distance, FID, KID, precision/recall.

Point budget (15): feature_statistics 2, frechet_distance 3 (+2 where Σ₁Σ₂ has no square root that
sqrtm finds: pytorch-fid's ε·I retry), fid_from_features 2, kid 3, precision_recall 3.

numpy and scipy are allowed in this exercise, so every check calls the student's function through
one probe (:func:`arrays_or_tensors`) that hands it, case by case, float64 tensors or numpy arrays
of the same values, and turns a scalar result — a Python float, a numpy float or a one-element
tensor — into a 0-d float64 tensor for the comparison (anything else is a one-line error). The
reference is ``reference.fid`` (pytorch-fid's formula, torchmetrics' KID, the authors' precision/recall).

Every function is deterministic: no statistical checks.

How values are compared. FID and KID are differences of terms much larger than themselves (two sets
from one distribution: FID ≈ 0 from Tr Σ₁ + Tr Σ₂ − 2 Tr(Σ₁Σ₂)^½ ≈ 2 Tr Σ), so round-off and the
differences between correct routes (sqrtm, eigenvalues of Σ₁Σ₂, the symmetric Σ₁^½Σ₂Σ₁^½) are
relative to the size of those terms, not to the result: ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ for FID, the
mean |k| of the three kernel blocks for KID. Precision and recall are fractions of counts: exact.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from grader.checks import Agreement, Context, Diagnosis, Inputs, Tolerance
from grader.exercises import Exercise
from reference import fid as ref


def arrays_or_tensors(ns, *args, fn="", numpy=False, result="raw", **kwargs):
    """Probe: call ``ns.<fn>`` on the tensors, or on numpy copies (``numpy=True``); scalars back as 0-d float64 tensors."""
    if numpy:
        args = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in args]
    value = getattr(ns, fn)(*args, **kwargs)

    def scalar(v, what):
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():
            return v.detach().reshape(()).to(torch.float64)
        if isinstance(v, float) or (type(v).__module__ == "numpy" and getattr(v, "size", 0) == 1
                                    and getattr(getattr(v, "dtype", None), "kind", "") == "f"):
            return torch.tensor(float(v), dtype=torch.float64)
        raise TypeError(f"{fn} returned {what} of type {type(v).__name__}; a Python float was expected")

    if result == "scalar":
        return scalar(value, "a result")
    if result == "pair":
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{fn} returned {type(value).__name__}; a pair (precision, recall) of floats was expected")
        return scalar(value[0], "a precision"), scalar(value[1], "a recall")
    return value


def _scalar(function):
    """The reference ``function`` with its float result(s) as 0-d float64 tensors, as the probe returns them."""
    def wrapped(*args, **kwargs):
        value = function(*args, **kwargs)
        if isinstance(value, tuple):
            return tuple(torch.tensor(v, dtype=torch.float64) for v in value)
        return torch.tensor(value, dtype=torch.float64)
    return wrapped


def _hidden(fn: str, case: dict, result: str) -> dict:
    return {"fn": fn, "numpy": case["numpy"], "result": result}


def _kind(case: dict) -> str:
    return "numpy array" if case["numpy"] else "float64 tensor"


# -- features --------------------------------------------------------------------------------------

#: Feature sets of N = 2–60 points in D = 1–16 dimensions, each set on a subspace of full rank, half
#: the dimension, or one dimension (rank-deficient covariances, as with fewer images than features),
#: shifted by a random mean; as tensors or as numpy arrays.
feature_cases = st.fixed_dictionaries({
    "n1": st.integers(2, 60), "n2": st.integers(2, 60), "d": st.integers(1, 16),
    "rank1": st.sampled_from(["full", "half", "one"]), "rank2": st.sampled_from(["full", "half", "one"]),
    "shift": st.sampled_from([0.0, 1.0, 3.0]), "numpy": st.booleans(), "seed": st.integers(0, 2**16),
})

#: Larger sets than D with full rank and unit scale: the usual regime, first.
FEATURE_EXAMPLES = (
    {"n1": 50, "n2": 40, "d": 8, "rank1": "full", "rank2": "full", "shift": 1.0, "numpy": False, "seed": 0},
    {"n1": 50, "n2": 40, "d": 8, "rank1": "full", "rank2": "full", "shift": 1.0, "numpy": True, "seed": 0},
    {"n1": 5, "n2": 30, "d": 12, "rank1": "full", "rank2": "half", "shift": 0.0, "numpy": False, "seed": 1},
    {"n1": 2, "n2": 2, "d": 1, "rank1": "one", "rank2": "one", "shift": 3.0, "numpy": True, "seed": 2},
)

_RANK = {"full": lambda d: d, "half": lambda d: max(1, d // 2), "one": lambda d: 1}


def _features(g: torch.Generator, n: int, d: int, rank: str, shift: float) -> torch.Tensor:
    r = _RANK[rank](d)
    basis = torch.randn((r, d), generator=g, dtype=torch.float64) / r**0.5
    return torch.randn((n, r), generator=g, dtype=torch.float64) @ basis + shift * torch.randn(d, generator=g, dtype=torch.float64)


def _feature_pair(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(case["seed"])
    return (_features(g, case["n1"], case["d"], case["rank1"], case["shift"]),
            _features(g, case["n2"], case["d"], case["rank2"], case["shift"]))


def _fid_features(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair whose FID every correct route computes alike, without the reference's ε·I retry.

    Replaced by the next seed's (deterministically): the pairs of rank-deficient covariances whose
    product has no square root that sqrtm finds (with OpenBLAS's Haswell kernels: 7 of 3 000 random 3-D
    pairs of a rank-1 or rank-2 covariance and a full one). There the reference regularises, and lands
    as far as 2e-3 from an eigenvalue route's exact answer (on a distance of 5.8). Whether sqrtm fails
    turns on the last bits of Σ₁Σ₂, which depend on the processor's round-off (seen: seed 0 of the
    catalogue drew such a pair on an Intel Xeon, after passing on the machines before), so both
    covariance routes the reference takes are tried: torch's (frechet_distance's statistics) and numpy's
    (fid_from_features'). The retry has its own check, on pairs that fail on every grader
    (:data:`RETRY_TABLE`). Also replaced: the pairs, about 1 in 1 000, where sqrtm's round-off makes
    (Σ₁Σ₂)^½ genuinely complex and the reference raises."""
    for step in range(20):
        x, y = _feature_pair({**case, "seed": case["seed"] + step})
        try:
            if any(ref.needs_regularising(ref.feature_statistics(a)[1], ref.feature_statistics(b)[1])
                   for a, b in ((x, y), (x.numpy(), y.numpy()))):
                continue
            ref.fid_from_features(x, y)
            return x, y
        except ValueError:
            continue
    raise RuntimeError(f"no computable pair near {case}")  # never seen: 20 failures in a row


def build_statistics(case: dict, ctx: Context) -> Inputs:
    x, _ = _feature_pair(case)
    return Inputs({"features": x.to(ctx.device)}, notes={"features": f"{_kind(case)} of shape {tuple(x.shape)}"},
                  hidden=_hidden("feature_statistics", case, "raw"))


def statistics_scale(inputs: Inputs):
    """The size of the terms summed: mean |x| for μ, |x|ᵀ|x|/(N − 1) for Σ."""
    x = inputs.args["features"].abs()
    return x.mean(0), x.T @ x / (x.shape[0] - 1)


#: A mean and a covariance in float64 carry ~N·u relative to the size of their terms (N ≤ 60: 1e-14);
#: the second-moment formula (XᵀX − nμμᵀ)/(n − 1) cancels terms of that same size. 1e-9 of the terms
#: leaves 10⁴×; the biased (N) covariance is off by 1/(N − 1) ≥ 1/59 of them.
STATISTICS_TOLERANCE = Tolerance(rtol32=1e-9, atol32=1e-12, rtol64=1e-9, atol64=1e-12,
                                 why="float64 sums of ≤ 60 terms, relative to the size of the terms")


def build_fid(case: dict, ctx: Context) -> Inputs:
    x, y = _fid_features(case)
    return Inputs({"features1": x.to(ctx.device), "features2": y.to(ctx.device)},
                  notes={"features1": f"{_kind(case)} of shape {tuple(x.shape)}",
                         "features2": f"{_kind(case)} of shape {tuple(y.shape)}"},
                  hidden=_hidden("fid_from_features", case, "scalar"))


def build_frechet(case: dict, ctx: Context) -> Inputs:
    x, y = _fid_features(case)
    (mu1, s1), (mu2, s2) = ref.feature_statistics(x), ref.feature_statistics(y)
    what = f"of {case['n1']} and {case['n2']} points in {case['d']} dimensions (ranks {case['rank1']}, {case['rank2']})"
    return Inputs({"mu1": mu1.to(ctx.device), "sigma1": s1.to(ctx.device), "mu2": mu2.to(ctx.device), "sigma2": s2.to(ctx.device)},
                  notes={"sigma1": f"{_kind(case)}: the covariance {what}", "sigma2": f"{_kind(case)}: the second covariance"},
                  hidden=_hidden("frechet_distance", case, "scalar"))


def fid_terms(inputs: Inputs) -> torch.Tensor:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂, from the statistics or from the features."""
    a = inputs.args
    if "features1" in a:
        (mu1, s1), (mu2, s2) = ref.feature_statistics(a["features1"]), ref.feature_statistics(a["features2"])
    else:
        mu1, s1, mu2, s2 = a["mu1"], a["sigma1"], a["mu2"], a["sigma2"]
    return ((mu1 - mu2) ** 2).sum() + s1.diagonal().sum() + s2.diagonal().sum()


#: sqrtm of Σ₁Σ₂ and the eigenvalue or symmetric routes agree to ≤ 7.5e-8 of the terms where both
#: covariances are singular, ≤ 1e-8 otherwise (4 000 random cases, tests/reference/test_fid.py);
#: 1e-6 keeps a 10× margin. The bugs (‖μ‖ not squared, no factor 2, an elementwise root) move FID
#: by a fraction O(1) of the terms.
FID_TOLERANCE = Tolerance(rtol32=1e-6, atol32=1e-12, rtol64=1e-6, atol64=1e-12,
                          why="sqrtm vs eigenvalues of a possibly singular Σ₁Σ₂: ≤ 7.5e-8 of the terms, 10× margin")

# -- singular products: the eps retry --------------------------------------------------------------

#: Exact integer covariance pairs (rank ≤ 3 in 4-D) whose product has no square root that scipy's
#: sqrtm finds (it returns NaN), each with the scalings and the 2·I ⊕ 3·I padding under which it
#: still fails (tests/exercises/test_fid_checks.py checks every one): pytorch-fid then uses Σ + εI.
#: Whether sqrtm fails depends on the round-off of OpenBLAS's kernels for the CPU: it does with the
#: Haswell, Zen and Sandybridge kernels, not with SkylakeX's (AVX-512), where a route without the retry
#: would pass; grader/blas.py fixes the Haswell kernels on every x86-64 grader, so that it fails on each.
_SINGULAR = (
    (((1, 1, -1, -1), (1, 1, -1, -1), (-1, -1, 1, 1), (-1, -1, 1, 1)),
     ((2, 1, -1, 0), (1, 1, -1, 0), (-1, -1, 1, 0), (0, 0, 0, 0))),
    (((3, -2, 0, 0), (-2, 2, -1, 1), (0, -1, 2, -2), (0, 1, -2, 2)),
     ((1, -1, 0, 1), (-1, 2, 0, 0), (0, 0, 0, 0), (1, 0, 0, 2))),
)
RETRY_TABLE = tuple(
    {"base": base, "c1": c1, "c2": c2, "pad": pad}
    for base, c1, c2 in ((0, 1, 1), (0, 1, 2), (0, 2, 1), (0, 2, 2), (0, 0.5, 0.5), (1, 1, 1), (1, 2, 2), (1, 0.5, 2))
    for pad in (0, 1)
)
retry_cases = st.fixed_dictionaries({"row": st.integers(0, len(RETRY_TABLE) - 1), "numpy": st.booleans(),
                                     "seed": st.integers(0, 2**16)})


def retry_covariances(row: int) -> tuple[torch.Tensor, torch.Tensor]:
    entry = RETRY_TABLE[row]
    s1, s2 = (torch.tensor(m, dtype=torch.float64) for m in _SINGULAR[entry["base"]])
    s1, s2 = entry["c1"] * s1, entry["c2"] * s2
    if entry["pad"]:
        s1, s2 = torch.block_diag(s1, 2 * torch.eye(1, dtype=torch.float64)), torch.block_diag(s2, 3 * torch.eye(1, dtype=torch.float64))
    return s1, s2


def build_retry(case: dict, ctx: Context) -> Inputs:
    s1, s2 = retry_covariances(case["row"])
    g = torch.Generator().manual_seed(case["seed"])
    mu1, mu2 = (torch.randint(-2, 3, (s1.shape[0],), generator=g).to(torch.float64) for _ in range(2))
    return Inputs({"mu1": mu1.to(ctx.device), "sigma1": s1.to(ctx.device), "mu2": mu2.to(ctx.device), "sigma2": s2.to(ctx.device)},
                  notes={"sigma1": f"{_kind(case)}: a singular covariance whose product with sigma2 has no "
                                   f"square root that scipy.linalg.sqrtm finds (it returns NaN)\n      {s1.tolist()}",
                         "sigma2": f"{_kind(case)}: {s2.tolist()}"},
                  hidden=_hidden("frechet_distance", case, "scalar"))


def retry_allowance(inputs: Inputs) -> torch.Tensor:
    """2·D·√(ε(‖Σ₁‖ + ‖Σ₂‖)): how far Σ + εI moves 2 Tr(Σ₁Σ₂)^½, each null direction's root by ≤ √(ε(‖Σ₁‖ + ‖Σ₂‖))."""
    a = inputs.args
    norms = torch.linalg.matrix_norm(a["sigma1"], 2) + torch.linalg.matrix_norm(a["sigma2"], 2)
    return 2 * a["sigma1"].shape[0] * (1e-6 * norms).sqrt()


#: The reference regularises (pytorch-fid); a correct eigenvalue route does not need to and answers
#: the unregularised W₂²: they differ by ≤ the allowance above (seen: ≤ 0.36 of it on 300 variants).
#: A route without the retry returns NaN, which no tolerance admits.
RETRY_TOLERANCE = Tolerance(rtol32=1.0, atol32=1e-9, rtol64=1.0, atol64=1e-9,
                            why="Σ + εI moves each null direction's root by ≤ √(ε(‖Σ₁‖ + ‖Σ₂‖))")

# -- kid ---------------------------------------------------------------------------------------------


def build_kid(case: dict, ctx: Context) -> Inputs:
    x, y = _feature_pair(case)
    return Inputs({"features1": x.to(ctx.device), "features2": y.to(ctx.device)},
                  notes={"features1": f"{_kind(case)} of shape {tuple(x.shape)}",
                         "features2": f"{_kind(case)} of shape {tuple(y.shape)}"},
                  hidden=_hidden("kid", case, "scalar"))


def kid_terms(inputs: Inputs) -> torch.Tensor:
    """mean |k| over each of the three kernel blocks, the middle one twice: the size of KID's terms."""
    x, y = (inputs.args[k].cpu().numpy() for k in ("features1", "features2"))
    blocks = [abs(ref.polynomial_kernel(a, b)).mean() for a, b in ((x, x), (y, y), (x, y), (x, y))]
    return torch.tensor(sum(blocks), dtype=torch.float64)


#: Sums of ≤ 3 600 kernel values in float64, in any order or by loops: ≤ 1e-12 of the terms. 1e-8 of
#: them admits that with 10⁴× to spare; the biased, degree-2 and 1/D mistakes move KID by ≥ 1e-3 of
#: the terms (the diagonal alone is 1/N of them).
KID_TOLERANCE = Tolerance(rtol32=1e-8, atol32=1e-12, rtol64=1e-8, atol64=1e-12,
                          why="float64 sums of ≤ 3 600 kernel values, relative to their size")

# -- precision / recall ------------------------------------------------------------------------------

pr_cases = st.fixed_dictionaries({
    "n1": st.integers(6, 50), "n2": st.integers(6, 50), "d": st.integers(1, 8), "k": st.sampled_from([1, 2, 3, 5]),
    "layout": st.sampled_from(["gaussians", "grid"]), "numpy": st.booleans(), "seed": st.integers(0, 2**16),
})
#: Integer points on a small grid: distances tie radii exactly (and in any formula, the squared
#: distances being small integers), where ≤ and < differ; duplicates are other points.
PR_EXAMPLES = (
    {"n1": 30, "n2": 30, "d": 2, "k": 3, "layout": "gaussians", "numpy": False, "seed": 0},
    {"n1": 20, "n2": 25, "d": 2, "k": 3, "layout": "grid", "numpy": True, "seed": 0},
    {"n1": 12, "n2": 12, "d": 1, "k": 1, "layout": "grid", "numpy": False, "seed": 1},
    {"n1": 40, "n2": 15, "d": 3, "k": 5, "layout": "grid", "numpy": False, "seed": 2},
)


def build_pr(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    d = case["d"]
    if case["layout"] == "grid":
        real = torch.randint(0, 4, (case["n1"], d), generator=g).to(torch.float64)
        fake = torch.randint(0, 5, (case["n2"], d), generator=g).to(torch.float64)
        what = "integer points of a grid"
    else:
        real = torch.randn((case["n1"], d), generator=g, dtype=torch.float64)
        fake = 0.5 + 1.5 * torch.randn((case["n2"], d), generator=g, dtype=torch.float64)
        what = "N(0, I) draws"
    return Inputs({"real": real.to(ctx.device), "fake": fake.to(ctx.device)}, {"k": case["k"]},
                  notes={"real": f"{_kind(case)} of shape {tuple(real.shape)}, {what}",
                         "fake": f"{_kind(case)} of shape {tuple(fake.shape)}"},
                  hidden=_hidden("precision_recall", case, "pair"))


#: Fractions of counts: exact, but for a distance within round-off of a radius, which continuous draws
#: hit with probability ~1e-13 per pair and the integer grids never (their squared distances are small
#: integers, exact in every formula, and √ is monotone). 1e-12 absorbs the division.
PR_TOLERANCE = Tolerance(rtol32=0.0, atol32=1e-12, rtol64=0.0, atol64=1e-12, why="fractions of counts of points")


def _pr_self_neighbour(real, fake, k=3):
    return _scalar(ref.precision_recall)(real, fake, k=k - 1)  # k = 1 raises: no match, so no hint there


def _pr_swapped(real, fake, k=3):
    precision, recall = ref.precision_recall(real, fake, k=k)
    return torch.tensor(recall, dtype=torch.float64), torch.tensor(precision, dtype=torch.float64)


def _kid_biased(features1, features2):
    x, y = features1.cpu().numpy(), features2.cpu().numpy()
    kxx, kyy, kxy = ref.polynomial_kernel(x, x), ref.polynomial_kernel(y, y), ref.polynomial_kernel(x, y)
    return torch.tensor(kxx.mean() + kyy.mean() - 2 * kxy.mean(), dtype=torch.float64)


def _fid_norm_not_squared(mu1, sigma1, mu2, sigma2):
    diff = mu1 - mu2
    return torch.tensor(ref.frechet_distance(mu1, sigma1, mu2, sigma2) - float(diff @ diff) + float(diff.norm()),
                        dtype=torch.float64)


def _biased_statistics(features):
    mu, sigma = ref.feature_statistics(features)
    n = features.shape[0]
    return mu, sigma * (n - 1) / n


# -- the exercise ------------------------------------------------------------------------------------

EXERCISE = Exercise(
    name="fid",
    title="Evaluating generative models: FID, KID, precision and recall",
    functions=(
        ("feature_statistics", ("features",)),
        ("frechet_distance", ("mu1", "sigma1", "mu2", "sigma2", "eps")),
        ("fid_from_features", ("features1", "features2")),
        ("kid", ("features1", "features2")),
        ("precision_recall", ("real", "fake", "k")),
    ),
    checks=(
        Agreement(
            function="feature_statistics", cases=feature_cases, build=build_statistics, probe=arrays_or_tensors,
            reference=ref.feature_statistics, tolerance=STATISTICS_TOLERANCE, outputs=("mu", "sigma"),
            scale=statistics_scale, scale_what="the size of the terms summed", points=2, examples=FEATURE_EXAMPLES,
            what="the mean and the unbiased covariance match the reference",
            diagnoses=(Diagnosis(_biased_statistics, "your covariance divides by N; the unbiased one divides by N − 1"),),
        ),
        Agreement(
            function="frechet_distance", cases=feature_cases, build=build_frechet, probe=arrays_or_tensors,
            reference=_scalar(ref.frechet_distance), tolerance=FID_TOLERANCE, scale=fid_terms,
            scale_what="‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂", points=3, examples=FEATURE_EXAMPLES,
            what="matches ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr(Σ₁Σ₂)^½",
            diagnoses=(Diagnosis(_fid_norm_not_squared, "your value uses ‖μ₁ − μ₂‖ where the formula has its square"),),
        ),
        Agreement(
            function="frechet_distance", cases=retry_cases, build=build_retry, probe=arrays_or_tensors,
            reference=_scalar(ref.frechet_distance), tolerance=RETRY_TOLERANCE, scale=retry_allowance,
            scale_what="2·D·√(ε(‖Σ₁‖ + ‖Σ₂‖)), what Σ + εI may change", points=2, max_examples=6,
            examples=tuple({"row": row, "numpy": row % 2 == 1, "seed": row} for row in (0, 3, 5, 10, 13)),
            what="is finite where sqrtm(Σ₁Σ₂) fails: Σ + eps·I is used (pytorch-fid)",
        ),
        Agreement(
            function="fid_from_features", cases=feature_cases, build=build_fid, probe=arrays_or_tensors,
            reference=_scalar(ref.fid_from_features), tolerance=FID_TOLERANCE, scale=fid_terms,
            scale_what="‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂", points=2, examples=FEATURE_EXAMPLES,
            what="matches the Fréchet distance of the features' statistics",
        ),
        Agreement(
            function="kid", cases=feature_cases, build=build_kid, probe=arrays_or_tensors,
            reference=_scalar(ref.kid), tolerance=KID_TOLERANCE, scale=kid_terms,
            scale_what="the mean |k| of the kernel blocks", points=3, examples=FEATURE_EXAMPLES,
            what="matches the unbiased MMD² with k(x, y) = (xᵀy/D + 1)³",
            diagnoses=(Diagnosis(_kid_biased, "your KID keeps the terms k(xᵢ, xᵢ): the unbiased estimate averages over "
                                              "pairs i ≠ j, dividing by m(m − 1)"),),
        ),
        Agreement(
            function="precision_recall", cases=pr_cases, build=build_pr, probe=arrays_or_tensors,
            reference=_scalar(ref.precision_recall), tolerance=PR_TOLERANCE, outputs=("precision", "recall"),
            points=3, examples=PR_EXAMPLES, what="matches Kynkäänniemi et al.'s precision and recall",
            diagnoses=(Diagnosis(_pr_swapped, "your (precision, recall) are (recall, precision): precision asks whether "
                                              "each fake point lies near the real ones"),
                       Diagnosis(_pr_self_neighbour, "your radius is the distance to the (k − 1)-th other point: "
                                                     "a point is not its own neighbour")),
        ),
    ),
)
