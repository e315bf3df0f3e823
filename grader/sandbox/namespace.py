"""A user + PID namespace for the student's kernel, so that its whole process tree dies as one.

:func:`enter` is called first thing in the kernel's command
(:mod:`grader.sandbox.launch`). It ``unshare``\\ s a new user namespace (so no root
is needed) and a new PID namespace, then forks:

* the child is PID 1 of the new namespace and goes on to become the kernel.
  Every process the submission starts, however it forks, ``setsid``\\ s or
  double-forks, stays inside the namespace; when PID 1 dies Linux SIGKILLs every
  other process in it — zombie leaders' live threads included — and PID 1's
  parent sees it exit only once they are all gone. Killing the kernel's tree is
  one ``kill`` (:func:`grader.sandbox.procs.kill_namespace`), whatever it holds.
* the parent (the *shim*, the process jupyter_client started) stays outside:
  it forwards interrupts to the kernel, waits, and exits the way the kernel did
  (the same status, or the same signal), so the grader's messages ("was killed
  by SIGXCPU") stay true.

Both ask Linux to SIGKILL them when their parent dies (``PR_SET_PDEATHSIG``):
if the grader dies, the shim dies, and with it the namespace. Stdlib only: this
runs before anything else in the kernel.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys

__all__ = ["enter"]

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
#: Signals the shim passes on to the kernel (jupyter_client interrupts with SIGINT).
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def die_with_parent(libc=None) -> None:
    libc = libc or ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def enter() -> str:
    """Move into a new user + PID namespace; "" in the kernel (PID 1), or why it could not.

    Returns only in the kernel: the shim never returns (it exits as the kernel did).
    A non-empty string means no namespace was made and this process goes on as the
    kernel itself (the grader then falls back to killing the tree process by process).
    """
    if not sys.platform.startswith("linux"):
        return "PID namespaces are Linux-only"
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0:
        return f"unshare(CLONE_NEWUSER|CLONE_NEWPID) failed: {os.strerror(ctypes.get_errno())}"
    # The same uid and gid inside as outside (files stay owned by "us"; getpass works).
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    alive_r, alive_w = os.pipe()  # closed only when the shim exits: lets the child see a shim that died early
    # Blocked across the fork, until the shim's handlers are in place: a SIGINT the moment the kernel runs
    # (jupyter_client's interrupt) would otherwise find the shim with the default action, and kill it.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(alive_w)
        die_with_parent(libc)
        if select.select([alive_r], [], [], 0)[0]:  # EOF: the shim died before PDEATHSIG was set
            os._exit(1)
        os.close(alive_r)
        return ""
    os.close(alive_r)
    _shim(pid, mask)


def _shim(child: int, mask: set) -> None:
    """Forward signals to ``child`` and exit as it does (``mask``: the signal mask to restore once the
    handlers are set; a signal that came meanwhile is forwarded then). Never returns."""

    def forward(signum, frame):
        try:
            # jupyter_client signals the whole process group; pass it on only if the kernel left the group.
            if signum != signal.SIGINT or os.getpgid(child) != os.getpgid(0):
                os.kill(child, signum)
        except OSError:
            pass

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            signal.signal(signum, signal.SIG_DFL)  # (SIGKILL's cannot be changed, nor needs to be)
        except (OSError, ValueError):
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
