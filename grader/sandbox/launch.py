"""Start the student's kernel: limits first, then the guard, then ipykernel.

``python -m grader.sandbox.launch CONFIG.json -f CONNECTION_FILE`` is the
kernel command the grader gives jupyter_client. In this order it

1. sets resource limits: data segment (memory), CPU seconds, file size, no core dumps;
2. loads what the grader needs in the kernel (torch, the worker, the toy problems),
   before any student code can shadow or patch it;
3. installs the audit hook of :mod:`grader.sandbox.guard`, which cannot be removed;
4. hands over to ipykernel.

CONFIG.json (kept: a restart reads it again) holds ``memory_bytes``, ``cpu_seconds``, ``file_bytes``, ``threads`` and the
:class:`~grader.sandbox.guard.Policy` arguments.
"""

from __future__ import annotations

import json
import os
import sys

#: What the student may import from the grader: the notebook-facing ``check``.
ALLOWED_GRADER_MODULES = ["grader", "grader._version"]
FORBIDDEN_MODULES = ["reference", "solutions", "grader"]


def _set_limits(config: dict) -> None:
    import resource

    def cap(which: int, value: int | None) -> None:
        if not value:
            return
        soft, hard = resource.getrlimit(which)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_DATA, config.get("memory_bytes"))
    cap(resource.RLIMIT_CPU, config.get("cpu_seconds"))
    cap(resource.RLIMIT_FSIZE, config.get("file_bytes"))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this kernel if the grader dies first (no orphaned kernels)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the grader is already gone
        os._exit(1)


def main(argv: list[str]) -> None:
    config_path, kernel_args = argv[0], argv[1:]
    _die_with_parent()
    with open(config_path) as f:
        config = json.load(f)
    _set_limits(config)

    threads = config.get("threads")
    import torch

    if threads:
        torch.set_num_threads(int(threads))

    from grader.sandbox import guard, models, worker  # noqa: F401 -- loaded before the guard on purpose

    models.preload()
    os.environ["GRADER_SANDBOX"] = "1"
    guard.install(
        guard.Policy(
            forbidden_dirs=config["forbidden_dirs"],
            writable_dirs=config["writable_dirs"],
            forbidden_modules=FORBIDDEN_MODULES,
            allowed_modules=ALLOWED_GRADER_MODULES,
        )
    )
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=kernel_args)


if __name__ == "__main__":
    main(sys.argv[1:])
