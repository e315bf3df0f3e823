"""One set of OpenBLAS kernels on every x86-64 grader, so that a verdict does not depend on the CPU.

numpy and scipy's OpenBLAS picks its kernels by CPU, and their round-off can decide a verdict: with
the SkylakeX (AVX-512) kernels scipy's ``sqrtm`` finds a square root of the fid exercise's singular
covariance products, where the Haswell, Zen and Sandybridge kernels return NaN; a ``frechet_distance``
without pytorch-fid's ε·I retry then passes on one grader and fails on the next. :func:`pin` fixes the
Haswell kernels (any x86-64 with AVX2 and FMA runs them) for the grader's process and, through the
environment they inherit, for every kernel and batch slot it starts. torch's own CPU kernels are not
OpenBLAS's and are unaffected.

Imports nothing heavy: it must run before numpy is first imported, which is when OpenBLAS reads it.
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["KERNELS", "VARIABLE", "pin"]

#: OpenBLAS's environment variable, and the kernels it is set to.
VARIABLE, KERNELS = "OPENBLAS_CORETYPE", "Haswell"


def _runs_haswell_kernels() -> bool:
    if os.uname().machine != "x86_64":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def pin(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``OPENBLAS_CORETYPE=Haswell`` in ``environ`` where this CPU runs those kernels and nobody chose
    others (an instructor's own setting is kept); the value in force afterwards, or None."""
    if VARIABLE not in environ and _runs_haswell_kernels():
        environ[VARIABLE] = KERNELS
    return environ.get(VARIABLE)
