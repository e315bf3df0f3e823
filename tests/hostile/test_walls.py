"""Attacks on the operating system's walls around the kernel, by a student who has read the grader.

Each test is one notebook that first switches the in-process guard off (it is
advice, not a wall: its policy is an ordinary object, reachable through ``gc``)
or goes around it with ``ctypes``, then tries one class of attack from issue 9:
read the reference or the solutions (``open``, ``dir_fd``, ``ctypes``), append
to the original notebook, write outside its folder, connect over TCP, signal
the grader, leave a zombie leader behind that forges results.json or the
gradebook after grading, start 800 orphans, allocate shared memory past the
limit, rewrite the grader's template where the grader is installed in a
writable folder. Each must earn no unearned point, leave nothing running, and
end in bounded time. The walls themselves are unit-tested in
tests/grader/test_confinement.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grader.sandbox import isolation
from grader.sandbox.kernel import GiB, Limits, SandboxKernel
from grader.submit import SubmitOptions, grade_submission
from tests.hostile._notebooks import definitions as _definitions
from tests.hostile._notebooks import grade
from tests.hostile._notebooks import notebook as _notebook
from tests.hostile._notebooks import replace as _replace
from tests.helpers import named_processes

ROOT = Path(__file__).resolve().parents[2]
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the walls are Linux's")

#: Small limits so that the attacks end fast (as in test_attacks.py); the bounds below follow from them.
LIMITS = Limits(cell_timeout=8, call_timeout=3, batch_timeout=30, memory_bytes=2 * GiB, startup_timeout=60)
TIMEOUT = 240  # whole-submission budget

#: A cell that switches the guard off from plain Python: every Policy found through gc forbids nothing.
GUARD_OFF = """import gc
for policy in [o for o in gc.get_objects() if type(o).__name__ == 'Policy']:
    policy.forbidden_dirs, policy.writable_dirs, policy.forbidden_modules = [], ['/'], ()
    policy.read_refused = policy.write_refused = policy.module_refused = lambda *a: False
"""
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _grade(folder: Path, limits: Limits = LIMITS):
    return tuple(grade(folder, limits, TIMEOUT))


def _outputs(notebook) -> str:
    return json.dumps([c.get("outputs", []) for c in notebook.cells])


def _walls_in_force(result) -> None:
    assert isolation.complete(result.isolation), result.isolation


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    result, _, _ = _grade(_notebook(tmp_path_factory.mktemp("honest"), _definitions()))
    assert result.full_marks, [t.output for t in result.tests if not t.passed]
    _walls_in_force(result)
    return result


@linux
@pytest.mark.slow
def test_an_honest_notebook_with_check_cells_runs_cleanly_inside_the_walls(tmp_path):
    """Does the authored solution — plots, sanity cells and check(fn) cells — get full marks inside the walls,
    each check() cell saying in one line that `grade submit` is doing the checking, and none failing?"""
    folder = tmp_path / "q_sampler"
    shutil.copytree(ROOT / "solutions" / "q_sampler", folder)
    result, notebook, _ = _grade(folder)
    _walls_in_force(result)
    assert result.full_marks and result.tests[0].passed, result.tests[0].output
    calls = [c for c in notebook.cells if c.cell_type == "code" and "check(" in c.source and "import" not in c.source]
    assert calls
    for cell in calls:
        assert not [o for o in cell.outputs if o.get("output_type") == "error"]
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "`grade submit` is doing the checking" in text and len(text.strip().splitlines()) == \
            cell.source.count("check("), text


# ---------------------------------------------------------------------------------------- reading answers

@linux
@pytest.mark.slow
def test_guard_off_then_the_reference_and_solutions_are_still_out_of_reach(tmp_path, honest):
    """With the guard switched off, do importing reference, and reading its source or solutions/ through
    open, dir_fd and ctypes, all fail — so the cheat scores nothing and no answer lands in the feedback?"""
    reference_py = ROOT / "reference" / "q_sampler.py"
    solution = ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb"
    cheat = ("def q_sample(x0, t, alphas_cumprod, noise=None):\n"
             "    import reference.q_sampler as answer\n"
             "    return answer.q_sample(x0, t, alphas_cumprod, noise)\n")
    cells = [GUARD_OFF] + _replace(_definitions(), "q_sample", cheat) + [
        f"print(open({str(reference_py)!r}).read())",
        f"import os\nfd = os.open({str(reference_py.parent)!r}, os.O_PATH)\n"
        "print(os.read(os.open('q_sampler.py', os.O_RDONLY, dir_fd=fd), 10**6).decode())",
        LIBC + f"fd = libc.open({str(solution).encode()!r}, 0)\nprint('fd', fd, ctypes.get_errno())\n"
        "buffer = ctypes.create_string_buffer(10**6)\nprint(buffer.raw[:libc.read(fd, buffer, 10**6)].decode())",
        LIBC + f"fd = libc.syscall(257, -100, {str(solution).encode()!r}, 0)  # openat(AT_FDCWD, ...)\n"
        "buffer = ctypes.create_string_buffer(10**6)\nprint(buffer.raw[:libc.read(fd, buffer, 10**6)].decode())",
    ]
    result, notebook, seconds = _grade(_notebook(tmp_path, cells))
    _walls_in_force(result)
    table = {t.name: t for t in result.tests}
    assert not table["q_sample: matches the reference"].passed
    assert result.score < honest.score
    shown = _outputs(notebook) + (tmp_path / "q_sampler" / "feedback" / "results.json").read_text()
    first_line = reference_py.read_text().splitlines()[0]
    assert first_line not in shown and json.dumps(first_line)[1:-1] not in shown
    assert "BEGIN SOLUTION" not in shown
    assert "Permission denied" in shown
    assert seconds < 150


# ---------------------------------------------------------------------------------------- writing

@linux
@pytest.mark.slow
def test_guard_off_then_the_original_notebook_and_outside_are_not_writable(tmp_path, honest):
    """Can a notebook with the guard off append to its own original, or write outside its folder (Python or C)?"""
    folder = tmp_path / "q_sampler"
    original = folder / "q_sampler.ipynb"
    outside_py, outside_c = tmp_path / "outside-python.txt", tmp_path / "outside-c.txt"
    cells = [GUARD_OFF] + _definitions() + [
        f"open({str(original)!r}, 'a').write('appended')",
        LIBC + f"fd = libc.open({str(original).encode()!r}, os.O_WRONLY | os.O_APPEND)\n"
        "print('append fd', fd, libc.write(fd, b'appended', 8))",
        f"open({str(outside_py)!r}, 'w').write('escaped')",
        LIBC + f"print('fd', libc.open({str(outside_c).encode()!r}, os.O_WRONLY | os.O_CREAT, 0o644))",
    ]
    nb_folder = _notebook(tmp_path, cells)
    before = original.read_bytes()
    result, notebook, _ = _grade(nb_folder)
    _walls_in_force(result)
    assert original.read_bytes() == before
    assert not outside_py.exists() and not outside_c.exists()
    assert result.score == honest.score


# ---------------------------------------------------------------------------------------- network, signals

@linux
@pytest.mark.slow
def test_no_tcp_connection_and_no_signal_to_the_grader(tmp_path, honest):
    """Does a TCP connect to a local listener fail, and does a signal sent to the grader (ctypes kill) never arrive?"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: received.append(1))
    try:
        cells = [GUARD_OFF] + _definitions() + [
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'stolen')",
            LIBC + f"print('kill', libc.kill({os.getpid()}, {int(signal.SIGUSR1)}), ctypes.get_errno())",
            f"import os\nos.kill({os.getpid()}, {int(signal.SIGUSR1)})",
        ]
        result, notebook, _ = _grade(_notebook(tmp_path, cells))
        time.sleep(0.5)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    _walls_in_force(result)
    listener.settimeout(0.1)
    with pytest.raises(OSError):  # nothing connected
        listener.accept()
    assert received == []
    assert result.score == honest.score
    # ESRCH: the grader's pid does not exist in the kernel's PID namespace (EPERM from Landlock's scope without one)
    assert "kill -1 3" in _outputs(notebook) or "kill -1 1" in _outputs(notebook)


# ---------------------------------------------------------------------------------------- processes

#: The forger: a fresh Python whose main thread exits (a zombie leader, state Z) while a second thread lives
#: on and keeps overwriting TARGETS with FORGED. argv: TARGETS as JSON, FORGED, the thread's name.
FORGER_PROGRAM = """import ctypes, json, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
targets, forged, name = json.loads(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
def forge():
    libc.prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    end = time.time() + 120
    while time.time() < end:
        for path in targets:
            fd = libc.open(path.encode(), 0o1 | 0o1000)  # O_WRONLY | O_TRUNC
            if fd >= 0:
                libc.write(fd, forged, len(forged))
                libc.close(fd)
        time.sleep(0.05)
threading.Thread(target=forge).start()
time.sleep(0.2)
libc.syscall(60, 0)  # SYS_exit, through CDLL (which lets go of the GIL first): the leader thread only
"""

#: A cell that starts the forger behind the guard's back: posix_spawn through libc (no audit event,
#: and no fork of this threaded kernel, whose child could deadlock on a lock held by another thread
#: before it reaches exec), in a session of its own;
#: then, as soon as the forger's thread is alive, prints a witness line.
ZOMBIE_FORGER = LIBC + """import json, sys, time
program = {program!r}
args = [sys.executable.encode(), b"-c", program.encode(), json.dumps({targets!r}).encode(), {forged!r}.encode(),
        {name!r}.encode(), None]
argv = (ctypes.c_char_p * len(args))(*args)
attr = ctypes.create_string_buffer(1024)  # a posix_spawnattr_t (336 bytes on glibc), with room to spare
libc.posix_spawnattr_init(attr)
libc.posix_spawnattr_setflags(attr, ctypes.c_short(0x80))  # POSIX_SPAWN_SETSID
pid = ctypes.c_int()
spawned = libc.posix_spawn(ctypes.byref(pid), sys.executable.encode(), None, attr, argv, None)
print("spawned:", spawned, pid.value)
def seen():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(open(f"/proc/{{pid}}/task/{{tid}}/comm").read().strip() == {name!r}
                   for tid in os.listdir(f"/proc/{{pid}}/task")):
                return True
        except OSError:
            pass
end = time.time() + 30  # a fresh Python starts in ~0.1 s; far longer on a loaded machine
while not seen() and time.time() < end:
    time.sleep(0.2)
if seen():
    print("witness:", "forger", "alive")
"""


def _forger(targets: list[str], forged: str) -> str:
    return ZOMBIE_FORGER.format(program=FORGER_PROGRAM, targets=targets, forged=forged, name=FORGER)


def _witnessed(executed: Path) -> bool:
    """Did the notebook's witness line (in an output, not the source) see the forger alive while grading?"""
    nb = nbformat.read(executed, as_version=4)
    return "witness: forger alive" in _outputs(nb)


def _stub_cells(extra: str) -> list[str]:
    stub = "def q_sample(x0, t, alphas_cumprod, noise=None):\n    return x0\n"
    return _replace(_definitions(), "q_sample", stub) + [extra]


#: The forger's thread name: this test process's own (two test runs at once must not see each other's).
FORGER = f"forger-{os.getpid() % 10**6}"
ORPHAN = f"orphan-{os.getpid() % 10**6}"


def _assert_nothing_forged(path: Path, expected: str, seconds: float = 3.0) -> None:
    time.sleep(seconds)  # the forger writes every 50 ms: this is 60 chances
    assert path.read_text() == expected
    assert not named_processes(FORGER)


@linux
@pytest.mark.slow
def test_a_zombie_leader_cannot_rewrite_results_after_grade_submit(tmp_path):
    """Is a zombie leader forked behind the guard's back killed with the kernel, so results.json stays final?"""
    out = tmp_path / "feedback"
    forged = json.dumps({"score": 1000, "tests": []})
    folder = _notebook(tmp_path, _stub_cells(_forger([str(out / "results.json")], forged)))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "grader", "submit", str(folder), "--out", str(out),
                           "--timeout", str(TIMEOUT), "--cell-timeout", "40", "--call-timeout", "3"],
                          capture_output=True, timeout=TIMEOUT + 60, cwd=str(tmp_path))
    assert done.returncode == 1, done.stderr.decode(errors="replace")[-2000:]  # graded, below full marks
    assert time.monotonic() - started < TIMEOUT
    written = (out / "results.json").read_text()
    results = json.loads(written)
    assert results["score"] < results["extra_data"]["max_score"] and results["score"] != 1000
    assert isolation.complete(results["extra_data"]["isolation"])
    executed = out / "q_sampler.executed.ipynb"
    assert _witnessed(executed), _outputs(nbformat.read(executed, as_version=4))[-1500:]
    _assert_nothing_forged(out / "results.json", written)


@linux
@pytest.mark.slow
def test_a_zombie_leader_cannot_rewrite_its_gradebook_row(tmp_path):
    """Under grade batch, can a zombie leader rewrite gradebook.csv after its grading?"""
    out = tmp_path / "gradebook"
    gradebook = out / "gradebook.csv"
    forged = "student,score\nalice,1000\n"
    targets = [str(gradebook), str(out / "alice" / "results.json")]
    _notebook(tmp_path / "class", _stub_cells(_forger(targets, forged)), name="alice")
    done = subprocess.run([sys.executable, "-m", "grader", "batch", str(tmp_path / "class"), "--out", str(out),
                           "--jobs", "1", "--timeout", str(TIMEOUT), "--cell-timeout", "40", "--call-timeout", "3"],
                          capture_output=True, timeout=TIMEOUT + 120, cwd=str(tmp_path))
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")[-2000:]
    written = gradebook.read_text()
    rows = list(csv.DictReader(written.splitlines()))
    assert [r["student"] for r in rows] == ["alice"] and "1000" not in written
    assert any(_witnessed(p) for p in out.rglob("*.executed.ipynb"))
    _assert_nothing_forged(gradebook, written)


@linux
@pytest.mark.slow
def test_800_orphans_are_killed_at_once(tmp_path):
    """Are 800 processes forked behind the guard's back (half of them double-forked out of the session)
    killed at once when the kernel closes — not one at a time (issue 9: ~50 ms each, 40 s)?"""
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(LIBC + """import time
fork = ctypes.PyDLL(None).fork  # with the GIL held: the child owns it and runs on
for i in range(800):
    if fork() == 0:
        if i % 2:
            libc.setsid()
            if fork():
                libc._exit(0)
        libc.prctl(15, b"grader-orphan", 0, 0, 0)
        while True:
            libc.pause()
print('forked')
""".replace("grader-orphan", ORPHAN))]
    kernel = SandboxKernel(work, Limits(cell_timeout=120, memory_bytes=4 * GiB), [])
    kernel.start()
    try:
        runs = kernel.run_notebook(nb, time.monotonic() + 200)
        assert runs[0].status == "ok", runs[0].error
        assert len(named_processes(ORPHAN)) >= 700
    finally:
        started = time.monotonic()
        kernel.close()
        seconds = time.monotonic() - started
    assert isolation.complete(kernel.walls.isolation), kernel.walls.isolation
    assert not named_processes(ORPHAN)
    # One kill; what remains is Linux tearing down 800 copies of a torch kernel: 10.7 s measured at load 7
    # on 2 cores (0.27 s for 800 small processes, tests/grader/test_confinement.py); killed one at a time
    # (issue 9) the same took 800 × ~50 ms on top.
    assert seconds < isolation.TEARDOWN_GRACE, seconds


# ---------------------------------------------------------------------------------------- memory

@linux
@pytest.mark.slow
def test_a_map_shared_memory_bomb_passes_no_limit(tmp_path, honest):
    """Is a function that touches 2 GiB of MAP_SHARED memory (which RLIMIT_DATA does not count) stopped at a
    1 GiB limit, with a message naming the limit, and the rest graded?"""
    bomb = _replace(_definitions(), "q_sample", "")
    right = next(c for c in _definitions() if c.lstrip().startswith("def q_sample("))
    bomb = [c for c in bomb if c] + [right.replace("def q_sample(", "def _honest_q_sample(", 1),
                                     "import mmap\n"
                                     "def q_sample(x0, t, alphas_cumprod, noise=None):\n"
                                     "    region = mmap.mmap(-1, 2 * 1024**3, flags=mmap.MAP_SHARED)\n"
                                     "    for offset in range(0, 2 * 1024**3, 4096):\n"
                                     "        region[offset] = 1\n"
                                     "    return _honest_q_sample(x0, t, alphas_cumprod, noise)\n"]
    limits = Limits(cell_timeout=8, call_timeout=30, batch_timeout=60, memory_bytes=1 * GiB, startup_timeout=60)
    result, _, seconds = _grade(_notebook(tmp_path, bomb), limits)
    _walls_in_force(result)
    for test in result.tests:
        if test.function == "q_sample" and test.max_score:
            assert not test.passed and "exceeded the 1 GiB memory limit" in test.output, test.output
        elif test.function is not None:
            assert test.passed, (test.name, test.output)
    assert seconds < TIMEOUT


# ---------------------------------------------------------------------------------------- the grader itself

@linux
@pytest.mark.slow
def test_the_grader_installed_in_a_writable_folder_is_not_writable(tmp_path):
    """With the grader installed under /tmp (as an editable install may be), can a notebook rewrite its
    report template for itself and the next student?"""
    install = tmp_path / "install"
    for package in ("grader", "reference"):
        shutil.copytree(ROOT / package, install / package, ignore=shutil.ignore_patterns("__pycache__"))
    template = install / "grader" / "templates" / "report.html.j2"
    before = template.read_bytes()
    cells = [GUARD_OFF] + _definitions() + [
        f"open({str(template)!r}, 'w').write('<html>full marks</html>')",
        LIBC + f"fd = libc.open({str(template).encode()!r}, os.O_WRONLY | os.O_TRUNC)\n"
        "print('fd', fd, libc.write(fd, b'x', 1))",
    ]
    folder = _notebook(tmp_path, cells)
    env = dict(os.environ, PYTHONPATH=str(install))
    done = subprocess.run([sys.executable, "-m", "grader", "submit", str(folder), "--out", str(tmp_path / "out"),
                           "--timeout", str(TIMEOUT), "--cell-timeout", "8", "--call-timeout", "3"],
                          capture_output=True, timeout=TIMEOUT + 60, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert template.read_bytes() == before
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------------------- without the walls

@linux
@pytest.mark.slow
def test_without_the_walls_grading_still_works_says_so_and_require_isolation_refuses(tmp_path, honest, monkeypatch,
                                                                                    capsys):
    """Where the walls are unavailable (simulated: the kernel is started without them), is the submission still
    graded with the guard as advice, one warning line on stderr, and refused under --require-isolation?"""
    monkeypatch.setattr(isolation.Walls, "config",
                        lambda self: {"pid_namespace": False, "landlock": None, "report": str(self.report_path)})
    folder = _notebook(tmp_path, _definitions() + ["import reference"])
    result, _, _ = _grade(folder)
    assert result.score == honest.score
    assert "importing `reference` is not allowed" in result.tests[0].output  # the guard's advice
    assert result.isolation["filesystem"] is False and result.isolation["pid_namespace"] is False
    warning = [line for line in capsys.readouterr().err.splitlines() if "not confined" in line]
    assert len(warning) == 1 and "file system" in warning[0]
    with pytest.raises(isolation.IsolationError) as refused:
        grade_submission(folder, SubmitOptions(timeout=TIMEOUT, limits=LIMITS, require_isolation=True))
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value)


def test_grade_batch_require_isolation_refuses_before_grading_anyone(tmp_path, monkeypatch, capsys):
    """Does `grade batch --require-isolation` exit 2 with one line, grading nobody, where a wall is missing?"""
    from grader import cli

    monkeypatch.setattr(isolation, "probe", lambda timeout=30.0: {"landlock_abi": 3, "filesystem": True,
                                                                  "network": False, "signals": False,
                                                                  "pid_namespace": True, "memory": "watchdog"})
    _notebook(tmp_path / "class", _definitions(), name="alice")
    status = cli.main(["batch", str(tmp_path / "class"), "--out", str(tmp_path / "out"), "--require-isolation"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "network, signals" in err[0] and "Landlock ABI 3" in err[0]
    assert not (tmp_path / "out" / "gradebook.csv").exists()
