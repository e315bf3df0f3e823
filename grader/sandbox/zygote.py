"""A fork server ("zygote") for a ``grade batch`` slot: each submission's kernel forked, pre-imported.

A cold kernel (``python -m grader.sandbox.launch CONFIG -f CONNECTION``) spends about 2 s
of CPU importing Python, torch, the sandbox's modules and ipykernel before it runs anything.
A batch slot (:func:`grader.batch.serve_slot`) instead starts one zygote: a process that
imports exactly what :func:`grader.sandbox.launch.preimport` imports (nothing of the
grader's checks, the reference or the answers: its memory is what every cold kernel holds
before its walls), runs no student code, and waits on a socket only the slot holds.
For each request ``{"config", "argv", "cwd", "env", "parent"}`` it forks:

* the child (``C``) closes the control socket and every other inherited descriptor
  (standard streams on ``/dev/null``, as jupyter_client gives a cold kernel), changes to
  the kernel's folder, replaces the environment, resets what a fork shares but a cold
  start would not (torch's CPU generator, which torch seeds from the OS at its import,
  numpy's global generator, ``tempfile``'s cached folder; Python's ``random`` reseeds
  itself at fork), and forks again;
* the grandchild (``G``) starts a session of its own (jupyter_client's
  ``start_new_session``), reports its pid, waits until ``C`` has exited and it has been
  re-parented to the slot (a child subreaper), asks to be SIGKILLed with it
  (``PR_SET_PDEATHSIG``), checks its parent *is* the slot, stops itself until the slot,
  holding the zygote's answer, continues it (so that a kernel whose answer was lost never
  competes with the cold kernel launched instead), and then runs the rest of
  :func:`grader.sandbox.launch.main` — namespace, limits, guard, ipykernel, walls —
  the same code a cold kernel runs. ``G`` becomes the namespace's shim exactly as a cold
  kernel's process does, so the grader's side (:class:`grader.sandbox.isolation.Walls`)
  sees the same tree.

``unshare(CLONE_NEWUSER)`` refuses a multithreaded process, and a fork keeps only the
forking thread: the zygote refuses a request (the slot then launches a cold kernel) unless
``/proc/self/task`` holds one thread (with ``--threads`` above 1 torch starts threads at its
import: such a zygote is closed at once and every kernel starts cold). A zygote that died, refused or did not answer is
never waited for: that submission's kernel is launched cold, and the slot starts a fresh
zygote for the next one (:class:`Zygote`). Only a zygote still importing is waited for
(:data:`READY_TIMEOUT`): a cold launch would do those same imports again.

Known differences from a cold kernel, none a channel between submissions: every kernel of
one zygote shares its ``PYTHONHASHSEED`` (string hashes, set order) and its address-space
layout, and its CPU-time limit does not count the imports it did not do. A zygote forked by a
pristine slot (below) shares those two with its slot as well: a kernel can tell the slot's hash
seed and where the slot's libraries are mapped, which only matters to an attack on a memory-safety
bug in the slot's own parsing of what the kernel sends (``GRADER_PRISTINE_SLOT=0`` gives each its own).

The zygote runs as ``python -m grader.sandbox.launch --zygote FD THREADS`` (so that a forked
kernel's ``__main__`` is launch.py's, as a cold one's); :func:`serve` is its body. A slot
started pristine (:func:`pristine_slot`, ``python -m grader.sandbox.launch --slot THREADS``, what
``grade batch`` starts where it can) does the zygote's imports itself and forks its first zygote
from itself (:meth:`Zygote.fork_here`) before it loads anything of the grader; a zygote started
again after that one died is a cold one.
Stdlib only on the zygote's side, before :func:`grader.sandbox.launch.preimport`.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import time

__all__ = ["Zygote", "ZygoteProcess", "environment", "pristine_slot", "serve"]

#: Seconds the slot waits for the zygote to answer a fork request. A fork of a process holding
#: torch (~400 MB mapped, copy-on-write) takes milliseconds, and two more forks and one exit add
#: little; 10 s covers a machine loaded far past its cores (on 2 cores at load 6 the answers came
#: in under 50 ms). A zygote slower than this is treated as dead: cold launch, fresh zygote.
ANSWER_TIMEOUT = 10.0
#: Seconds a kernel's launch waits for a zygote still doing its imports (only a slot's first kernel, or the
#: second after a restart, finds it so): those imports are the very ones a cold kernel would do instead, so
#: waiting costs no more CPU than a cold launch and saves a whole one — on 2 shared cores CPU is the cost.
#: 30 s is 15 times their ~2 s at load 1; past it the kernel starts cold and the zygote is used later.
READY_TIMEOUT = 30.0
#: Seconds a forked kernel waits to be re-parented to the slot after its first parent exited
#: (immediate in practice: the exit re-parents it). Past this it exits and the slot sees it gone.
REPARENT_TIMEOUT = 10.0
#: Longest request or answer line on the control socket (a kernel's environment and paths).
MAX_LINE = 1 << 20

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_MAIN = None  # launch.main, in the zygote (serve)


# ----------------------------------------------------------------------------------------- the zygote

def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0  # no /proc: cannot tell, so refuse


def _read_line(fd: int, buffer: bytearray) -> bytes | None:
    """One line from ``fd`` (blocking); None at the end of input or past :data:`MAX_LINE`."""
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk or len(buffer) > MAX_LINE:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _become_zygote(fd: int) -> None:
    """In a pristine slot's fork: the process state ``Zygote.start``'s Popen gives a zygote (standard streams on
    /dev/null, only the control socket ``fd`` inherited, started in /)."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.closerange(3, fd)  # the slot's pipes to the batch are 0-2 (now /dev/null); anything else the imports left
    os.closerange(fd + 1, _max_fd())
    os.chdir("/")
    sys.path[0] = "/"  # `python -m` in / puts / first; each forked kernel puts its own folder there again


def serve(fd: int, preimport, main) -> None:
    """The zygote's loop: ``preimport()`` once, then one fork per request read from ``fd``. Never returns.

    ``main(argv, preimported=True)`` is launch.py's ``main``, run in each forked kernel.
    """
    global _MAIN
    _MAIN = main
    _die_with_parent()  # the slot's death ends it (its end of the socket closing does too)
    slot = os.getppid()
    preimport()
    # Every object the imports made goes to the collector's permanent generation: a kernel's collections then
    # walk only its own objects. Without this a forked kernel's first full collection writes to every object
    # of torch's heap, so the kernel copies most of the zygote's pages (copy-on-write) and pays the walk.
    gc.collect()
    gc.freeze()
    _write_all(fd, json.dumps({"ready": os.getpid(), "threads": _threads()}).encode() + b"\n")
    buffer = bytearray()
    while True:
        line = _read_line(fd, buffer)
        if line is None:
            os._exit(0)
        try:
            request = json.loads(line)
            answer = _fork(fd, request) if os.getppid() == slot else {"error": "the slot is gone"}
        except Exception as exc:  # noqa: BLE001 -- any failure is a refusal: the slot launches cold
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _write_all(fd, json.dumps(answer).encode() + b"\n")


def _fork(control: int, request: dict) -> dict:
    """Fork the kernel of ``request``; ``{"pid": G}`` once G is the slot's child, or ``{"error": why}``."""
    threads = _threads()
    if threads != 1:
        return {"error": f"the zygote holds {threads} threads: a fork would not be a clean kernel"}
    argv, cwd, env, parent = request["argv"], request["cwd"], request["env"], int(request["parent"])
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(cwd, str)
            and isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        return {"error": "malformed request"}
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:  # C
        try:
            os.close(report_r)
            _child(control, report_w, argv, cwd, env, parent)
        finally:
            os._exit(70)  # never returns on success; any failure: the slot sees no pid, launches cold
    os.close(report_w)
    data = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while time.monotonic() < deadline:  # until EOF: C and G have both closed their end
        ready, _, _ = select.select([report_r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(report_r, 64)
        if not chunk:
            break
        data += chunk
    os.close(report_r)
    _, status = os.waitpid(child, 0)  # C exits right after forking G: G is now the slot's
    if not data.strip().isdigit() or os.waitstatus_to_exitcode(status) != 0:
        return {"error": f"the forked kernel did not start (status {os.waitstatus_to_exitcode(status)})"}
    return {"pid": int(data)}


def _child(control: int, report: int, argv: list[str], cwd: str, env: dict, parent: int) -> None:
    """In C: a clean process state for the kernel, then fork G and exit (G is re-parented to the slot)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, report)  # the control socket and anything else inherited: only the report pipe stays
    os.closerange(report + 1, _max_fd())
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # What a cold start computes from its folder and arguments: `python -m` puts the folder first on sys.path.
    sys.path[0] = os.getcwd()
    sys.argv[1:] = argv
    _fresh_state()
    first_parent = os.getpid()  # C's: read by G after the fork, C may already be gone (G's parent: the slot)
    kernel = os.fork()
    if kernel == 0:  # G
        os.setsid()  # its own session and process group, as jupyter_client's start_new_session gives it
        _write_all(report, str(os.getpid()).encode())
        os.close(report)
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() == first_parent:  # C exits at once; its exit re-parents G to the slot (a subreaper)
            if time.monotonic() > deadline:
                os._exit(71)
            time.sleep(0.001)
        _die_with_parent()  # only now: PDEATHSIG fires at re-parenting too
        if os.getppid() != parent:  # not the slot's (not a subreaper, or already gone): no kernel
            os._exit(72)
        # Wait for the slot's go-ahead (SIGCONT), sent once it has the zygote's answer and this process is its
        # kernel: a G whose answer was lost (the zygote died first) stays stopped, binds nothing of the
        # connection file the slot's cold launch then uses, and is killed by the slot as a stray.
        os.kill(os.getpid(), signal.SIGSTOP)
        for name in ("grader.sandbox.zygote",):  # the kernel need not find the zygote's module
            sys.modules.pop(name, None)
        package = sys.modules.get("grader.sandbox")
        if package is not None and hasattr(package, "zygote"):
            delattr(package, "zygote")
        try:
            _MAIN(argv, preimported=True)  # launch.py's main, after its imports
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(0)
    os.close(report)
    os._exit(0)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def _fresh_state() -> None:
    """Reset what a fork copies from the zygote but a cold start makes anew."""
    import tempfile

    tempfile.tempdir = None  # read again from TMPDIR (the kernel's own folder)
    tempfile._name_sequence = None  # its generator: drawn again
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()  # torch seeds its CPU generator from the OS at start: each kernel its own
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # the legacy global generator, from the OS's entropy as at numpy's import
    # Python's `random` reseeds itself in every fork's child (random.py registers it with os.register_at_fork).
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None:  # its folders are memoised at import: read again, from the kernel's MPLCONFIGDIR
        for name in ("get_configdir", "get_cachedir"):
            _forget(getattr(matplotlib, name, None))


def _forget(memoised) -> None:
    """Make a function memoised by matplotlib's ``_logged_cached`` compute its value again at its next call."""
    if memoised is None or not getattr(memoised, "__closure__", None):
        return
    cells = dict(zip(memoised.__code__.co_freevars, memoised.__closure__))
    if "called" in cells:
        cells["called"].cell_contents = False


def pristine_slot(threads: int | None, preimport, main) -> int:
    """A ``grade batch`` slot started pristine: ``python -m grader.sandbox.launch --slot THREADS``, in its
    zygote's environment (:func:`environment`, from the slot's own: the batch sends that in its first message).

    It does what its zygote would do first (``preimport(threads, warm=True)``: torch, ipykernel, pyplot, the meta
    and figure warm-ups), forks that zygote from here (:meth:`Zygote.fork_here`), and only then imports the
    grader and serves as a slot (:func:`grader.batch.serve_slot`, which puts the slot's environment back). A slot
    and its zygote so share one interpreter's start and imports (~2 s of CPU each, twice a batch), and the
    zygote is the one a cold start makes: nothing of the grader is loaded before the fork. (Its zygote and the
    kernels forked from it keep this command line in ``/proc``, hence nothing on it but the torch threads.)
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # before any fork: see Zygote
    preimport(threads, warm=True)
    zygote = Zygote.fork_here(threads, main)  # None: more than one thread; the slot then starts one cold

    from grader import batch

    return batch.serve_slot(zygote=zygote)


# ----------------------------------------------------------------------------------------- the slot's side

class ZygoteProcess:
    """The ``subprocess.Popen`` that jupyter_client and the grader use, for a kernel forked by the zygote.

    The kernel's process is this process's child (re-parented: the slot is a subreaper), so
    ``waitpid`` works on it as on a Popen's; :meth:`poll` and :meth:`wait` give the same
    return codes (negative: the signal) and :meth:`send_signal` never signals a reaped pid.
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (procs.kill_tree): gone, status unknown, as Popen says
                self.returncode = 0
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: Environment variables read once, at the interpreter's or torch's start: a kernel forked from a
#: zygote started with other values would not be the kernel a cold start makes. A request whose
#: values differ is launched cold.
_STARTUP_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "LD_", "MALLOC_", "GRADER_MEMORY", "TORCH", "CUDA", "PYTORCH",
                     "MPLBACKEND", "OPENBLAS")


def environment(limits, base: dict | None = None) -> dict:
    """The zygote's environment: every kernel's (:func:`grader.sandbox.kernel.kernel_environment`, from the
    grader's environment ``base``, default this process's), with MPLCONFIGDIR the grader's own matplotlib folder,
    whose font list each kernel's private folder is seeded from: matplotlib, which the zygote imports, reads it
    there (a forked kernel reads its own folder again)."""
    from grader.sandbox import isolation, kernel

    return {**kernel.kernel_environment(limits, base=base), "MPLCONFIGDIR": str(isolation.matplotlib_cache())}


def _startup(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_PREFIXES)}


class Zygote:
    """The slot's handle on its zygote: start it, ask it for kernels, restart it when it died.

    Args:
        env: the kernel's base environment (the zygote's imports see it).
        threads: torch threads of the kernels (``Limits.threads``): the zygote sets them at import.
    """

    #: The zygote's command, before its socket's descriptor and the torch threads.
    command = [sys.executable, "-m", "grader.sandbox.launch", "--zygote"]

    def __init__(self, env: dict, threads: int | None) -> None:
        self._fields(env, threads)
        self.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @classmethod
    def fork_here(cls, threads: int | None, main) -> "Zygote | None":
        """This process's own fork, as its zygote; None when it holds more than one thread (it cannot fork one).

        For a slot started pristine (``python -m grader.sandbox.launch --slot``, :func:`pristine_slot`): called
        after :func:`grader.sandbox.launch.preimport` and before anything else, it is the zygote a cold
        ``start`` would make, without that zygote's own interpreter and imports. ``main`` is launch.py's; the
        environment is this process's, a zygote's (:func:`environment`). A zygote started again after this one
        died is a cold one (:meth:`start`): by then this process has imported the grader.
        """
        import socket

        if _threads() != 1:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the zygote
            try:
                ours.close()
                _become_zygote(theirs.fileno())
                serve(theirs.fileno(), lambda: None, main)
            finally:
                os._exit(70)
        theirs.close()
        zygote = cls.__new__(cls)
        zygote._fields(dict(os.environ), threads)
        zygote.process = ZygoteProcess(pid, [*cls.command, "(forked)"])
        zygote.socket = ours
        return zygote

    def _fields(self, env: dict, threads: int | None) -> None:
        self.env = dict(env)
        self.threads = threads
        self.process = None
        self.socket = None
        self.ready = False
        self.buffer = b""
        self.forks = self.colds = self.restarts = 0
        self.last_refusal = ""
        self.unusable = ""  # why no kernel will ever be asked of it (then it is closed)

    def start(self) -> None:
        """Start a zygote (returns at once; it is ready once its imports are done)."""
        import socket
        import subprocess

        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [*self.command, str(theirs.fileno()), str(self.threads or 0)]
        try:
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                                            cwd="/")
        except OSError:
            ours.close()
            self.process = None
            return
        finally:
            theirs.close()
        self.socket, self.ready, self.buffer = ours, False, b""

    def close(self) -> None:
        """Stop the zygote (SIGKILL: it holds no state worth keeping) and reap it."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.process is not None:
            try:
                self.process.kill()
                self.process.wait(5)
            except Exception:  # noqa: BLE001
                pass
            self.process = None
        self.ready = False

    def _line(self, timeout: float) -> dict | None:
        """The zygote's next answer within ``timeout`` s; None when it said nothing (or is gone)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left < 0 or not select.select([self.socket], [], [], max(0.0, left))[0]:
                return None
            chunk = self.socket.recv(65536)
            if not chunk or len(self.buffer) > MAX_LINE:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the zygote's imports to be done (a slot never waits: tests, tools)."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.alive() and time.monotonic() < deadline:
            hello = self._line(min(0.5, max(0.0, deadline - time.monotonic())))
            self.ready = hello is not None and "ready" in hello
            if self.ready and hello.get("threads") != 1:
                # torch started threads at import (--threads above 1): every fork would be refused, so none is
                # asked for; this slot's kernels all start cold.
                self.unusable = f"the zygote holds {hello.get('threads')} threads after its imports"
                self.close()
        return self.ready and not self.unusable

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, cmd: list[str], cwd: str, env: dict) -> ZygoteProcess | None:
        """Fork a kernel for ``cmd`` (launch.py's command); None when it must be launched cold.

        None when the command is not launch.py's, the environment's start-up variables differ
        from the zygote's, or the zygote is not ready within :data:`READY_TIMEOUT`, refuses, is
        dead or does not answer (then a fresh zygote is started for the next kernel).
        """
        if self.unusable:
            return self._cold(self.unusable)
        head = [sys.executable, "-m", "grader.sandbox.launch"]
        if cmd[:3] != head or len(cmd) < 4 or cmd[3].startswith("--") or _startup(env) != _startup(self.env):
            return self._cold("not launch.py's command, or another start-up environment")
        if not self.alive():
            self.restarts += 1
            self.start()
            return self._cold("the zygote was not running (started again for the next kernel)")
        if not self.ready and not self.wait_ready(READY_TIMEOUT):
            if not self.alive():
                self.restarts += 1
                self.start()
            return self._cold("the zygote is still importing")
        request = {"argv": cmd[3:], "cwd": cwd, "env": env, "parent": os.getpid()}
        try:
            self.socket.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            self.restarts += 1
            self.start()
            return self._cold("the zygote's socket is closed (started again)")
        answer = self._line(ANSWER_TIMEOUT)
        if answer is None:
            self.restarts += 1
            self.start()
            return self._cold("the zygote did not answer (started again)")
        pid = answer.get("pid")
        if type(pid) is not int or not _is_my_child(pid):
            return self._cold(f"the zygote refused: {answer.get('error', 'no kernel')}")
        if not _stopped(pid, ANSWER_TIMEOUT):  # it exited, or never got as far as its go-ahead
            return self._cold("the forked kernel ended before it started")
        os.kill(pid, signal.SIGCONT)  # the go-ahead: from here on it runs launch.main
        self.forks += 1
        return ZygoteProcess(pid, cmd)

    def _cold(self, why: str) -> None:
        self.colds += 1
        self.last_refusal = why
        return None


def _stopped(pid: int, timeout: float) -> bool:
    """Wait until our child ``pid`` stops itself (True), or ends or overruns ``timeout`` (False: then it is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return False
        if found == pid:
            if os.WIFSTOPPED(status):
                return True
            return False  # it ended (and is reaped)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.0005)


def _is_my_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat[stat.rfind(")") + 2:].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False
