"""elbo: realistic bugs and correct alternatives."""

from __future__ import annotations

import math

import torch

from reference import elbo as ref
from reference.parametrization import predict_x0_from_eps
from reference.q_sampler import compute_alphas_cumprod, posterior_coefficients, q_posterior, q_sample
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}

LN2 = math.log(2.0)


def _bcast(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def _mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(1)


def _tanh_cdf(z):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * torch.pow(z, 3))))


# -- bugs ------------------------------------------------------------------------------------


def kl_inverted_ratio(mean1, logvar1, mean2, logvar2):
    # σ₂²/σ₁² where σ₁²/σ₂² belongs (and the log flipped with it)
    return 0.5 * (-1.0 + logvar1 - logvar2 + torch.exp(logvar2 - logvar1) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def kl_missing_minus_one(mean1, logvar1, mean2, logvar2):
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def kl_log_sign(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar1 - logvar2 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def kl_mean_term_over_var1(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar1))


def kl_logvar_as_log_std(mean1, logvar1, mean2, logvar2):
    # "log-variance" read as log σ: variances e^{2·logvar}
    return 0.5 * (-1.0 + 2 * (logvar2 - logvar1) + torch.exp(2 * (logvar1 - logvar2))
                  + (mean1 - mean2) ** 2 * torch.exp(-2 * logvar2))


def dgll_closed_edges(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    return torch.log((cdf(inv * (centered + 1 / 255)) - cdf(inv * (centered - 1 / 255))).clamp(min=1e-12))


def dgll_wide_bins(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    plus, minus = cdf(inv * (centered + 1 / 127.5)), cdf(inv * (centered - 1 / 127.5))  # bin width 4/255
    return torch.where(x < -0.999, torch.log(plus.clamp(min=1e-12)),
                       torch.where(x > 0.999, torch.log((1 - minus).clamp(min=1e-12)),
                                   torch.log((plus - minus).clamp(min=1e-12))))


def dgll_log_scale_as_log_variance(x, mean, log_scale):
    return ref.discretized_gaussian_log_likelihood(x, mean, 0.5 * log_scale)


def dgll_no_clamp(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    plus, minus = cdf(inv * (centered + 1 / 255)), cdf(inv * (centered - 1 / 255))
    return torch.where(x < -0.999, torch.log(plus), torch.where(x > 0.999, torch.log(1 - minus), torch.log(plus - minus)))


def dgll_edges_swapped(x, mean, log_scale):
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf = torch.special.ndtr
    plus, minus = cdf(inv * (centered + 1 / 255)), cdf(inv * (centered - 1 / 255))
    return torch.where(x < -0.999, torch.log((1 - minus).clamp(min=1e-12)),
                       torch.where(x > 0.999, torch.log(plus.clamp(min=1e-12)),
                                   torch.log((plus - minus).clamp(min=1e-12))))


def dgll_unstandardised(x, mean, log_scale):
    # forgets to divide by the scale: Φ(x − μ ± 1/255)
    centered = x - mean
    cdf = torch.special.ndtr
    plus, minus = cdf(centered + 1 / 255), cdf(centered - 1 / 255)
    return torch.where(x < -0.999, torch.log(plus.clamp(min=1e-12)),
                       torch.where(x > 0.999, torch.log((1 - minus).clamp(min=1e-12)),
                                   torch.log((plus - minus).clamp(min=1e-12))))


def prior_nats(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod) * LN2


def prior_sum(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod) * x0[0].numel()


def prior_alpha_bar_mean(x0, alphas_cumprod):
    a = alphas_cumprod[-1]
    mean = a.to(x0.dtype) * x0  # ᾱ·x0 where √ᾱ·x0 belongs
    kl = ref.normal_kl(mean, torch.log1p(-a).to(x0.dtype), 0.0, 0.0)
    return _mean_flat(kl) / LN2


def prior_second_to_last(x0, alphas_cumprod):
    return ref.prior_bpd(x0, alphas_cumprod[:-1])  # ᾱ_{T−2}: "x_T" taken as the state before the last step


def prior_reversed_kl(x0, alphas_cumprod):
    a = alphas_cumprod[-1]
    mean = a.sqrt().to(x0.dtype) * x0
    kl = ref.normal_kl(torch.zeros_like(x0), torch.zeros_like(x0), mean, torch.log1p(-a).to(x0.dtype))  # KL(N(0,I) ‖ q)
    return _mean_flat(kl) / LN2


def prior_zeros_on_the_cpu(x0, alphas_cumprod):
    a = alphas_cumprod[-1]
    mean = a.sqrt().to(x0.dtype) * x0
    prior = torch.zeros(x0.shape, dtype=x0.dtype)  # N(0, I) written out, on the CPU whatever x0's device
    return _mean_flat(ref.normal_kl(mean, torch.log1p(-a).to(x0.dtype), prior, prior)) / LN2


def vlb_decoder_at_one(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    nll = -ref.discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    # One-based thinking: "L_1 is the decoder", so t = 1 gets the decoder and t = 0 a KL.
    return torch.where(t == 1, _mean_flat(nll.expand_as(x0)), _mean_flat(kl.expand_as(x0))) / LN2


def vlb_reversed_kl(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(model_mean, model_log_variance, true_mean, true_log_variance)
    nll = -ref.discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    return torch.where(t == 0, _mean_flat(nll.expand_as(x0)), _mean_flat(kl.expand_as(x0))) / LN2


def vlb_nats(model_mean, model_log_variance, x0, xt, t, betas):
    return ref.vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas) * LN2


def vlb_log_scale_is_log_variance(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    nll = -ref.discretized_gaussian_log_likelihood(x0, model_mean, model_log_variance)  # log σ² where log σ belongs
    return torch.where(t == 0, _mean_flat(nll.expand_as(x0)), _mean_flat(kl.expand_as(x0))) / LN2


def vlb_sum_over_dims(model_mean, model_log_variance, x0, xt, t, betas):
    return ref.vlb_term_bpd(model_mean, model_log_variance, x0, xt, t, betas) * x0[0].numel()


def vlb_decoder_likelihood_sign(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    log_p = ref.discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)  # +log p, not −log p
    return torch.where(t == 0, _mean_flat(log_p.expand_as(x0)), _mean_flat(kl.expand_as(x0))) / LN2


def _elbo_parts(eps_model, x0, betas, generator, *, prior=True, steps=None, variance="posterior",
                x0_hat="eps", use_generator=True):
    """elbo_bpd with one knob per mistake."""
    T = betas.shape[0]
    alphas_cumprod = compute_alphas_cumprod(betas)
    c = posterior_coefficients(betas)
    log_variance = {"posterior": c["posterior_log_variance_clipped"],
                    "beta": torch.log(betas),
                    "unclipped": torch.log(c["posterior_variance"])}[variance]
    total = ref.prior_bpd(x0, alphas_cumprod) if prior else torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for step in (range(T) if steps is None else steps):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        if use_generator:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        else:
            noise = torch.randn_like(x0)
        xt = q_sample(x0, t, alphas_cumprod, noise=noise)
        eps = eps_model(xt, t)
        if x0_hat == "eps":
            guess = predict_x0_from_eps(xt, t, eps, alphas_cumprod)
        elif x0_hat == "no_sqrt":
            a = _bcast(alphas_cumprod[t], xt)
            guess = (xt - (1 - a) * eps) / a
        else:  # "true": the model is handed the answer
            guess = x0
        model_mean, _, _ = q_posterior(guess, xt, t, betas)
        total = total + ref.vlb_term_bpd(model_mean, _bcast(log_variance[t], x0), x0, xt, t, betas)
    return total


def elbo_missing_prior(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, prior=False)


def elbo_missing_decoder(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, steps=range(1, betas.shape[0]))


def elbo_beta_variance(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, variance="beta")


def elbo_unclipped_variance(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, variance="unclipped")


def elbo_global_generator(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, use_generator=False)


def elbo_x0_without_sqrt(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, x0_hat="no_sqrt")


def elbo_model_sees_x0(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, x0_hat="true")


def elbo_mean_over_steps(eps_model, x0, betas, generator=None):
    alphas_cumprod = compute_alphas_cumprod(betas)
    terms = _elbo_parts(eps_model, x0, betas, generator) - ref.prior_bpd(x0, alphas_cumprod)
    return ref.prior_bpd(x0, alphas_cumprod) + terms / betas.shape[0]  # the average L_t, not the sum


def elbo_last_step_skipped(eps_model, x0, betas, generator=None):
    return _elbo_parts(eps_model, x0, betas, generator, steps=range(betas.shape[0] - 1))  # range(T − 1)


BUGS = [
    Bug("KL with the variance ratio inverted", "normal_kl", kl_inverted_ratio, "σ₂²/σ₁² and log σ₁²/σ₂²"),
    Bug("KL without the −1", "normal_kl", kl_missing_minus_one, "KL(p ‖ p) = ½"),
    Bug("KL with the log term's sign flipped", "normal_kl", kl_log_sign, "+ (logvar1 − logvar2)"),
    Bug("KL mean term over the first variance", "normal_kl", kl_mean_term_over_var1, "(μ₁ − μ₂)²/σ₁²"),
    Bug("KL reading log-variances as log-stds", "normal_kl", kl_logvar_as_log_std, "variances e^{2·logvar}"),
    Bug("discretised likelihood with closed edge bins", "discretized_gaussian_log_likelihood", dgll_closed_edges,
        "every bin is [x − 1/255, x + 1/255], the edges too"),
    Bug("discretised likelihood with bins twice too wide", "discretized_gaussian_log_likelihood", dgll_wide_bins,
        "half-width 1/127.5"),
    Bug("discretised likelihood reading log_scale as a log-variance", "discretized_gaussian_log_likelihood",
        dgll_log_scale_as_log_variance, "scale e^{log_scale/2}"),
    Bug("discretised likelihood without the clamp", "discretized_gaussian_log_likelihood", dgll_no_clamp,
        "log 0 = −∞ far from the mean"),
    Bug("discretised likelihood with the edge bins swapped", "discretized_gaussian_log_likelihood", dgll_edges_swapped,
        "x = −1 gets the upper tail"),
    Bug("discretised likelihood not standardised", "discretized_gaussian_log_likelihood", dgll_unstandardised,
        "Φ(x − μ ± 1/255) without dividing by the scale"),
    Bug("prior in nats", "prior_bpd", prior_nats, "not divided by ln 2"),
    Bug("prior summed over dimensions", "prior_bpd", prior_sum, "sum where the per-dim mean belongs"),
    Bug("prior mean with ᾱ instead of √ᾱ", "prior_bpd", prior_alpha_bar_mean, "ᾱ·x0"),
    Bug("prior at the second-to-last step", "prior_bpd", prior_second_to_last, "ᾱ_{T−2}"),
    Bug("prior KL reversed", "prior_bpd", prior_reversed_kl, "KL(N(0, I) ‖ q(x_{T−1} | x0))"),
    Bug("decoder used at t = 1 instead of 0", "vlb_term_bpd", vlb_decoder_at_one, "one-based timesteps"),
    Bug("vlb KL reversed", "vlb_term_bpd", vlb_reversed_kl, "KL(p_θ ‖ q)"),
    Bug("vlb term in nats", "vlb_term_bpd", vlb_nats, "not divided by ln 2"),
    Bug("decoder log_scale = log-variance", "vlb_term_bpd", vlb_log_scale_is_log_variance, "no ½"),
    Bug("vlb summed over dimensions", "vlb_term_bpd", vlb_sum_over_dims, "sum instead of per-dim mean"),
    Bug("decoder term with the wrong sign", "vlb_term_bpd", vlb_decoder_likelihood_sign, "log p, not −log p"),
    Bug("ELBO without L_T", "elbo_bpd", elbo_missing_prior, "the prior term is missing"),
    Bug("ELBO without the decoder", "elbo_bpd", elbo_missing_decoder, "the loop starts at t = 1"),
    Bug("ELBO skipping the last step", "elbo_bpd", elbo_last_step_skipped, "range(T − 1)"),
    Bug("ELBO with model variance β_t", "elbo_bpd", elbo_beta_variance, "β_t where the fixed variance is β̃_t"),
    Bug("ELBO with the unclipped log-variance", "elbo_bpd", elbo_unclipped_variance, "log β̃_0 = −∞ at t = 0"),
    Bug("ELBO drawing from the global generator", "elbo_bpd", elbo_global_generator, "torch.randn_like"),
    Bug("ELBO with x̂0 from ᾱ instead of √ᾱ", "elbo_bpd", elbo_x0_without_sqrt, "x̂0 = (x_t − (1 − ᾱ)ε)/ᾱ"),
    Bug("ELBO whose model sees x0", "elbo_bpd", elbo_model_sees_x0, "the posterior mean from the true x0"),
    Bug("ELBO averaging the terms", "elbo_bpd", elbo_mean_over_steps, "the mean over t of L_t"),
    Bug("prior on the CPU", "prior_bpd", prior_zeros_on_the_cpu,
        "torch.zeros(x0.shape): right on the CPU, fails with --device cuda"),
]

# -- correct alternatives ----------------------------------------------------------------------


def kl_improved_diffusion(mean1, logvar1, mean2, logvar2):
    """improved-diffusion's losses.normal_kl."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def kl_torch_distributions(mean1, logvar1, mean2, logvar2):
    p = torch.distributions.Normal(mean1, torch.exp(0.5 * logvar1))
    q = torch.distributions.Normal(mean2, torch.exp(0.5 * logvar2))
    return torch.distributions.kl_divergence(p, q)


def kl_standard_deviations(mean1, logvar1, mean2, logvar2):
    std1, std2 = torch.exp(0.5 * logvar1), torch.exp(0.5 * logvar2)
    return torch.log(std2 / std1) + (std1**2 + (mean1 - mean2) ** 2) / (2 * std2**2) - 0.5


def dgll_tanh(x, mean, log_scale):
    """improved-diffusion's losses.discretized_gaussian_log_likelihood, with its tanh-approximate CDF."""
    centered_x = x - mean
    inv_stdv = torch.exp(-log_scale)
    cdf_plus = _tanh_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = _tanh_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def dgll_erf_float64(x, mean, log_scale):
    """erf-based CDF, no upper-tail trick, computed in float64 and cast back."""
    xd, md, sd = x.double(), mean.double(), log_scale.double()

    def cdf(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))

    inv = torch.exp(-sd)
    plus, minus = cdf(inv * (xd - md + 1 / 255)), cdf(inv * (xd - md - 1 / 255))
    low = torch.log(plus.clamp(min=1e-12))
    high = torch.log((1 - minus).clamp(min=1e-12))
    mid = torch.log((plus - minus).clamp(min=1e-12))
    return torch.where(xd < -0.999, low, torch.where(xd > 0.999, high, mid)).to(torch.promote_types(x.dtype, mean.dtype))


def dgll_distributions(x, mean, log_scale):
    """torch.distributions.Normal(...).cdf, with torch.where on the thresholds x ≤ −1 and x ≥ 1."""
    normal = torch.distributions.Normal(mean, torch.exp(log_scale))
    plus, minus = normal.cdf(x + 1 / 255), normal.cdf(x - 1 / 255)
    p = torch.where(x <= -1 + 1e-6, plus, torch.where(x >= 1 - 1e-6, 1 - minus, plus - minus))
    return torch.log(p.clamp(min=1e-12))


def prior_via_closed_form(x0, alphas_cumprod):
    a = alphas_cumprod[-1].to(x0.dtype)
    kl = 0.5 * (a * x0**2 + (1 - a) - 1 - torch.log(1 - a))
    return kl.reshape(x0.shape[0], -1).mean(1) / math.log(2)


def prior_loop(x0, alphas_cumprod):
    a = alphas_cumprod[-1]
    rows = []
    for row in x0:
        kl = ref.normal_kl(a.sqrt() * row.double(), torch.log(1 - a), 0.0, 0.0)
        rows.append(kl.mean() / math.log(2))
    return torch.stack(rows).to(x0.dtype)


def vlb_tanh_decoder(model_mean, model_log_variance, x0, xt, t, betas):
    true_mean, _, true_log_variance = q_posterior(x0, xt, t, betas)
    kl = ref.normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    nll = -dgll_tanh(x0, model_mean, 0.5 * model_log_variance)
    return torch.where(t == 0, _mean_flat(nll.expand_as(x0)), _mean_flat(kl.expand_as(x0))) / math.log(2)


def vlb_float64_inside(model_mean, model_log_variance, x0, xt, t, betas):
    args = [a.double() for a in (model_mean, model_log_variance, x0, xt)]
    return ref.vlb_term_bpd(*args, t, betas).to(model_mean.dtype)


def vlb_row_by_row(model_mean, model_log_variance, x0, xt, t, betas):
    logvar = model_log_variance.expand_as(model_mean)
    out = []
    for i in range(x0.shape[0]):
        sl = slice(i, i + 1)
        if int(t[i]) == 0:
            nll = -ref.discretized_gaussian_log_likelihood(x0[sl], model_mean[sl], 0.5 * logvar[sl])
            out.append(nll.mean() / math.log(2))
        else:
            mean, _, log_variance = q_posterior(x0[sl], xt[sl], t[sl], betas)
            out.append(ref.normal_kl(mean, log_variance, model_mean[sl], logvar[sl]).mean() / math.log(2))
    return torch.stack(out)


def elbo_descending(eps_model, x0, betas, generator=None):
    """Steps in the order T−1, …, 0: the draws come in another order."""
    T = betas.shape[0]
    alphas_cumprod = compute_alphas_cumprod(betas)
    log_variance = posterior_coefficients(betas)["posterior_log_variance_clipped"]
    total = ref.prior_bpd(x0, alphas_cumprod)
    for step in reversed(range(T)):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        xt = q_sample(x0, t, alphas_cumprod, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device))
        model_mean, _, _ = q_posterior(predict_x0_from_eps(xt, t, eps_model(xt, t), alphas_cumprod), xt, t, betas)
        total = total + ref.vlb_term_bpd(model_mean, _bcast(log_variance[t], x0), x0, xt, t, betas)
    return total


def elbo_batched_over_t(eps_model, x0, betas, generator=None):
    """All T noise tensors drawn at once as (T, B, ...); one model call on the (T·B, ...) batch."""
    T, B = betas.shape[0], x0.shape[0]
    alphas_cumprod = compute_alphas_cumprod(betas)
    log_variance = posterior_coefficients(betas)["posterior_log_variance_clipped"]
    noise = torch.randn((T, *x0.shape), generator=generator, dtype=x0.dtype, device=x0.device)
    x0s = x0.unsqueeze(0).expand(T, *x0.shape).reshape(T * B, *x0.shape[1:])
    t = torch.arange(T, device=x0.device).repeat_interleave(B)
    xt = q_sample(x0s, t, alphas_cumprod, noise.reshape(T * B, *x0.shape[1:]))
    model_mean, _, _ = q_posterior(predict_x0_from_eps(xt, t, eps_model(xt, t), alphas_cumprod), xt, t, betas)
    terms = ref.vlb_term_bpd(model_mean, _bcast(log_variance[t], x0s), x0s, xt, t, betas).reshape(T, B)
    return ref.prior_bpd(x0, alphas_cumprod) + terms.sum(0)


def elbo_tanh_decoder(eps_model, x0, betas, generator=None):
    """The decoder term with improved-diffusion's tanh CDF, through a tanh vlb term."""
    T = betas.shape[0]
    alphas_cumprod = compute_alphas_cumprod(betas)
    log_variance = posterior_coefficients(betas)["posterior_log_variance_clipped"]
    total = ref.prior_bpd(x0, alphas_cumprod)
    for step in range(T):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        xt = q_sample(x0, t, alphas_cumprod, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device))
        model_mean, _, _ = q_posterior(predict_x0_from_eps(xt, t, eps_model(xt, t), alphas_cumprod), xt, t, betas)
        total = total + vlb_tanh_decoder(model_mean, _bcast(log_variance[t], x0), x0, xt, t, betas)
    return total


ALTERNATIVES = [
    Alternative("KL as improved-diffusion writes it", "normal_kl", kl_improved_diffusion, "−1 + Δlogvar + e^{−Δ} + …"),
    Alternative("KL from torch.distributions", "normal_kl", kl_torch_distributions, "kl_divergence of two Normals"),
    Alternative("KL with standard deviations", "normal_kl", kl_standard_deviations, "log σ₂/σ₁ + (σ₁² + Δμ²)/2σ₂² − ½"),
    Alternative("discretised likelihood with the tanh CDF", "discretized_gaussian_log_likelihood", dgll_tanh,
                "improved-diffusion's approximate CDF"),
    Alternative("discretised likelihood with erf in float64", "discretized_gaussian_log_likelihood", dgll_erf_float64,
                "upcast, no upper-tail trick, cast back"),
    Alternative("discretised likelihood with torch.distributions", "discretized_gaussian_log_likelihood",
                dgll_distributions, "Normal(...).cdf and other edge thresholds"),
    Alternative("prior in closed form", "prior_bpd", prior_via_closed_form, "½(ᾱx² + (1 − ᾱ) − 1 − log(1 − ᾱ)) in x0's dtype"),
    Alternative("prior row by row in float64", "prior_bpd", prior_loop, "a loop, cast at the end"),
    Alternative("vlb term with the tanh decoder", "vlb_term_bpd", vlb_tanh_decoder, "tanh-approximate CDF at t = 0"),
    Alternative("vlb term in float64 inside", "vlb_term_bpd", vlb_float64_inside, "upcast, compute, cast back"),
    Alternative("vlb term row by row", "vlb_term_bpd", vlb_row_by_row, "a Python branch per batch element"),
    Alternative("ELBO over descending t", "elbo_bpd", elbo_descending, "noise drawn in another order"),
    Alternative("ELBO with every step in one batch", "elbo_bpd", elbo_batched_over_t, "(T, B, ...) noise at once"),
    Alternative("ELBO with the tanh decoder", "elbo_bpd", elbo_tanh_decoder, "improved-diffusion's CDF at t = 0"),
]
