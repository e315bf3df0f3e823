"""The memory limit of the kernel's whole process tree, enforced from the grader's side.

``RLIMIT_DATA`` (set in the kernel) bounds what one process may allocate
privately, but not ``MAP_SHARED`` memory, nor what many processes hold
together. :class:`MemoryWatchdog` is a thread in the grader that sums the
*proportional set size* of every process in the kernel's tree — PSS from
``/proc/PID/smaps_rollup``, which counts anonymous, shared (``MAP_SHARED``,
``memfd``, System V) and file-backed pages, each shared page divided among the
processes that map it, so that a forked tree is not counted many times — and
kills the whole tree when the sum passes the limit. The kernel cannot reach this
thread (it lives in another process, outside the kernel's Landlock domain).

PSS is costly to read (``smaps_rollup`` walks every mapping: ~20 ms for a kernel
that has imported torch, on a loaded machine), so each sweep first sums RSS from
``/proc/PID/statm`` (O(1) per process). RSS is never below PSS, so while the RSS
sum is under the limit the tree is too; only above it is PSS summed.

Limits of the method: it samples (every 0.1 s, or more rarely when one sweep is
slow, so that it costs at most ~20 % of a core), so a tree may overshoot the limit
by what it allocates in one interval; memory that no process maps (a tmpfs file, a
``memfd`` that was unmapped) is not counted — ``RLIMIT_FSIZE`` caps each such file.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

__all__ = ["MemoryWatchdog", "namespace_members", "pss_bytes", "rss_bytes", "tree_memory", "tree_pss"]

#: Shortest pause between two sweeps (s): a process touching memory at ~5 GB/s overshoots by ≤ 0.5 GB.
INTERVAL = 0.1
#: A sweep may cost at most this fraction of the time (sweeps of 800 processes take tens of ms).
DUTY = 0.2


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _children(pid: int) -> set[int]:
    """Children of every thread of ``pid`` (a zombie leader's live threads have children too)."""
    found: set[int] = set()
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.update(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def namespace_members(init: int) -> set[int]:
    """``init`` and every process below it: in a PID namespace, every process of the namespace."""
    members, frontier = {init}, [init]
    while frontier:
        for child in _children(frontier.pop()) - members:
            members.add(child)
            frontier.append(child)
    return members


def _rollup(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    total, seen = 0, False
    for line in data.splitlines():
        if line.startswith((b"Pss:", b"SwapPss:")):
            total += int(line.split()[1]) * 1024
            seen = True
    return total if seen else None


def pss_bytes(pid: int) -> int:
    """The PSS (+ swapped PSS) of process ``pid``, in bytes; 0 when it is gone.

    A zombie leader (its main thread exited, others live) has no memory of its own
    in ``/proc/PID``: its threads' memory is read through ``/proc/PID/task/TID``.
    """
    value = _rollup(f"/proc/{pid}/smaps_rollup")
    if value:
        return value
    for tid in _tasks(pid):
        value = _rollup(f"/proc/{pid}/task/{tid}/smaps_rollup")
        if value:
            return value
    return 0


def tree_pss(pids: Iterable[int]) -> int:
    return sum(pss_bytes(pid) for pid in pids)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _statm(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def rss_bytes(pid: int) -> int:
    """The resident set of ``pid`` (an upper bound of its PSS), in bytes; 0 when it is gone."""
    value = _statm(f"/proc/{pid}/statm")
    if value:
        return value
    for tid in _tasks(pid):  # a zombie leader: read through a live thread
        value = _statm(f"/proc/{pid}/task/{tid}/statm")
        if value:
            return value
    return 0


def tree_memory(pids: Iterable[int], limit: int) -> int:
    """The tree's PSS when its RSS passes ``limit``; else its RSS (below the limit either way)."""
    pids = list(pids)
    rss = sum(rss_bytes(pid) for pid in pids)
    return rss if rss <= limit else tree_pss(pids)


class MemoryWatchdog:
    """Kill a process tree when its processes together hold more than ``limit`` bytes.

    Args:
        limit: bytes.
        members: returns the pids of the tree now (called once per sweep).
        kill: kills the whole tree (called once, from the watchdog's thread).
    """

    def __init__(self, limit: int, members: Callable[[], Iterable[int]], kill: Callable[[], None]) -> None:
        self.limit = int(limit)
        self.members = members
        self.kill = kill
        self.tripped = ""  # the message, once the limit was passed
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grader-memory-watchdog", daemon=True)

    def start(self) -> "MemoryWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def message(self) -> str:
        return f"the submission's processes together exceeded the {_size(self.limit)} memory limit"

    def _run(self) -> None:
        pause = INTERVAL
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                total = tree_memory(self.members(), self.limit)
            except Exception:  # noqa: BLE001 -- a vanishing process mid-sweep: try again
                total = 0
            self.peak = max(self.peak, total)
            if total > self.limit:
                self.tripped = self.message()
                try:
                    self.kill()
                finally:
                    return
            spent = time.monotonic() - started
            pause = max(INTERVAL, spent * (1 - DUTY) / DUTY)
            self._stop.wait(pause)


def _size(n: int) -> str:
    gib = n / 1024**3
    if gib >= 1:
        return f"{gib:g} GiB"
    return f"{n / 1024**2:g} MiB"

