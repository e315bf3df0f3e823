"""Find and kill every process a submission started, wherever it went.

Where the kernel runs in a PID namespace of its own (:mod:`grader.sandbox.namespace`),
:func:`kill_namespace` kills its PID 1 and Linux kills everything else in the
namespace at once: one signal, whatever the tree holds (800 orphans, zombie
leaders, double forks). The rest of this module is the fallback for where there
is no such namespace (not Linux, user namespaces disabled):

The kernel starts in a session of its own, so ``killpg`` reaches most of what it
spawns; a process that calls ``setsid`` or double-forks escapes that. On Linux the
grader marks itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``):
orphans of the kernel are then re-parented to the grader instead of to init, and
:func:`reap` finds them as the grader's own new children.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

__all__ = ["become_subreaper", "children", "descendants", "kill_namespace", "kill_tree", "namespace_init", "reap"]

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); True when it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, session id), from /proc; empty where /proc is absent."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[0] != "Z":
            table[int(name)] = (int(fields[1]), int(fields[3]))
    return table


def children(pid: int) -> set[int]:
    return {p for p, (parent, _) in _process_table().items() if parent == pid}


def descendants(pid: int, session: int | None = None) -> set[int]:
    """Every live descendant of ``pid``, plus every member of ``session`` when given."""
    table = _process_table()
    found = {p for p, (_, sid) in table.items() if session is not None and sid == session}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (pp, _) in table.items():
            if pp == parent and p not in found:
                found.add(p)
                frontier.append(p)
    found.discard(os.getpid())
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_for(pids: set[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our own children (no zombies).

    Only these pids: a blanket ``waitpid(-1)`` would steal statuses that other
    code in this process (jupyter_client's ``Popen``) is waiting for.
    """
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def kill_tree(root: int, *, session: int | None = None) -> None:
    """SIGKILL ``root``, its descendants and its session, until none is left."""
    for _ in range(20):
        pids = descendants(root, session)
        if _alive(root):
            pids.add(root)
        if not pids:
            break
        _kill(pids)
        time.sleep(0.02)
        _wait_for(pids)


def namespace_init(shim: int) -> int | None:
    """The kernel's PID 1 (outside pid), when ``shim`` is the shim of a PID namespace; else None.

    The shim forks exactly one child, the namespace's init, and nothing else; a
    process whose PID namespace is the grader's is no namespace init.
    """
    try:
        with open(f"/proc/{shim}/task/{shim}/children", "rb") as f:
            kids = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        kids = sorted(children(shim))
    if len(kids) != 1:
        return None
    try:
        if os.stat(f"/proc/{kids[0]}/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino:
            return None
    except OSError:
        return None
    return kids[0]


def kill_namespace(init: int) -> None:
    """SIGKILL the PID 1 of a namespace: Linux then kills every process in it."""
    try:
        os.kill(init, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap(known_children: set[int]) -> None:
    """Kill our children that are not in ``known_children`` (re-parented orphans), and theirs."""
    for _ in range(20):
        strays = children(os.getpid()) - known_children
        if not strays:
            break
        for pid in strays:
            kill_tree(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
