"""Checks of exercise 8, latent_vae: the diagonal Gaussian posterior, its loss, the latent scale, the autoencoder.

Classes are played through :func:`vae_scenario` (:class:`~grader.checks.modules.Behaviour`): the
student's ``DiagonalGaussian`` built from parameters the grader chose, whose log-variances
spread over [−4, 2] (so that e^{logvar} and e^{logvar/2} cannot hide) plus entries beyond the
clamp at −45 and 28; ``vae_loss`` is given a posterior made by the scenario itself, so that it
is graded whatever the student's ``DiagonalGaussian`` does.

Point budget (22): DiagonalGaussian 11 (statistics 3 + form 1, kl 2, nll 2, sample(noise) 1,
sample() law 2), reparameterize 3, vae_loss 2, latent_scale_factor 2, TinyAutoencoderKL 4
(shapes 2, training 2).

One statistical check at level 1e-6: the submission's false-failure probability is ≤ 1e-6.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from grader.checks import (
    Agreement,
    Aspect,
    Behaviour,
    Context,
    Diagnosis,
    Inputs,
    Mismatch,
    Property,
    StatReport,
    Statistical,
    Tolerance,
    field,
    scenario_inputs,
    tensor_field,
    value_of,
)
from grader.exercises import Exercise
from grader.stats import mean_z, product_z, variance_chi2
from reference import latent_vae as ref
from reference import shapes


def vae_scenario(ns, *args, step, **kwargs):
    """Build the student's DiagonalGaussian or TinyAutoencoderKL from the grader's inputs; return values only."""

    class Posterior:
        """The grader's own posterior, handed to vae_loss (a KL of known value)."""

        def __init__(self, mean, logvar):
            self.mean, self.logvar = mean, logvar
            self.std, self.var = torch.exp(0.5 * logvar), torch.exp(logvar)

        def kl(self):
            return 0.5 * (self.mean**2 + self.var - 1 - self.logvar).reshape(self.mean.shape[0], -1).sum(1)

        def mode(self):
            return self.mean

    if step in ("stats", "kl", "nll", "sample"):
        dist = ns.DiagonalGaussian(args[0])
        if step == "stats":
            return {"mean": dist.mean, "logvar": dist.logvar, "std": dist.std, "var": dist.var, "mode": dist.mode()}
        if step == "kl":
            return {"kl": dist.kl()}
        if step == "nll":
            return {"nll": dist.nll(args[1])}
        return {"sample": dist.sample(noise=args[1])}
    if step == "draw":
        dist = ns.DiagonalGaussian(args[0])
        return {"first": dist.sample(), "second": dist.sample()}
    if step == "loss":
        x, x_recon, mean, logvar, kl_weight = args
        return {"loss": ns.vae_loss(x, x_recon, Posterior(mean, logvar), kl_weight)}
    if step == "shapes":
        in_channels, latent_channels, num_down, x = args
        model = ns.TinyAutoencoderKL(in_channels, latent_channels, num_down)
        posterior = model.encode(x)
        recon = model.decode(posterior.mean)
        out = model(x)
        return {"mean": list(posterior.mean.shape), "logvar": list(posterior.logvar.shape),
                "decoded": list(recon.shape), "forward": [list(out[0].shape), list(out[1].mean.shape)]}
    images, steps, lr, kl_weight, seed = args
    model = ns.TinyAutoencoderKL(1, 4, 2)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    losses = []
    for t in range(1, steps + 1):  # Adam written out: torch.optim's first use costs seconds of imports
        for p in params:
            p.grad = None
        posterior = model.encode(images)
        z = posterior.mean + torch.exp(0.5 * posterior.logvar) * torch.randn(posterior.mean.shape, generator=g)
        recon = model.decode(z)
        mine = Posterior(posterior.mean, posterior.logvar)
        loss = ((images - recon) ** 2).reshape(images.shape[0], -1).sum(1).mean() + kl_weight * mine.kl().mean()
        loss.backward()
        with torch.no_grad():
            for p, (m, v) in zip(params, moments):
                if p.grad is not None:
                    m.mul_(0.9).add_(p.grad, alpha=0.1)
                    v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                    p -= lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        losses.append(float(loss.detach()))
    return {"losses": torch.tensor(losses, dtype=torch.float64)}


# -- cases ------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "float64": torch.float64}

gaussian_cases = st.fixed_dictionaries({
    "batch": st.integers(1, 3),
    "channels": st.integers(1, 4),
    "rest": st.lists(st.integers(1, 4), max_size=2).map(tuple),
    "dtype": st.sampled_from(["float32", "float64"]),
    "seed": st.integers(0, 2**16),
})

#: Image-like latents with entries beyond both ends of the clamp, and a (B, 2C) vector case.
gaussian_examples = (
    {"batch": 2, "channels": 2, "rest": (3, 3), "dtype": "float32", "seed": 0, "clamp": True},
    {"batch": 3, "channels": 1, "rest": (), "dtype": "float64", "seed": 1, "clamp": True},
)


def build_gaussian(case: dict, ctx: Context) -> Inputs:
    """parameters (B, 2C, ...): means N(0, 1), log-variances U[−4, 2]; x and noise N(0, 1) like the mean."""
    g = torch.Generator().manual_seed(case["seed"])
    shape = (case["batch"], case["channels"], *case["rest"])
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    logvar = -4 + 6 * torch.rand(shape, generator=g, dtype=torch.float64)
    if case.get("clamp"):
        logvar.view(-1)[0], logvar.view(-1)[-1] = -45.0, 28.0
    dtype = DTYPES[case["dtype"]]
    x = (mean + torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).to(ctx.device)
    noise = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(ctx.device)
    parameters = torch.cat([mean, logvar], dim=1).to(dtype).to(ctx.device)
    note = f"{case['dtype']} {tuple(parameters.shape)}: means N(0, 1), log-variances U[−4, 2]"
    if case.get("clamp"):
        note += ", one −45 and one 28 (beyond the clamp)"
    return Inputs({"parameters": parameters, "other": x if case.get("step") != "sample" else noise},
                  notes={"parameters": note})


def _for(step: str):
    def build(case: dict, ctx: Context) -> Inputs:
        inputs = build_gaussian({**case, "step": step}, ctx)
        name = {"nll": "x", "sample": "noise"}.get(step)
        args = {"parameters": inputs.args["parameters"]}
        if name:
            args[name] = inputs.args["other"]
        return Inputs(args, notes=inputs.notes)

    return build


def _halves(inputs: Inputs):
    mean, logvar = torch.chunk(inputs.args["parameters"].double(), 2, dim=1)
    return mean, logvar.clamp(-30, 20)


def _kl_terms(inputs: Inputs):
    mean, logvar = _halves(inputs)
    return (0.5 * (mean**2 + logvar.exp() + 1 + logvar.abs())).reshape(mean.shape[0], -1).sum(1)


def _nll_terms(inputs: Inputs):
    mean, logvar = _halves(inputs)
    x = inputs.args["x"].double()
    terms = math.log(2 * math.pi) + logvar.abs() + (x - mean) ** 2 / logvar.exp()
    return (0.5 * terms).reshape(mean.shape[0], -1).sum(1)


#: Sums of ≤ 2·4·16 = 128 terms of size ≤ e^20 (the clamp) in float32: ≤ 128 u ≈ 8e-6 of Σ|terms|
#: in any order; 1e-4 relative to Σ|terms| is a 12x margin. exp(logvar) at 20 is e^20 ≈ 5e8: relative
#: comparison. The bugs (var for std, no ½, a mean for a sum, the clamp missing) change values by ≥ 10%.
VAE_TOLERANCE = Tolerance(
    rtol32=1e-4, atol32=1e-6, rtol64=1e-10, atol64=1e-12,
    why="sums of ≤ 128 terms in float32: ≤ 128 units of round-off of their size, with a 12x margin",
)


def _kl_per_element(parameters):
    """A diagnosis: the KL per element, not summed per sample."""
    mean, logvar = torch.chunk(parameters, 2, dim=1)
    logvar = logvar.clamp(-30, 20)
    return (0.5 * (mean**2 + logvar.exp() - 1 - logvar),)


def _kl_mean(parameters):
    mean, logvar = torch.chunk(parameters, 2, dim=1)
    logvar = logvar.clamp(-30, 20)
    return (0.5 * (mean**2 + logvar.exp() - 1 - logvar).reshape(mean.shape[0], -1).mean(1),)


# -- the law of sample() -----------------------------------------------------------------------

LAW_ALPHA = 1e-6
LAW_DERIVATION = ("three tests at 1/3e-6 each (Bonferroni): the pooled mean z and the χ² of the variance are exact "
                  "for i.i.d. N(0, 1) residuals, the correlation between two calls is a Chernoff bound")


def sample_law(ctx: Context, alpha: float) -> StatReport:
    """sample() twice on (256, 2·8, 4, 4) parameters: 32,768 entries per call, standardised by the true mean and std."""
    g = ctx.generator("sample law")
    mean = torch.randn(256, 8, 4, 4, generator=g, dtype=torch.float64)
    logvar = -4 + 6 * torch.rand(256, 8, 4, 4, generator=g, dtype=torch.float64)
    parameters = torch.cat([mean, logvar], 1).to(torch.float32)
    inputs = scenario_inputs("draw", Inputs({"parameters": parameters.to(ctx.device)},
                                            notes={"parameters": "float32 (256, 16, 4, 4), log-variances U[−4, 2]"}))
    record = value_of(ctx.call("DiagonalGaussian", [inputs], probe=vae_scenario, tag="law")[0])
    mean32, logvar32 = torch.chunk(parameters.double(), 2, 1)
    residuals = []
    for key in ("first", "second"):
        z = tensor_field(record, key, f"the {key} sample()").to("cpu", torch.float64)
        if tuple(z.shape) != tuple(mean.shape):
            raise Mismatch(f"sample() has shape {tuple(z.shape)}; expected {tuple(mean.shape)}")
        residuals.append((z - mean32) / torch.exp(0.5 * logvar32))
    r1, r2 = (r.reshape(256, -1) for r in residuals)
    a = alpha / 3
    return StatReport([mean_z(r1, a), variance_chi2(r1, a), product_z(r1, r2, a, "correlation between two calls")],
                      r1, inputs, note="standardised by the exact mean and e^{logvar/2} of each entry")


# -- vae_loss, latent_scale_factor, the autoencoder ---------------------------------------------

loss_cases = st.fixed_dictionaries({
    "batch": st.integers(1, 4), "size": st.integers(1, 4), "kl_weight": st.sampled_from([0.0, 1e-3, 0.5, 1.0, 10.0]),
    "dtype": st.sampled_from(["float32", "float64"]), "seed": st.integers(0, 2**16),
})


def build_loss(case: dict, ctx: Context) -> Inputs:
    g = torch.Generator().manual_seed(case["seed"])
    dtype, b, s = DTYPES[case["dtype"]], case["batch"], case["size"]
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(ctx.device)  # noqa: E731
    logvar = (-4 + 6 * torch.rand(b, 2, s, s, generator=g, dtype=torch.float64)).to(dtype).to(ctx.device)
    return Inputs({"x": draw(b, 1, 2 * s, 2 * s), "x_recon": draw(b, 1, 2 * s, 2 * s), "mean": draw(b, 2, s, s),
                   "logvar": logvar, "kl_weight": case["kl_weight"]},
                  notes={"mean": "the posterior's mean (the grader's posterior, with .kl())",
                         "logvar": "its log-variances, U[−4, 2]"})


def _loss_reference(x, x_recon, mean, logvar, kl_weight):
    posterior = ref.DiagonalGaussian(torch.cat([mean, logvar], 1))
    return (ref.vae_loss(x, x_recon, posterior, kl_weight),)


def _loss_weights_reconstruction(x, x_recon, mean, logvar, kl_weight):
    posterior = ref.DiagonalGaussian(torch.cat([mean, logvar], 1))
    return ((kl_weight * ((x - x_recon) ** 2).reshape(x.shape[0], -1).sum(1) + posterior.kl()).mean(),)


def _loss_per_pixel(x, x_recon, mean, logvar, kl_weight):
    posterior = ref.DiagonalGaussian(torch.cat([mean, logvar], 1))
    return ((((x - x_recon) ** 2).reshape(x.shape[0], -1).mean(1) + kl_weight * posterior.kl()).mean(),)


def build_scale(case: dict, ctx: Context) -> Inputs:
    """Latents like an encoder's: per-channel offsets and a spread near Stable Diffusion's 1/0.18215 ≈ 5.5."""
    g = torch.Generator().manual_seed(case["seed"])
    offsets = torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64) * 2
    latents = offsets + case["spread"] * torch.randn(case["batch"], 4, 8, 8, generator=g, dtype=torch.float64)
    return Inputs({"latents": latents.to(DTYPES[case["dtype"]]).to(ctx.device)},
                  notes={"latents": f"{case['dtype']} ({case['batch']}, 4, 8, 8) latents, spread {case['spread']}, "
                                    "per-channel offsets"})


def judge_scale(inputs: Inputs, outcome) -> None:
    """1 / std of all entries; the unbiased and biased std differ by ≤ 1/(2n) = 2.5e-4 at n ≥ 2,048, below 1e-3."""
    value = outcome.value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0:
        value = float(value)
    if type(value) not in (float, int):
        kind = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise Mismatch(f"latent_scale_factor returned {kind}; expected one Python float, 1 / std of all entries")
    expected = ref.latent_scale_factor(inputs.args["latents"].double())
    if not abs(value - expected) <= 1e-3 * expected:
        raise Mismatch(f"latent_scale_factor returned {value:.6g}; expected 1 / std = {expected:.6g} (the std of "
                       "all entries, around their mean)")


auto_cases = st.fixed_dictionaries({
    "in_channels": st.sampled_from([1, 3]), "latent_channels": st.integers(1, 4), "num_down": st.integers(1, 3),
    "cells": st.integers(1, 2), "seed": st.integers(0, 2**16),
})


def build_shapes(case: dict, ctx: Context) -> Inputs:
    size = case["cells"] * 2 ** case["num_down"]
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(2, case["in_channels"], size, size, generator=g).to(ctx.device)
    return Inputs({"in_channels": case["in_channels"], "latent_channels": case["latent_channels"],
                   "num_down": case["num_down"], "x": x})


def judge_shapes(inputs: Inputs, outcome) -> None:
    a = inputs.args
    x_shape = list(a["x"].shape)
    latent = [x_shape[0], a["latent_channels"], x_shape[2] // 2 ** a["num_down"], x_shape[3] // 2 ** a["num_down"]]
    for key, want, what in (("mean", latent, "encode(x).mean"), ("logvar", latent, "encode(x).logvar"),
                            ("decoded", x_shape, "decode(encode(x).mean)")):
        if field(outcome, key) != want:
            raise Mismatch(f"{what} has shape {tuple(field(outcome, key))}; expected {tuple(want)} "
                           f"(latent_channels = {a['latent_channels']}, 1/2**num_down = 1/{2 ** a['num_down']} the size)")
    if field(outcome, "forward") != [x_shape, latent]:
        raise Mismatch(f"forward(x) gave shapes {field(outcome, 'forward')}; expected (x_recon {tuple(x_shape)}, "
                       f"posterior with mean {tuple(latent)})")


#: 25 Adam steps at lr 2e-3 on 32 shapes with kl_weight 1e-3: the reference model ends below 0.45 of its
#: first loss on every one of 20 seeds (at most 0.433: tests/exercises/test_latent_vae_checks.py); 0.7 is
#: asked. A run takes ~5 s on a loaded 2-core machine, inside the 10 s call limit.
TRAIN_STEPS, TRAIN_LR, TRAIN_KL, TRAIN_RATIO = 25, 2e-3, 1e-3, 0.7


def _shapes(n: int, seed: int) -> torch.Tensor:
    """The course's image set (reference.shapes: installed with the grader, unlike the course folder)."""
    return shapes.load_shapes(n, torch.Generator().manual_seed(seed))[0]


def build_train(case: dict, ctx: Context) -> Inputs:
    return Inputs({"images": _shapes(32, case["seed"]).to(ctx.device), "steps": TRAIN_STEPS, "lr": TRAIN_LR,
                   "kl_weight": TRAIN_KL, "seed": case["seed"]},
                  notes={"images": "32 images of the course's shapes (1, 16, 16) in [−1, 1]",
                         "steps": f"{TRAIN_STEPS} Adam steps on Σ(x − x̂)² + {TRAIN_KL}·KL"})


def judge_training(inputs: Inputs, outcome) -> None:
    losses = tensor_field(outcome, "losses", "the losses")
    if not bool(torch.isfinite(losses).all()) or not losses[-1] <= TRAIN_RATIO * losses[0]:
        raise Mismatch(f"{TRAIN_STEPS} Adam steps took the loss from {losses[0]:.4g} to {losses[-1]:.4g}; a correct "
                       f"TinyAutoencoderKL gets below {TRAIN_RATIO:g}× the first loss")


def _gaussian(step: str, outputs: tuple[str, ...], what: str, points: float, **kwargs) -> Behaviour:
    return Behaviour(function="DiagonalGaussian", step=step, scenario=vae_scenario, namespace=ref,
                     cases=gaussian_cases, build=_for(step), examples=gaussian_examples, outputs=outputs, what=what,
                     points=points, tolerance=VAE_TOLERANCE, **kwargs)


EXERCISE = Exercise(
    name="latent_vae",
    title="The latent space of latent diffusion",
    functions=(
        ("DiagonalGaussian", ("parameters",)),
        ("reparameterize", ("mean", "logvar", "noise")),
        ("vae_loss", ("x", "x_recon", "posterior", "kl_weight")),
        ("latent_scale_factor", ("latents",)),
        ("TinyAutoencoderKL", ("in_channels", "latent_channels", "num_down")),
    ),
    checks=(
        _gaussian("stats", ("mean", "logvar", "std", "var", "mode"),
                  "mean and logvar split dim 1, logvar clamped to [−30, 20]; std, var, mode()", 3,
                  dtype_from="parameters", device_from="parameters", dtype_points=1),
        _gaussian("kl", ("kl",), "kl() is KL(q ‖ N(0, I)) summed per sample", 2, scale=_kl_terms,
                  scale_what="the size of the KL's terms",
                  diagnoses=(Diagnosis(_kl_per_element, "kl() must be summed over every non-batch dimension: (B,)"),
                             Diagnosis(_kl_mean, "kl() is a sum over the non-batch dimensions, not a mean"))),
        _gaussian("nll", ("nll",), "nll(x) is −log q(x) summed per sample", 2, scale=_nll_terms,
                  scale_what="the size of the NLL's terms"),
        _gaussian("sample", ("sample",), "sample(noise) is mean + std · noise", 1),
        Statistical(function="DiagonalGaussian", name="sample() draws N(mean, exp(logvar)), fresh at each call",
                    procedure=sample_law, alpha=LAW_ALPHA, derivation=LAW_DERIVATION, points=2),
        Agreement(function="reparameterize", cases=gaussian_cases,
                  build=lambda case, ctx: _reparameterize_inputs(case, ctx), examples=gaussian_examples,
                  reference=ref.reparameterize, tolerance=VAE_TOLERANCE, points=2, dtype_points=1,
                  dtype_from="mean", device_from="mean"),
        Behaviour(function="vae_loss", step="loss", scenario=vae_scenario, namespace={"vae_loss": ref.vae_loss},
                  cases=loss_cases, build=build_loss, outputs=("loss",), tolerance=VAE_TOLERANCE, points=2,
                  what="batch mean of Σ(x − x̂)² + kl_weight · kl()",
                  examples=({"batch": 3, "size": 2, "kl_weight": 0.0, "dtype": "float64", "seed": 0},
                            {"batch": 2, "size": 3, "kl_weight": 10.0, "dtype": "float32", "seed": 1}),
                  diagnoses=(Diagnosis(_loss_weights_reconstruction, "kl_weight multiplies the KL only, not the "
                                       "reconstruction error"),
                             Diagnosis(_loss_per_pixel, "the reconstruction error is summed over pixels (a mean "
                                       "makes the KL weight mean something else)"))),
        Property(function="latent_scale_factor", cases=st.fixed_dictionaries({
                     "batch": st.integers(8, 16), "spread": st.sampled_from([5.49, 1.0, 0.2]),
                     "dtype": st.sampled_from(["float32", "float64"]), "seed": st.integers(0, 2**16)}),
                 build=build_scale, max_examples=10,
                 aspects=(Aspect("is 1 / std of all latent entries, a float", 2, judge_scale),)),
        Behaviour(function="TinyAutoencoderKL", step="shapes", scenario=vae_scenario, namespace=ref,
                  cases=auto_cases, build=build_shapes, max_examples=6,
                  examples=({"in_channels": 1, "latent_channels": 4, "num_down": 2, "cells": 2, "seed": 0},),
                  extra=(Aspect("encode, decode and forward give the curriculum's shapes", 2, judge_shapes),)),
        Behaviour(function="TinyAutoencoderKL", step="train", scenario=vae_scenario, namespace=ref,
                  cases=st.fixed_dictionaries({"seed": st.integers(0, 2**16)}), build=build_train,
                  examples=({"seed": 0},), max_examples=1, public=False,
                  extra=(Aspect("a short training run on the shapes lowers the loss", 2, judge_training,
                                shrink=False),)),
    ),
)


def _reparameterize_inputs(case: dict, ctx: Context) -> Inputs:
    inputs = build_gaussian({**case, "step": "sample"}, ctx)
    mean, logvar = torch.chunk(inputs.args["parameters"], 2, dim=1)
    return Inputs({"mean": mean, "logvar": logvar.clamp(-30, 20), "noise": inputs.args["other"]},
                  notes={"logvar": "log-variances U[−4, 2]"})
