"""Test-wide settings.

torch's intra-op thread pool oversubscribes small CI machines when the test
process and a grading kernel run at once (one elbo_bpd call went from 0.5 s to
30 s on 2 shared cores); the tests' tensors are small, so one thread is fastest.

Two runs of the suite (README, "Tests"): ``python -m pytest`` is what CI runs, every
test; ``python -m pytest -m "not slow"`` is the contributor's quick loop (under 3
minutes on 2 cores). A test that loops over many seeds is a calibration and is
marked ``calibration``; every calibration is also ``slow`` (added here), so that the
quick loop never runs one by accident.
"""

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every ``calibration`` test is ``slow`` too."""
    for item in items:
        if item.get_closest_marker("calibration") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
