"""What the operating system walls the kernel in with, as the grader plans it and as the kernel reports it.

The grader's side of :mod:`grader.sandbox.launch`: :func:`plan` says which paths
the kernel may read and write (handed to :mod:`grader.sandbox.landlock` in the
kernel's config), :func:`read_report` reads back what the kernel put in force
before any student code ran, and :func:`describe` / :func:`complete` turn that
into the one-line terminal warning and the ``--require-isolation`` decision.

The report (``extra_data.isolation`` in results.json)::

    {"landlock_abi": 7, "filesystem": true, "network": true, "signals": true,
     "pid_namespace": true, "memory": "watchdog"}
"""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path

from grader.errors import GraderError

__all__ = ["IsolationError", "Walls", "complete", "describe", "plan", "read_report", "shortfall", "system_read_paths"]

#: System folders the kernel reads (and executes from): the C library, shared libraries, torch's
#: CPU feature probes (/proc, /sys). /proc shows other processes' names, but their memory,
#: environment, file descriptors and working folders need ptrace rights, which Landlock denies
#: across domains.
_SYSTEM_READ = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/proc", "/sys"]
#: What the kernel needs of /etc (dynamic loader, users, time zone, fonts, TLS roots): not all of
#: /etc, which may hold secrets readable by the grader's user.
_ETC_READ = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group",
             "nsswitch.conf", "host.conf", "hosts", "mime.types", "fonts", "ssl/certs", "ca-certificates",
             "os-release", "matplotlibrc", "locale.alias"]
#: Seconds the grader waits for the kernel's namespace to be gone after its one SIGKILL. The kill is
#: one signal whatever the tree holds, but Linux still tears down each process's memory: 800 forks of
#: a kernel that had imported torch took 10.7 s to vanish on 2 cores at load 7 (0.27 s for 800 small
#: Python processes). Grading ends within --timeout plus one interrupt grace, one kernel start and this.
TEARDOWN_GRACE = 30.0
DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]


class IsolationError(GraderError):
    """``--require-isolation`` was given and the operating system's walls are not all in force."""


def python_read_paths() -> list[str]:
    """The Python installation this grader runs on: prefixes and site-packages folders."""
    paths = {sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix}
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    return sorted(p for p in paths if p and os.path.isdir(p))


def system_read_paths() -> list[str]:
    return [p for p in _SYSTEM_READ + [f"/etc/{e}" for e in _ETC_READ] if os.path.exists(p)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _minus(roots: list[str], forbidden: list[str]) -> tuple[list[str], list[str]]:
    """Readable paths covering ``roots`` but nothing under ``forbidden``, and the folders only listed.

    A root that holds a forbidden path is replaced by its entries, recursively: the
    root itself may then only be listed (Landlock READ_DIR: names, not contents).
    """
    readable, listed = [], []
    stack = sorted({os.path.realpath(r) for r in roots})
    while stack:
        root = stack.pop()
        if any(_under(root, f) for f in forbidden):
            continue
        if not any(_under(f, root) for f in forbidden):
            readable.append(root)
            continue
        listed.append(root)
        try:
            stack.extend(os.path.join(root, name) for name in os.listdir(root))
        except OSError:
            continue
    return sorted(readable), sorted(listed)


def plan(workdir: Path, tmpdir: Path, forbidden: list[Path]) -> dict:
    """The kernel's Landlock rules: read the Python installation and the system minus ``forbidden``.

    ``forbidden`` should name the grader's whole package as well as the answers: the
    kernel loads every grader module it runs before the walls go up.
    """
    banned = [os.path.realpath(p) for p in forbidden]
    readable, listed = _minus(python_read_paths() + system_read_paths(), banned)
    return {"read": readable, "list": listed, "write": [str(workdir), str(tmpdir)], "devices": DEVICES}


def read_report(path: Path, memory: str) -> dict:
    """What the kernel reported in force (written before any student code ran)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    keys = ("landlock_abi", "filesystem", "network", "signals", "pid_namespace")
    clean = {k: report.get(k, 0 if k == "landlock_abi" else False) for k in keys}
    clean["memory"] = memory
    for key in ("error", "pid_namespace_error"):
        if report.get(key):
            clean[key] = str(report[key])[:300]
    return clean


def complete(isolation: dict) -> bool:
    """Every wall: file system, network, signals (Landlock ABI ≥ 6), a PID namespace, a memory watchdog."""
    return all(isolation.get(k) for k in ("filesystem", "network", "signals", "pid_namespace")) \
        and isolation.get("memory") == "watchdog"


def shortfall(isolation: dict) -> str:
    """What is missing and why, e.g. "file system, network, signals: Landlock ABI 0 on darwin"; "" when nothing."""
    missing = [name for key, name in (("filesystem", "file system"), ("network", "network"),
                                      ("signals", "signals"), ("pid_namespace", "process namespace"))
               if not isolation.get(key)]
    if isolation.get("memory") != "watchdog":
        missing.append("whole-tree memory limit")
    if not missing:
        return ""
    why = isolation.get("error") or isolation.get("pid_namespace_error") or \
        f"Landlock ABI {isolation.get('landlock_abi', 0)} on {sys.platform}"
    return f"{', '.join(missing)}: {why}"


def describe(isolation: dict) -> str:
    """The one-line terminal warning when a wall is missing ("" when everything is in force)."""
    missing = shortfall(isolation)
    if not missing:
        return ""
    return (f"grader: warning: the kernel is not confined ({missing}); the in-process guard is advice, "
            "not a wall — use --require-isolation for summative grading")

class Walls:
    """The walls of one :class:`~grader.sandbox.kernel.SandboxKernel`, from the grader's side.

    Plans the kernel's Landlock rules and private temporary folder, and once the
    kernel is up reads back what is in force (:attr:`isolation`), finds the PID 1
    of its namespace and starts the memory watchdog; :meth:`kill` kills the whole
    namespace with one signal.

    Args:
        workdir: the kernel's working folder (writable).
        private: the grader's private folder for this kernel (config, sockets, report).
        forbidden: what the kernel may not read; the grader's own package is added.
        memory_bytes: the memory limit of the whole tree.
    """

    def __init__(self, workdir: Path, private: Path, forbidden: list[str], memory_bytes: int) -> None:
        import grader

        self.workdir = Path(workdir)
        self.tmp = self.workdir / ".tmp"
        self.report_path = Path(private) / "isolation.json"
        self.forbidden = [Path(f) for f in forbidden] + [Path(grader.__file__).resolve().parent, Path(private)]
        self.memory_bytes = memory_bytes
        self.isolation: dict = {}
        self.init: int | None = None  # the namespace's PID 1, as the grader sees it
        self.watchdog = None
        self.tripped = ""

    def config(self) -> dict:
        """Entries of the kernel's launch config (see :mod:`grader.sandbox.launch`)."""
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        linux = sys.platform.startswith("linux")
        return {"pid_namespace": linux, "report": str(self.report_path),
                "landlock": plan(self.workdir, self.tmp, self.forbidden) if linux else None}

    def writable(self) -> list[str]:
        return [str(self.workdir), str(self.tmp)]

    def environment(self) -> dict:
        tmp = str(self.tmp)
        _seed_matplotlib(self.tmp / "matplotlib")
        return {"TMPDIR": tmp, "TEMP": tmp, "TMP": tmp, "MPLCONFIGDIR": str(self.tmp / "matplotlib"),
                "XDG_CACHE_HOME": str(self.tmp / "cache")}

    def started(self, shim: int | None) -> None:
        """The kernel is up (it answered): read its report, find its namespace, watch its memory."""
        from grader.sandbox import procs, watchdog

        self.stopped()
        self.tripped = ""
        self.init = procs.namespace_init(shim) if shim else None
        if self.init is not None:
            init = self.init
            members = lambda: watchdog.namespace_members(init)  # noqa: E731
            kill = lambda: procs.kill_namespace(init)  # noqa: E731
            memory = "watchdog"
        elif shim:
            members = lambda: procs.descendants(shim, shim) | {shim}  # noqa: E731
            kill = lambda: procs.kill_tree(shim, session=shim)  # noqa: E731
            memory = "watchdog (process tree; a process that leaves the tree is not counted)"
        else:
            members, kill, memory = None, None, "none"
        self.isolation = read_report(self.report_path, memory)
        if self.init is None:
            self.isolation["pid_namespace"] = False  # whatever the kernel said: the grader sees none
        if members is not None and self.memory_bytes:
            self.watchdog = watchdog.MemoryWatchdog(self.memory_bytes, members, kill).start()

    def kill(self) -> None:
        """Kill every process of the kernel's namespace at once (nothing without a namespace)."""
        from grader.sandbox import procs

        if self.init is not None:
            procs.kill_namespace(self.init)

    def stopped(self) -> None:
        """Stop watching; remember whether the watchdog had killed the tree (:attr:`tripped`)."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.tripped = self.watchdog.tripped or self.tripped
            self.watchdog = None

    def exit_reason(self) -> str:
        """Why the kernel was killed from outside, when it was ("" otherwise)."""
        return (self.watchdog.tripped if self.watchdog is not None else "") or self.tripped


_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from grader.sandbox import landlock, namespace
why = namespace.enter()
report = landlock.restrict([], [])
report["pid_namespace"] = not why
if why:
    report["pid_namespace_error"] = why
print(json.dumps(report), flush=True)
"""


def probe(timeout: float = 30.0) -> dict:
    """What the walls would be here, without a kernel: a throwaway process enters them and says.

    For ``grade batch --require-isolation``, which refuses before grading anyone.
    """
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, root], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        report = json.loads(done.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        report = {"error": f"the isolation probe failed ({type(exc).__name__})"}
    report["memory"] = "watchdog" if report.get("pid_namespace") else "watchdog (process tree)"
    return report


def require(isolation: dict) -> None:
    """Raise :class:`IsolationError` (one line) unless every wall is in force."""
    if not complete(isolation):
        raise IsolationError(f"--require-isolation: not grading, the kernel cannot be confined here "
                             f"({shortfall(isolation)})")


def matplotlib_cache() -> Path:
    """The grader's own matplotlib folder (its font list), which every kernel's private one is seeded from."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "diffusion-course-grader" / "matplotlib"


def _seed_matplotlib(target: Path) -> None:
    """Give the kernel's private matplotlib folder a copy of the grader's own font cache.

    Each kernel's MPLCONFIGDIR is private (one student must not poison the next one's
    matplotlib), so without a seed every kernel that plots rebuilds matplotlib's font
    list — seconds on an idle machine, tens of seconds on a loaded one. The grader
    builds it once, in a process of its own that runs no student code, and copies it.
    Best effort: without matplotlib, or on any error, the kernel builds its own.
    """
    import shutil
    import subprocess

    cache = matplotlib_cache()
    try:
        if not list(cache.glob("fontlist-*.json")):
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], timeout=300,
                           env=dict(os.environ, MPLCONFIGDIR=str(cache)), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target.mkdir(parents=True, exist_ok=True)
        for fontlist in cache.glob("fontlist-*.json"):
            shutil.copyfile(fontlist, target / fontlist.name)
    except (OSError, subprocess.SubprocessError):
        pass
