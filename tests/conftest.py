"""Test-wide settings.

torch's intra-op thread pool oversubscribes small CI machines when the test
process and a grading kernel run at once (one elbo_bpd call went from 0.5 s to
30 s on 2 shared cores); the tests' tensors are small, so one thread is fastest.

Two runs of the suite (README, "Tests"): ``python -m pytest`` is what CI runs, every
test; ``python -m pytest -m "not slow"`` is the contributor's quick loop (under 3
minutes on 2 cores). A test that loops over many seeds is a calibration and is
marked ``calibration``; every calibration is also ``slow`` (added here), so that the
quick loop never runs one by accident.

``--calibration-out FILE``: the catalogue tests (tests/exercises/test_catalogue.py) append one
JSON line per entry and seed to FILE — its verdict and its statistics' p-values — through the
``calibration_record`` fixture. ``benchmarks/calibrate.py`` runs them that way, in a subprocess
with CALIBRATION_SEEDS=N, and tabulates the file: the calibration is the catalogue's own tests on
more seeds, and the benchmark imports no test code.
"""

import json
import os
from typing import Callable

# The OpenBLAS kernels grading uses (grader/blas.py, which `grade` sets first thing): the in-process
# checks and the kernels the tests start see the same round-off as `grade submit`, on every machine.
from grader import blas  # imports nothing heavy: it runs before numpy, which reads the setting

blas.pin()

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every ``calibration`` test is ``slow`` too."""
    for item in items:
        if item.get_closest_marker("calibration") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--calibration-out", metavar="FILE", default=None,
                     help="append each catalogue entry's per-seed verdict and p-values to FILE, one JSON line each "
                          "(benchmarks/calibrate.py reads it)")


@pytest.fixture
def calibration_record(request: pytest.FixtureRequest) -> Callable[[dict], None]:
    """``record(entry)``: one JSON line appended to ``--calibration-out`` (nothing without the option).

    One ``write`` on a file opened with O_APPEND: the lines of several pytest-xdist workers never
    interleave (a local file's appends are atomic), so they may share one file.
    """
    path = request.config.getoption("--calibration-out")

    def record(entry: dict) -> None:
        if path is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode())
        finally:
            os.close(fd)

    return record
