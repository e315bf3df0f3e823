"""Do the latent_vae checks hold what their comments promise, beyond what the bug catalogue shows?

* the training check's threshold (0.7 of the first loss) is far from what a correct model reaches;
* the law of sample() never fails a correct posterior over many seeds, and catches a std 3% off;
* the cases spread the log-variances over [−4, 2], and the examples cross both ends of the clamp;
* the solution gets full marks through the sandbox, the stub zero (tests.helpers).
"""

from __future__ import annotations

import pytest
import torch

from grader.checks import Context, ReferenceNamespace
from grader.exercises import latent_vae as ex
from grader.runner import InProcessRunner
from reference import latent_vae as ref
from tests.catalogue import latent_vae as catalogue
from tests.helpers import assert_solution_full_stub_zero


def _ratios(seeds) -> list[float]:
    ctx = Context(None, torch.device("cpu"), 0, "latent_vae")
    ratios = []
    for seed in seeds:
        torch.manual_seed(seed)
        record = ex.vae_scenario(ReferenceNamespace(ref), *ex.build_train({"seed": seed}, ctx).args.values(),
                                 step="train")
        ratios.append(float(record["losses"][-1] / record["losses"][0]))
    return ratios


@pytest.mark.slow
def test_training_threshold_over_20_seeds():
    """The comment's figure: at most 0.433 of the first loss over 20 seeds; 0.7 is asked."""
    assert max(_ratios(range(20))) < 0.45


def _law(namespace: dict, seed: int):
    ctx = Context(InProcessRunner(namespace), torch.device("cpu"), seed, "latent_vae")
    return ex.sample_law(ctx, ex.LAW_ALPHA)


def test_the_law_of_sample_passes_the_reference_and_the_alternative():
    for impl in (ref.DiagonalGaussian, catalogue.SlicedPerElement):
        report = _law({**catalogue.CORRECT, "DiagonalGaussian": impl}, 0)
        assert all(s.passed for s in report.statistics), [s.describe() for s in report.statistics]


@pytest.mark.slow
def test_the_law_of_sample_never_fails_a_correct_posterior_over_100_seeds():
    for seed in range(100):
        report = _law(catalogue.CORRECT, seed)
        assert all(s.passed for s in report.statistics), (seed, [s.describe() for s in report.statistics])


def test_the_law_of_sample_catches_a_std_three_percent_off():
    """χ² of 32,768 residuals: a 3% std error is a 6% variance error, ≈ 7.7 standard deviations of the mean square."""

    class Wide(ref.DiagonalGaussian):
        def sample(self, noise=None, generator=None):
            noise = torch.randn_like(self.mean) if noise is None else noise
            return self.mean + 1.03 * self.std * noise

    report = _law({**catalogue.CORRECT, "DiagonalGaussian": Wide}, 0)
    assert not all(s.passed for s in report.statistics)


def test_the_cases_spread_the_log_variances_and_cross_the_clamp():
    ctx = Context(None, torch.device("cpu"), 0, "latent_vae")
    example = ex.build_gaussian(ex.gaussian_examples[0], ctx).args["parameters"].double()
    _, logvar = torch.chunk(example, 2, dim=1)
    assert logvar.min() == -45 and logvar.max() == 28
    inner = logvar[(logvar > -30) & (logvar < 20)]
    assert inner.min() >= -4 and inner.max() <= 2


@pytest.mark.slow
def test_grade_submit_gives_the_solution_full_marks_and_the_stub_zero(tmp_path):
    assert_solution_full_stub_zero("latent_vae", 22, tmp_path)
