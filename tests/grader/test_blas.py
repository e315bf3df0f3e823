"""grader/blas.py: every x86-64 grader uses OpenBLAS's Haswell kernels, so that a verdict that hangs on
round-off (the fid exercise's ε·I retry) is the same on every CPU."""

import os
import subprocess
import sys

import pytest

from grader import blas

haswell_cpu = pytest.mark.skipif(not blas._runs_haswell_kernels(), reason="needs an x86-64 CPU with AVX2 and FMA")


@haswell_cpu
def test_pin_sets_the_haswell_kernels_where_nobody_chose_others():
    environ = {}
    assert blas.pin(environ) == "Haswell" and environ == {"OPENBLAS_CORETYPE": "Haswell"}
    chosen = {"OPENBLAS_CORETYPE": "Zen"}
    assert blas.pin(chosen) == "Zen" and chosen == {"OPENBLAS_CORETYPE": "Zen"}


#: After `grade` started, in a process whose environment chose no kernels: sqrtm of the first singular
#: product of the fid exercise, and what a kernel and a batch slot would inherit.
_PROBE = """
import sys, warnings
from grader import cli
cli.main(["list"])
import numpy as np, scipy.linalg
from grader.exercises import fid
from grader.sandbox.kernel import Limits, kernel_environment
s1, s2 = (m.numpy() for m in fid.retry_covariances(0))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    root = scipy.linalg.sqrtm(s1 @ s2)
print("finite" if np.isfinite(root).all() else "nan", kernel_environment(Limits()).get("OPENBLAS_CORETYPE"), file=sys.stderr)
"""


@haswell_cpu
def test_grade_pins_the_kernels_before_numpy_loads_them_so_sqrtm_fails_where_the_retry_is_checked():
    """Seen failing without the pin on an AVX-512 machine (SkylakeX kernels): "finite None"."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.split()[-2:] == ["nan", "Haswell"]
