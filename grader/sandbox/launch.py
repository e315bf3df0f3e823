"""Start the student's kernel: namespace, limits, the grader's code, ipykernel's sockets, then the walls.

``python -m grader.sandbox.launch CONFIG.json -f CONNECTION_FILE`` is the
kernel command the grader gives jupyter_client. In this order it

1. asks to be SIGKILLed if the grader dies, and moves into a new user + PID
   namespace (:mod:`grader.sandbox.namespace`): the kernel is PID 1 of it, so
   killing it kills everything the submission started, at once;
2. sets resource limits: data segment (memory), CPU seconds, file size, no core dumps;
3. loads what the grader needs in the kernel (torch, the worker, the toy problems,
   ipykernel: :func:`preimport`), before any student code can shadow or patch it — and
   before the walls, which leave the grader's own files out of reach (a ``grade batch``
   slot forks its kernels from a process that did this once: :mod:`grader.sandbox.zygote`);
4. installs the audit hook of :mod:`grader.sandbox.guard` (advice: clear messages
   for honest mistakes, not a wall);
5. initialises ipykernel (its sockets are bound now), then applies the Landlock
   walls (:mod:`grader.sandbox.landlock`), writes what is in force to the report
   file the grader reads before any cell runs, and only then starts serving.

CONFIG.json (kept: a restart reads it again) holds ``memory_bytes``, ``cpu_seconds``,
``file_bytes``, ``threads``, the :class:`~grader.sandbox.guard.Policy` arguments,
``pid_namespace`` (bool), ``landlock`` (``{"read": [...], "write": [...], "devices": [...]}``
or null) and ``report`` (the path of the isolation report).
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
    from grader.sandbox import namespace

    try:
        namespace.die_with_parent()
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the grader is already gone
        os._exit(1)


def preimport(threads: int | None, warm: bool = False) -> None:
    """What every kernel loads before any student code can shadow or patch it, and before the walls.

    torch (with its thread count), the sandbox's modules, the analytic toy problems, ipykernel.
    A cold kernel runs this after its namespace and limits (:func:`main`); a ``grade batch``
    slot's zygote runs it once, with ``warm``, and forks each kernel from it
    (:mod:`grader.sandbox.zygote`), so this is the whole of what a forked kernel holds that a
    cold one would not yet.

    ``warm`` (the zygote only) also does what nearly every kernel then does first, once for all of
    them: :func:`grader.sandbox.meta.warm` (the meta machinery the grader's device check needs,
    ~0.5 s a kernel), ``import numpy.random`` (which the worker's first call would import, ~20 ms
    a kernel) and ``import matplotlib.pyplot`` (what every notebook's first cell imports,
    ~0.7 s a kernel; pyplot chooses its backend at the first figure, in the kernel, so the inline
    backend is set up there as in a cold kernel), then one throwaway figure on a bare canvas
    (:func:`grader.sandbox.figures.warm`: the font lookups, the mathtext parser and the PNG writer a
    first figure loads, but not the fonts' open files; ~0.13 s a kernel). A cold kernel does not: its
    boot runs while the grader loads, and is already as long as that.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))

    from grader.sandbox import figures, guard, landlock, meta, models, worker  # noqa: F401 -- before the guard

    models.preload()
    # No debugger: ipykernel imports debugpy (and pydevd, which walks every loaded module) for each kernel it
    # starts, 0.3-0.4 s with torch loaded, for a frontend that never debugs; without it ipykernel says so in
    # kernel_info and runs as before. A notebook's own ``import debugpy`` then fails, as it should here.
    sys.modules.setdefault("debugpy", None)
    from ipykernel.kernelapp import IPKernelApp  # noqa: F401 -- loaded before the guard (it reads nothing forbidden)

    if warm:
        meta.warm()
        if "numpy" in sys.modules:  # torch's: the worker seeds numpy's global generator before each call
            import numpy.random  # noqa: F401 -- ~20 ms a kernel at its first call; a fork reseeds it (zygote._fresh_state)
        try:
            import matplotlib.pyplot  # noqa: F401
        except ImportError:  # the notebook's own import then says so, as in a cold kernel
            pass
        figures.warm()


def main(argv: list[str], preimported: bool = False) -> None:
    """The kernel: ``argv`` is ``CONFIG.json`` then ipykernel's arguments.

    ``preimported``: called in a kernel forked by the zygote, which did :func:`preimport`
    and already asked to die with the slot; everything else is the same code.
    """
    config_path, kernel_args = argv[0], argv[1:]
    if not preimported:
        _die_with_parent()
    with open(config_path) as f:
        config = json.load(f)
    report = {"pid_namespace": False}
    if config.get("pid_namespace"):
        from grader.sandbox import namespace

        why = namespace.enter()  # from here on, this is PID 1 of a new namespace (or no namespace: why)
        report["pid_namespace"] = not why
        if why:
            report["pid_namespace_error"] = why
    _set_limits(config)
    # Opened now, written once the walls are up: neither the guard nor the walls will let it be opened later.
    report_file = open(config["report"], "w") if config.get("report") else None

    if not preimported:
        preimport(config.get("threads"))
    from grader.sandbox import guard

    os.environ["GRADER_SANDBOX"] = "1"
    guard.install(
        guard.Policy(
            forbidden_dirs=config["forbidden_dirs"],
            writable_dirs=config["writable_dirs"],
            forbidden_modules=FORBIDDEN_MODULES,
            allowed_modules=ALLOWED_GRADER_MODULES,
        )
    )
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(kernel_args)  # binds the sockets: the walls below need not allow making them
    _raise_walls(config, report, report_file)
    app.start()


def _raise_walls(config: dict, report: dict, out) -> None:
    """Apply the Landlock walls and write what is in force to ``out`` (opened before them), closing it."""
    from grader.sandbox import landlock

    walls = config.get("landlock")
    if walls:
        report.update(landlock.restrict(walls["read"], walls["write"], walls.get("devices", []), walls.get("list", [])))
    else:
        report.update(landlock_abi=landlock.abi(), filesystem=False, network=False, signals=False)
    if out is not None:
        with out:
            json.dump(report, out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:  # a grade batch slot's fork server (grader.sandbox.zygote), FD THREADS
        from grader.sandbox import zygote

        zygote.serve(int(sys.argv[2]), lambda: preimport(int(sys.argv[3]) or None, warm=True), main)
    if sys.argv[1:2] == ["--slot"]:  # a grade batch slot started pristine, which forks its zygote: THREADS
        from grader.sandbox import zygote

        sys.exit(zygote.pristine_slot(int(sys.argv[2]) or None, preimport, main))
    main(sys.argv[1:])
