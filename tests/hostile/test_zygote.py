"""The batch slot's zygote (grader/sandbox/zygote.py): a forked kernel is a cold kernel's twin, and the zygote is
out of the student's reach.

Here this test process plays the slot: it is made a child subreaper, holds the zygote and launches
SandboxKernels through it (grader.sandbox.kernel.use_zygote), as ``grader.batch.serve_slot`` does.
What a student's code could try: find and write to the zygote's control socket, signal the zygote,
patch the modules the zygote pre-imported, leave processes behind, predict the next kernel's random
state. The last test kills a zygote in the middle of a real ``grade batch``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from grader.sandbox import kernel as sandbox_kernel
from grader.sandbox import procs, zygote as zygote_module
from grader.sandbox.kernel import Limits, SandboxKernel
from grader.sandbox.zygote import Zygote, ZygoteProcess, environment

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(cell_timeout=60.0)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote is Linux-only (fork, /proc)")


# ----------------------------------------------------------------------------------------- fast: the pieces

def test_zygote_process_behaves_as_popen_for_jupyter_client():
    """Does the Popen stand-in give Popen's poll/wait codes (negative: the signal), time out, and never signal a
    reaped pid?"""
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], dict(os.environ))
    process = ZygoteProcess(pid, ["sleep", "30"])
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.05)
    process.terminate()
    assert process.wait(timeout=10) == -signal.SIGTERM and process.poll() == -signal.SIGTERM
    process.kill()  # reaped: no signal goes to a pid the system may have given to another process
    assert process.stdin is None and process.stdout is None and process.stderr is None


def test_a_multithreaded_zygote_refuses_to_fork(tmp_path):
    """unshare(CLONE_NEWUSER) fails in a multithreaded process and a fork keeps one thread: is a request refused,
    with no process forked, while a second thread runs?"""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        before = procs.children(os.getpid())
        answer = zygote_module._fork(-1, {"argv": ["x"], "cwd": str(tmp_path), "env": {}, "parent": os.getpid()})
        assert "error" in answer and "threads" in answer["error"], answer
        assert procs.children(os.getpid()) == before
    finally:
        stop.set()
        thread.join()


_TINY_ZYGOTE = """\
import os, sys
from grader.sandbox import zygote
def main(argv, preimported):  # the forked process: say who its parent is, in its folder, and end
    open(argv[0], "w").write(f"{os.getppid()} {os.getsid(0) == os.getpid()} {os.getcwd()} {os.environ.get('MARK')}")
zygote.serve(int(sys.argv[1]), lambda: None, main)
"""


@linux_only
def test_every_forked_process_is_the_slots_child_in_a_session_of_its_own(tmp_path, monkeypatch):
    """Twenty forks in a row from a zygote whose kernel is a one-liner: is each one re-parented to this process (a
    subreaper) before it runs, a session leader, in the folder and environment asked for, and ended with status 0?
    (The forked process may run before or after its first parent exits: both orders must work.)"""
    monkeypatch.setattr(Zygote, "command", [sys.executable, "-c", _TINY_ZYGOTE])
    procs.become_subreaper()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "MARK": "zygote"}
    z = Zygote(env, 1)
    try:
        assert z.wait_ready(60)
        processes = []
        for n in range(20):
            folder = tmp_path / f"k{n}"
            folder.mkdir()
            process = z.spawn([sys.executable, "-m", "grader.sandbox.launch", str(folder / "said")], str(folder),
                              {**env, "MARK": f"k{n}"})
            assert process is not None, z.last_refusal
            processes.append((process, folder))
        for n, (process, folder) in enumerate(processes):
            assert process.wait(timeout=30) == 0
            assert (folder / "said").read_text() == f"{os.getpid()} True {folder} k{n}"
        assert z.forks == 20 and z.colds == 0
    finally:
        z.close()


_DYING_ZYGOTE = """\
import os, sys
from grader.sandbox import zygote
forked = zygote._fork
def fork_then_die(control, request):  # forks the kernel, then dies before its answer reaches the slot
    forked(control, request)
    os._exit(9)
zygote._fork = fork_then_die
def main(argv, preimported):
    open(argv[0], "w").write("ran")
zygote.serve(int(sys.argv[1]), lambda: None, main)
"""


@linux_only
def test_a_kernel_whose_answer_was_lost_never_runs(tmp_path, monkeypatch):
    """The zygote forks a kernel and dies before answering: the slot launches that kernel cold (same connection
    file). Does the orphaned fork stay stopped — never running launch.main, so never competing for the kernel's
    sockets — until the slot kills it as a stray?"""
    monkeypatch.setattr(Zygote, "command", [sys.executable, "-c", _DYING_ZYGOTE])
    procs.become_subreaper()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    z = Zygote(env, 1)
    try:
        assert z.wait_ready(60)
        known = procs.children(os.getpid())
        said = tmp_path / "said"
        assert z.spawn([sys.executable, "-m", "grader.sandbox.launch", str(said)], str(tmp_path), env) is None
        assert "did not answer" in z.last_refusal
        deadline = time.monotonic() + 10
        strays = set()
        while not strays and time.monotonic() < deadline:  # the fork: a child of this process, stopped
            strays = {p for p in procs.children(os.getpid()) - known - {z.pid}
                      if Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1][0] == "T"}
            time.sleep(0.05)
        assert len(strays) == 1, procs.children(os.getpid()) - known
        time.sleep(1.0)  # time enough to run, were it running
        assert not said.exists()
        procs.reap(known | {z.pid})  # what SandboxKernel.close does with strays
        assert not strays & procs.children(os.getpid())
    finally:
        z.close()


@linux_only
def test_a_zygote_that_imports_threads_is_never_asked(monkeypatch):
    """With torch's threads above 1 the zygote holds threads after its imports (seen: 3 with --threads 2): is it
    closed once ready, and every kernel launched cold at once, not after a refused request each time?"""
    monkeypatch.setattr(Zygote, "command", [sys.executable, "-c", "import os, sys, threading, time\n"
                        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                        "from grader.sandbox import zygote\nzygote.serve(int(sys.argv[1]), lambda: None, None)"])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    z = Zygote(env, 2)
    assert not z.wait_ready(60) and "2 threads" in z.unusable and not z.alive()
    started = time.monotonic()
    assert z.spawn([sys.executable, "-m", "grader.sandbox.launch", "/c.json"], "/", env) is None
    assert time.monotonic() - started < 0.5 and z.restarts == 0 and z.last_refusal == z.unusable


def test_spawn_launches_cold_what_the_zygote_cannot_make(monkeypatch):
    """A command that is not launch.py's, start-up variables (OMP_NUM_THREADS, PYTHON*) that differ from the
    zygote's, or a zygote still importing: does spawn answer None (a cold launch) each time, without waiting?"""
    monkeypatch.setattr(Zygote, "start", lambda self: None)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HOME": "/nowhere"}
    z = Zygote(env, 1)
    launch = [sys.executable, "-m", "grader.sandbox.launch", "/p/launch.json", "-f", "/p/kernel.json"]
    assert z.spawn(["/bin/sh", "-c", "true"], "/", env) is None and "not launch.py" in z.last_refusal
    assert z.spawn(launch, "/", {**env, "OMP_NUM_THREADS": "4"}) is None and "start-up" in z.last_refusal
    assert z.spawn(launch, "/", {**env, "PYTHONHASHSEED": "0"}) is None
    assert z.spawn(launch, "/", env) is None and "not running" in z.last_refusal  # no process: started again
    assert z.colds == 4 and z.forks == 0 and z.restarts == 1


#: A stand-in for a pristine slot: it forks its zygote (one extra descriptor open, as a slot's imports may leave),
#: says the zygote's pid and whether it is ready, and closes it when its input ends.
_FORKS_HERE = """\
import os, sys
from grader.sandbox.zygote import Zygote
extra = open(os.devnull)
z = Zygote.fork_here(1, lambda argv, preimported: None)
print(z.pid, z.wait_ready(30), z.env == dict(os.environ), flush=True)
sys.stdin.readline()
z.close()
"""


@linux_only
def test_a_zygote_forked_by_its_slot_holds_its_socket_and_nothing_else(tmp_path):
    """A pristine slot forks its zygote from itself (Zygote.fork_here): does the zygote hold only /dev/null on its
    standard streams and its control socket — none of the slot's pipes or files —, sit in /, answer ready, and die
    with the slot? And does a process with a second thread fork none?"""
    slot = subprocess.Popen([sys.executable, "-c", _FORKS_HERE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        pid, ready, same_env = slot.stdout.readline().split()
        pid = int(pid)
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert ready == "True" and same_env == "True"
        assert [fds.pop(fd) for fd in (0, 1, 2)] == ["/dev/null"] * 3
        assert len(fds) == 1 and next(iter(fds.values())).startswith("socket:"), fds
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1]) == slot.pid
    finally:
        slot.kill()
        slot.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]:
        assert time.monotonic() < deadline, "the zygote outlived its slot"
        time.sleep(0.01)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        children = procs.children(os.getpid())
        assert Zygote.fork_here(1, None) is None and procs.children(os.getpid()) == children
    finally:
        stop.set()


# ----------------------------------------------------------------------------------------- slow: real kernels

@pytest.fixture(scope="module")
def zygote():
    if not sys.platform.startswith("linux"):
        pytest.skip("the zygote is Linux-only")
    procs.become_subreaper()
    z = Zygote(environment(LIMITS), LIMITS.threads)
    assert z.wait_ready(120), "the zygote never finished its imports"
    yield z
    z.close()


@contextmanager
def _kernel(z: Zygote | None):
    """A started SandboxKernel, forked by ``z`` (or cold when None); closed on the way out."""
    sandbox_kernel.use_zygote(z)
    workdir = Path(tempfile.mkdtemp(prefix="zygote-test-"))
    k = SandboxKernel(workdir, LIMITS, [])
    try:
        forks = z.forks if z is not None else 0
        k.start()
        if z is not None:
            assert z.forks == forks + 1, f"not forked by the zygote: {z.last_refusal}"
        yield k
    finally:
        k.close()  # first: its clean-up spares the zygote in use (a later one is no child it knew of)
        sandbox_kernel.use_zygote(None)
        shutil.rmtree(workdir, ignore_errors=True)


def _run(k: SandboxKernel, *sources: str) -> list[str]:
    """Run cells in ``k``; each cell's stdout (every cell must run cleanly)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    runs = k.run_notebook(nb, time.monotonic() + 120)
    assert all(r.status == "ok" for r in runs), [(r.status, r.error) for r in runs]
    return ["".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout") for cell in nb.cells]


_STATE = """\
import json, os, sys, tempfile, torch
def kind(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").split(":")[0]
    except OSError:
        return "closed"
print(json.dumps({
    "modules": sorted(sys.modules), "path": sys.path[1:], "path0_is_cwd": sys.path[0] == os.getcwd(),
    "argv0": sys.argv[0], "argv_shape": [a.endswith(".json") for a in sys.argv[1:]], "main": sys.modules["__main__"].__name__,
    "env": sorted(os.environ), "tmp": tempfile.gettempdir() == os.environ["TMPDIR"], "pid": os.getpid(),
    "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
    # What kinds of descriptor, and how many of each but ZeroMQ's sockets and event fds, whose number depends on
    # how far ipykernel's threads have got (one socket more or less was seen between two cold kernels' timings).
    "fds": sorted(k if k in ("socket", "anon_inode") else f"{k} x{ks.count(k)}" for ks in [[kind(fd) for fd in
                  os.listdir("/proc/self/fd")]] for k in set(ks)),
}))
"""


def _shim_parent(k: SandboxKernel) -> int:
    return int(Path(f"/proc/{k._pid()}/stat").read_text().rsplit(") ", 1)[1].split()[1])


#: What the zygote did ahead for every kernel (launch.preimport's ``warm``), done here by a cold kernel's first
#: cell, so that the two can be compared module for module.
_WARM = """\
import sys
sys.modules["grader.sandbox.meta"].warm()
import numpy.random
import matplotlib.pyplot
sys.modules["grader.sandbox.figures"].warm()
"""

#: A figure shown inline, and the folders matplotlib uses: the kernel's own (its private MPLCONFIGDIR)?
_PLOT = """\
import os, matplotlib, matplotlib.pyplot as plt
print(matplotlib.get_configdir() == matplotlib.get_cachedir() == os.environ["MPLCONFIGDIR"], matplotlib.get_backend())
plt.plot([0, 1, 3], [1, 0, 2], "o-")
plt.title("a figure")
plt.show()
"""


def _figure(k: SandboxKernel) -> tuple[str, list]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(_PLOT)])
    assert [r.status for r in k.run_notebook(nb, time.monotonic() + 120)] == ["ok"]
    outputs = nb.cells[0].outputs
    return ("".join(o.get("text", "") for o in outputs if o.get("name") == "stdout"),
            [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})])


@pytest.mark.slow
def test_a_forked_kernel_is_a_cold_kernels_twin(zygote):
    """Same modules loaded (the cold one after the zygote's warm-up, run as its first cell), sys.path, argv,
    environment variables, open descriptors, torch threads and seed, temporary folder and isolation report as
    a cold kernel's; the same inline figure, matplotlib's folders its own; its process the slot's child, PID 1
    of its own namespace?

    Seen failing with the matplotlib folders not forgotten at the fork (the zygote's MPLCONFIGDIR).
    """
    with _kernel(None) as cold:
        cold_state = json.loads(_run(cold, _WARM, _STATE)[1])
        cold_figure = _figure(cold)
        cold_isolation = cold.walls.isolation
    with _kernel(zygote) as forked:
        assert _shim_parent(forked) == os.getpid()  # re-parented to the slot (here: this test process)
        assert forked.walls.init is not None  # the namespace's PID 1, found as for a cold kernel
        forked_state = json.loads(_run(forked, _STATE)[0])
        forked_figure = _figure(forked)
        forked_isolation = forked.walls.isolation
    assert cold_figure[0].startswith("True module://matplotlib_inline.backend_inline") and len(cold_figure[1]) == 1
    assert forked_figure == cold_figure
    assert forked_isolation == cold_isolation
    assert forked_state["pid"] == cold_state["pid"] == 1 or not cold_isolation["pid_namespace"]
    for key in ("modules", "path", "path0_is_cwd", "argv0", "argv_shape", "main", "env", "tmp", "threads", "fds"):
        assert forked_state[key] == cold_state[key], (key, set(map(str, forked_state[key])) ^ set(map(str, cold_state[key]))
                                                      if isinstance(cold_state[key], list) else None)
    assert "grader.sandbox.zygote" not in forked_state["modules"] and forked_state["tmp"] and forked_state["path0_is_cwd"]


@pytest.mark.slow
def test_a_forked_kernels_collections_walk_only_its_own_objects(zygote):
    """The zygote's imports are in the collector's permanent generation (gc.freeze, once after them): a forked
    kernel's full collection walks its own few thousand objects, not torch's heap, whose every page it would
    otherwise write to (copy-on-write) at its first full collection (0.25-0.35 s of CPU a kernel, measured).

    Seen failing without the freeze (nothing frozen, some 260,000 objects tracked).
    """
    with _kernel(zygote) as forked:
        frozen, tracked = map(int, _run(forked, "import gc\ngc.collect()\nprint(gc.get_freeze_count(), len(gc.get_objects()))")[0].split())
    assert frozen > 100_000 and tracked * 10 < frozen, (frozen, tracked)


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


_FORGE = """\
import json, os, socket
mine = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")}
print(json.dumps(mine))
"""

_SEND = """\
import json, os
request = json.dumps({"argv": ["/tmp/evil.json"], "cwd": "/", "env": {}, "parent": os.getpid()}).encode() + b"\\n"
for fd in map(int, os.listdir("/proc/self/fd")):
    if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
        try:
            os.set_blocking(fd, False)
            os.write(fd, request)  # a fork request into every socket the kernel holds
        except OSError:
            pass
"""


@pytest.mark.slow
def test_the_kernel_holds_no_descriptor_of_the_control_socket(zygote):
    """Student code lists /proc/self/fd and writes a fork request into every socket it holds: does it hold neither
    end of the zygote's control socket, and does the zygote get no request (nothing forked, nothing answered)?"""
    control = _socket_inodes(zygote.pid) | {os.readlink(f"/proc/self/fd/{zygote.socket.fileno()}")}
    before = procs.children(os.getpid())
    with _kernel(zygote) as k:
        held = set(json.loads(_run(k, _FORGE)[0]).values())
        assert not held & control, held & control
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(_SEND)])
        k.run_notebook(nb, time.monotonic() + 10)  # breaks the kernel's connections: its outcome is not checked
    assert not select.select([zygote.socket], [], [], 1.0)[0], "the zygote answered a request the slot never sent"
    assert zygote.alive() and procs.children(os.getpid()) - before <= {zygote.pid}


_PATCH = """\
import sys, types, random, torch, torch.nn.functional as F
F.mse_loss = lambda *a, **k: torch.tensor(0.0)
torch.manual_seed = lambda seed: None
torch.randn = lambda *a, **k: torch.zeros(*a)
sys.modules["torch.nn.functional"].softmax = None
sys.modules["numpy"] = types.ModuleType("numpy")
import builtins
builtins.PATCHED = True
"""

_UNPATCHED = """\
import builtins, sys, torch, torch.nn.functional as F
torch.manual_seed(0)
a = torch.rand(3)
torch.manual_seed(0)
problems = [what for what, bad in [
    ("F.mse_loss", float(F.mse_loss(torch.ones(2), torch.zeros(2))) != 1.0),
    ("torch.manual_seed", not torch.equal(a, torch.rand(3))),
    ("torch.randn", not torch.randn(3).abs().sum() > 0),
    ("F.softmax", F.softmax is None),
    ("sys.modules['numpy']", not hasattr(sys.modules.get("numpy"), "ndarray")),
    ("a builtin", hasattr(builtins, "PATCHED")),
] if bad]
print(",".join(problems))
"""


@pytest.mark.slow
def test_patched_preimported_modules_leave_the_next_kernel_untouched(zygote):
    """A submission patches torch.nn.functional, torch.manual_seed, torch.randn, sys.modules and builtins, all
    pre-imported by the zygote: does the next kernel forked from it see none of it (and does the probe see the
    patches where they were made, so that it can fail)?"""
    import numpy  # noqa: F401 -- the probe's numpy check needs numpy importable in the kernel

    with _kernel(zygote) as k:
        outputs = _run(k, _PATCH, _UNPATCHED)
        assert set(outputs[1].strip().split(",")) == {"F.mse_loss", "torch.manual_seed", "torch.randn", "F.softmax",
                                                      "sys.modules['numpy']", "a builtin"}
    with _kernel(zygote) as k:
        assert _run(k, _UNPATCHED)[0].strip() == ""


_RANDOM = """\
import random, json, numpy, tempfile, torch
print(json.dumps([random.getrandbits(64), int(numpy.random.randint(0, 2**62)), next(tempfile._get_candidate_names()),
                  torch.initial_seed(), torch.randn(2).tolist()]))
"""


@pytest.mark.slow
def test_two_kernels_get_different_random_states(zygote):
    """Python's random, numpy's global generator, tempfile's names and torch's seed (which torch draws from the OS
    at its import, in the zygote): different in two kernels of one zygote, as in two cold ones? (A repeat would
    make one student's draws predictable from another's.) Chance of a false failure: under 2^-48 (tempfile's
    8-character names from 37 letters; the others 2^-62 or less)."""
    with _kernel(zygote) as k:
        first = json.loads(_run(k, _RANDOM)[0])
    with _kernel(zygote) as k:
        second = json.loads(_run(k, _RANDOM)[0])
    assert all(a != b for a, b in zip(first, second)), (first, second)


_BACKGROUND = """\
import ctypes, os
libc = ctypes.CDLL(None)
argv = (ctypes.c_char_p * 3)(b"/bin/sleep", b"876.543", None)
attr = ctypes.create_string_buffer(1024)
libc.posix_spawnattr_init(attr)
libc.posix_spawnattr_setflags(attr, ctypes.c_short(0x80))  # POSIX_SPAWN_SETSID: a session of its own
for _ in range(3):
    assert libc.posix_spawn(ctypes.byref(ctypes.c_int()), b"/bin/sleep", None, attr, argv, None) == 0
shell = (ctypes.c_char_p * 4)(b"/bin/sh", b"-c", b"/bin/sleep 876.543 & exit 0", None)  # an orphan: its parent exits
assert libc.posix_spawn(ctypes.byref(ctypes.c_int()), b"/bin/sh", None, None, shell, None) == 0
"""


def _marked(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and "ps -eo" not in line and " Z" not in line]


@pytest.mark.slow
def test_the_forked_kernels_namespace_dies_as_one_and_leaves_no_orphan(zygote):
    """The kernel's process is the slot's child; it starts background processes (setsid, an orphan): are they
    all gone (ps) once the kernel is closed, and did none of them become the slot's or the zygote's?"""
    with _kernel(zygote) as k:
        assert _shim_parent(k) == os.getpid()
        shim, init = k._pid(), k.walls.init
        _run(k, _BACKGROUND)
        deadline = time.monotonic() + 10
        while len(_marked("876.543")) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_marked("876.543")) == 4, _marked("876.543")
    deadline = time.monotonic() + 30
    while _marked("876.543") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _marked("876.543"), _marked("876.543")
    assert not Path(f"/proc/{init}").exists() or "Z" in Path(f"/proc/{init}/stat").read_text().rsplit(") ", 1)[1][:1]
    assert not Path(f"/proc/{shim}").exists()  # reaped, by the stand-in's waitpid
    assert procs.children(zygote.pid) == set()


_SIGNAL_ZYGOTE = """\
import ctypes, os, pathlib
libc = ctypes.CDLL(None, use_errno=True)
targets = [int(p) for p in os.listdir("/proc") if p.isdigit() and b"--zygote" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes()]
results = [libc.kill(pid, 9) for pid in targets]  # past the guard, which is advice
print(len(targets), results.count(0))
"""


@pytest.mark.slow
def test_a_student_cannot_signal_the_zygote(zygote):
    """Student code finds the zygote in /proc and SIGKILLs it through libc: is it refused and the zygote alive?
    (Landlock's signal scope; where the kernel reports no signal wall, nothing is claimed.)"""
    with _kernel(zygote) as k:
        found, delivered = map(int, _run(k, _SIGNAL_ZYGOTE)[0].split())
        walled = k.walls.isolation.get("signals")
    if not walled:
        pytest.skip("no Landlock signal scope here (ABI < 6)")
    assert found >= 1 and delivered == 0
    assert zygote.alive()


@pytest.mark.slow
def test_a_dead_zygote_means_one_cold_kernel_then_a_fresh_zygote(zygote):
    """Kill the zygote: is the next kernel launched cold (and walled as ever), a fresh zygote started, and the
    kernel after it forked again?"""
    old = zygote.pid
    os.kill(old, signal.SIGKILL)
    zygote.process.wait(10)
    sandbox_kernel.use_zygote(zygote)
    workdir = Path(tempfile.mkdtemp(prefix="zygote-test-"))
    cold = SandboxKernel(workdir, LIMITS, [])
    try:
        colds = zygote.colds
        cold.start()
        assert zygote.colds == colds + 1 and "not running" in zygote.last_refusal
        assert cold.walls.isolation.get("pid_namespace") == cold.walls.isolation.get("filesystem")  # walls as ever
        assert _run(cold, "print(1 + 1)")[0].strip() == "2"
    finally:
        cold.close()
        sandbox_kernel.use_zygote(None)
        shutil.rmtree(workdir, ignore_errors=True)
    assert zygote.pid != old and zygote.alive()
    assert zygote.wait_ready(120)
    with _kernel(zygote) as k:  # forked (checked in _kernel)
        assert _run(k, "print(2 + 2)")[0].strip() == "4"


# ----------------------------------------------------------------------------------------- slow: a real batch

def _children(pid: int) -> list[int]:
    return sorted(procs.children(pid))


def _zygotes_command(command: bytes, slots: bytes) -> bool:
    """A zygote's command line (which the kernels forked from it keep): one started cold, or the slot's own (a
    slot started pristine forks its zygote from itself)."""
    return b"--zygote" in command or (command == slots and b"grader.sandbox.launch" in slots)


def _executed_output(out: Path) -> list[str]:
    """Each cell's stdout in the one executed notebook under ``out``."""
    [path] = out.glob("*/*.executed.ipynb")
    cells = nbformat.read(path, as_version=4).cells
    return ["".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout") for cell in cells]


_SLOTS = r"""
print(b"grader.sandbox.launch\0--slot" in open("/proc/self/cmdline", "rb").read())
"""


@pytest.mark.slow
@linux_only
def test_a_kernel_forked_from_a_pristine_slots_zygote_is_a_cold_kernels_twin(tmp_path):
    """A real `grade batch` slot starts pristine and forks its zygote from itself before it loads the grader: is a
    kernel forked from that zygote a cold kernel's twin (modules, sys.path, argv, environment variables, open
    descriptors — none of the slot's pipes to the batch —, torch threads, temporary folder), and was it forked?

    Seen failing with a grader module imported by the slot before the fork (grader.results among the modules),
    and with the slot's environment not put back in place of its zygote's (its kernels then started cold).
    """
    states = {}
    for kind, cells, env in (("forked", [_STATE, _SLOTS], {}), ("cold", [_WARM, _STATE, _SLOTS], {"GRADER_ZYGOTE": "0"})):
        class_dir = tmp_path / kind / "submissions"
        class_dir.mkdir(parents=True)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        notebook.metadata["grader"] = {"exercise": "q_sampler"}
        nbformat.write(notebook, class_dir / "twin.ipynb")
        out = tmp_path / kind / "gradebook"
        done = subprocess.run([sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out), "--jobs", "1",
                               "--device", "cpu", "--progress", "lines"], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=600)
        assert done.returncode == 0, done.stderr  # graded (0 points)
        printed = _executed_output(out)
        states[kind] = {**json.loads(printed[-2]), "pristine": printed[-1].strip()}
    forked, cold = states["forked"], states["cold"]
    cold["env"].remove("GRADER_ZYGOTE")  # what made it cold
    assert forked["pristine"] == "True" and cold["pristine"] == "False"  # forked from the slot's own fork; cold
    for key in ("modules", "path", "path0_is_cwd", "argv0", "argv_shape", "main", "env", "tmp", "threads", "fds"):
        assert forked[key] == cold[key], (key, set(map(str, forked[key])) ^ set(map(str, cold[key]))
                                          if isinstance(cold[key], list) else None)
    assert not {"grader.batch", "grader.submit", "grader.checks", "grader.exercises", "grader.render"} & {*forked["modules"]}


@pytest.mark.slow
@linux_only
def test_a_zygote_killed_mid_batch_leaves_every_submission_graded_alike(tmp_path):
    """SIGKILL the slot's zygote while the first notebook runs: is every later notebook still graded, with the same
    verdicts as the others (cold, then from a fresh zygote)?"""
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    slow = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(6)")])
    slow.metadata["grader"] = {"exercise": "q_sampler"}
    nbformat.write(slow, class_dir / "a_slow.ipynb")
    for name in ("b_stub", "c_stub", "d_stub"):
        shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / f"{name}.ipynb")
    out = tmp_path / "gradebook"
    command = [sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out), "--jobs", "1",
               "--device", "cpu", "--progress", "lines"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not killed:
        for slot in _children(process.pid):
            try:
                mine = Path(f"/proc/{slot}/cmdline").read_bytes()
                kinds = {child: _zygotes_command(Path(f"/proc/{child}/cmdline").read_bytes(), mine)
                         for child in _children(slot)}
            except OSError:
                continue
            if len(kinds) >= 2:  # the zygote, and the first notebook's kernel: kill the zygote now
                # A forked kernel has the zygote's command line too (a fork, no exec): the zygote is the oldest.
                forked = [c for c, is_zygote in kinds.items() if is_zygote]
                started = {c: int(Path(f"/proc/{c}/stat").read_text().rsplit(") ", 1)[1].split()[19]) for c in forked}
                os.kill(min(forked, key=lambda c: (started[c], c)), signal.SIGKILL)
                killed.append(min(forked, key=lambda c: (started[c], c)))
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=600)
    assert killed, "no zygote was seen"
    assert process.returncode == 0, stderr  # every notebook graded
    book = {r["student"]: r for r in __import__("csv").DictReader((out / "gradebook.csv").read_text(encoding="utf-8").splitlines())}
    assert {s: r["status"] for s, r in book.items()} == dict.fromkeys(["a_slow", "b_stub", "c_stub", "d_stub"], "graded")
    verdicts = {s: [(t["name"], t["score"], t.get("output", "")) for t in
                    json.loads((out / s / "results.json").read_text())["tests"]] for s in ("b_stub", "c_stub", "d_stub")}
    assert verdicts["b_stub"] == verdicts["c_stub"] == verdicts["d_stub"]
    isolation = {s: json.loads((out / s / "results.json").read_text())["extra_data"]["isolation"] for s in book}
    assert len({json.dumps(v, sort_keys=True) for v in isolation.values()}) == 1, isolation
