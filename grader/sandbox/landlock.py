"""Landlock walls for the student's kernel, through ``ctypes`` (Linux ≥ 5.13; no root needed).

:func:`restrict` builds one Landlock ruleset and applies it to the calling thread
and everything it starts afterwards (threads created later, forks, ``exec``);
it cannot be lifted, from Python or from C. It is called once in the kernel,
after ipykernel has bound its sockets and before any student code runs
(:mod:`grader.sandbox.launch`). What the ruleset handles depends on the
kernel's Landlock ABI:

* file system (ABI ≥ 1; REFER ≥ 2, TRUNCATE ≥ 3, IOCTL_DEV ≥ 5): read and execute
  only beneath the ``read`` paths, write only beneath the ``write`` paths;
  everything else, including the project checkout, is out of reach;
* network (ABI ≥ 4): TCP bind and connect are handled and no port is granted;
* scopes (ABI ≥ 6): signals and abstract unix sockets reach only processes of
  the same domain (the kernel and its descendants), never the grader.

This module imports nothing but the standard library: it runs in the kernel.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

__all__ = ["abi", "restrict", "READ", "WRITE", "DEVICE"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

#: Rights that apply to a regular file (a rule on a file may grant only these).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
#: Everything but making device nodes (which needs a capability anyway).
WRITE = READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_SYM \
    | REFER | TRUNCATE
DEVICE = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _handled_fs(version: int) -> int:
    rights = (1 << 13) - 1  # EXECUTE .. MAKE_SYM: ABI 1
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(read: list[str], write: list[str], devices: list[str] = (), listed: list[str] = ()) -> dict:
    """Apply the walls to this process; what is in force, as a dict (see module docstring).

    Args:
        read: paths (folders or files) that may be read and executed beneath.
        write: folders beneath which anything but device nodes may be made, written, removed.
        devices: device files that may be opened for reading and writing (``/dev/null``).
        listed: folders whose entries may be listed (not read): a folder that holds both
            what the kernel needs and what it may not read, e.g. a site-packages holding
            the grader; its readable entries are then among ``read``.

    Paths that do not exist are skipped. On failure nothing is applied, and the
    dict says ``{"landlock_abi": N, "filesystem": False, ..., "error": "..."}``.
    """
    version = abi()
    report = {"landlock_abi": version, "filesystem": False, "network": False, "signals": False}
    if version < 1:
        report["error"] = "Landlock is not available in this kernel"
        return report
    libc = _libc()
    handled = _handled_fs(version)
    attr = _RulesetAttr(handled, _NET_BIND_TCP | _NET_CONNECT_TCP if version >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if version >= 6 else 0)
    size = 8 if version < 4 else 16 if version < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        report["error"] = f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}"
        return report
    try:
        for paths, rights in ((read, READ), (write, WRITE), (devices, DEVICE), (listed, READ_DIR)):
            for path in paths:
                error = _add(libc, ruleset, path, rights & handled)
                if error:
                    report["error"] = error
                    return report
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            report["error"] = f"PR_SET_NO_NEW_PRIVS failed: {os.strerror(ctypes.get_errno())}"
            return report
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            report["error"] = f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}"
            return report
    finally:
        os.close(ruleset)
    report.update(filesystem=True, network=version >= 4, signals=version >= 6)
    return report


def _add(libc, ruleset: int, path: str, rights: int) -> str:
    """Grant ``rights`` beneath ``path``; an error message, or "" (also for a path that does not exist)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            return f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    return ""
