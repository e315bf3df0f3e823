"""The audit hook installed in the student's kernel before any student code runs: advice, not a wall.

PEP 578 audit hooks cannot be removed once added, but the policy they consult
is an ordinary object in the student's own interpreter (reachable through
``gc``), and C code (``ctypes``) raises no audit events at all. So this hook is
kept for its messages — it tells an honest student, by name, which call is not
allowed while grading — and the walls are the operating system's: Landlock,
a PID namespace and the memory watchdog (:mod:`grader.sandbox.launch`,
README "Isolation and threat model"). Where those are unavailable, it is the
only fence, and the grader says so. The policy:

* imports of the reference, the solutions and the grader's internals are refused;
* files under the forbidden folders (the reference, the solutions, the grader's
  checks, the feedback folder, the student's original folder) can be neither read
  nor written; other writes are allowed only under the working directory and
  the kernel's own temporary folder;
* starting processes, and signalling any process but itself, is refused.

Each refusal raises :class:`PermissionError` (an ``OSError``, which libraries
that probe optional features already handle) with a message meant for the
student, and is recorded so that the grader can say which call was refused.
"""

from __future__ import annotations

import os
import sys

__all__ = ["Policy", "install", "refusals"]

#: Every refusal so far, as one-line messages; the worker reads and clears it per call.
refusals: list[str] = []

_PROCESS_EVENTS = {
    "subprocess.Popen": "start a process",
    "os.system": "run a shell command",
    "os.exec": "replace the process",
    "os.posix_spawn": "start a process",
    "os.spawn": "start a process",
    "os.fork": "fork the process",
    "os.forkpty": "fork the process",
    "pty.spawn": "start a process",
}
_SIGNAL_EVENTS = {"os.kill", "os.killpg", "signal.pthread_kill"}
_PATH_WRITE_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.rename": (0, 1),
    "os.replace": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.mkdir": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "shutil.move": (0, 1),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Policy:
    """What the student's process may not touch.

    Args:
        forbidden_dirs: folders that may be neither read nor written.
        writable_dirs: the only folders under which files may be written.
        forbidden_modules: top-level or dotted module names whose import is refused.
        allowed_modules: exceptions to ``forbidden_modules`` (the student-facing API).
    """

    def __init__(
        self,
        forbidden_dirs: list[str],
        writable_dirs: list[str],
        forbidden_modules: list[str],
        allowed_modules: list[str],
    ) -> None:
        self.forbidden_dirs = [_real(d) for d in forbidden_dirs]
        self.writable_dirs = [_real(d) for d in writable_dirs]
        self.forbidden_modules = tuple(forbidden_modules)
        self.allowed_modules = frozenset(allowed_modules)
        self.pid = os.getpid()

    def module_refused(self, name: str) -> bool:
        if name in self.allowed_modules:
            return False
        return any(name == m or name.startswith(m + ".") for m in self.forbidden_modules)

    def read_refused(self, path: str) -> bool:
        return _under(path, self.forbidden_dirs)

    def write_refused(self, path: str) -> bool:
        return _under(path, self.forbidden_dirs) or not _under(path, self.writable_dirs)


def _real(path) -> str:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _refuse(message: str) -> None:
    refusals.append(message)
    raise PermissionError(message)


def _opens_for_writing(mode, flags) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def install(policy: Policy) -> None:
    """Add the audit hook that enforces ``policy`` to this process (irreversibly)."""

    def hook(event: str, args: tuple) -> None:
        if event == "import":
            if args and isinstance(args[0], str) and policy.module_refused(args[0]):
                _refuse(f"importing `{args[0]}` is not allowed while grading")
        elif event == "open":
            path = args[0] if args else None
            if isinstance(path, (str, bytes, os.PathLike)):
                real = _real(path)
                if policy.read_refused(real):
                    _refuse(f"reading {real} is not allowed while grading")
                if _opens_for_writing(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None):
                    if policy.write_refused(real):
                        _refuse(f"writing {real} is not allowed while grading (write under the working directory)")
        elif event in _PATH_WRITE_EVENTS:
            for i in _PATH_WRITE_EVENTS[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
                    real = _real(args[i])
                    if policy.write_refused(real):
                        _refuse(f"changing {real} is not allowed while grading")
        elif event in _PROCESS_EVENTS:
            _refuse(f"submissions may not {_PROCESS_EVENTS[event]} while grading ({event})")
        elif event in _SIGNAL_EVENTS:
            pid = args[0] if args else None
            if event == "signal.pthread_kill" or pid not in (0, policy.pid):
                _refuse(f"submissions may not send signals to other processes ({event})")

    sys.addaudithook(hook)
