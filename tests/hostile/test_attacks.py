"""Hostile and broken submissions: each attack is one notebook, graded through the real sandbox.

Every fixture notebook is the q_sampler solution's definitions (no plots: fast)
plus the attack. For each we check what grading.md promises: grading ends in
bounded time; the attacked function gets 0 with a message saying what happened;
the rest of the notebook is still graded (no point lost elsewhere, none gained);
nothing of the submission is left running; the feedback is the grader's own.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.sandbox.kernel import GiB, Limits
from grader.submit import SubmitOptions, grade_submission
from tests.hostile._notebooks import definitions as _definitions
from tests.hostile._notebooks import grade
from tests.hostile._notebooks import notebook as _notebook
from tests.hostile._notebooks import replace as _replace

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

#: Small limits so that the attacks end fast; the bound on each test's wall time follows from them.
LIMITS = Limits(cell_timeout=4, call_timeout=2, batch_timeout=20, memory_bytes=2 * GiB, startup_timeout=60)
TIMEOUT = 240  # whole-submission budget


def _grade(folder: Path, limits: Limits = LIMITS):
    graded = grade(folder, limits, TIMEOUT)
    return graded.result, graded.seconds


def _by_function(result) -> dict[str, list]:
    table: dict[str, list] = {}
    for test in result.tests:
        table.setdefault(test.function, []).append(test)
    return table


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """The honest solution's grade: what every attack is compared with."""
    result, _ = _grade(_notebook(tmp_path_factory.mktemp("honest"), _definitions()))
    assert result.full_marks, [t.output for t in result.tests if not t.passed]
    return result


def _assert_only(result, function: str, *needles: str) -> None:
    """Every test of ``function`` with points failed, with a message holding ``needles``; all others passed."""
    table = _by_function(result)
    for test in table[function]:
        if test.max_score:
            assert not test.passed, test.name
            for needle in needles:
                assert needle in test.output, (needle, test.output)
    for other, tests in table.items():
        if other not in (function, None):
            assert all(t.passed for t in tests), [(t.name, t.output) for t in tests if not t.passed]


def _no_process_left(marker: str) -> None:
    for _ in range(50):
        alive = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                if marker in cmdline and "State:\tZ" not in status:
                    alive.append(pid)
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the submission still alive: {alive}")


LOOP = "def q_sample(x0, t, alphas_cumprod, noise=None):\n    while True:\n        pass\n"


def test_a_cell_that_loops_forever(tmp_path, honest):
    """Is a looping cell interrupted after the cell timeout, and everything else graded?"""
    result, seconds = _grade(_notebook(tmp_path, _definitions() + ["while True:\n    pass\n"]))
    assert result.score == honest.score
    assert "ran longer than 4 s" in result.tests[0].output
    assert seconds < 90


def test_a_function_that_loops_forever(tmp_path, honest):
    """Does a graded function that never returns get 0, 'timed out', with the rest graded?"""
    result, seconds = _grade(_notebook(tmp_path, _replace(_definitions(), "q_sample", LOOP)))
    _assert_only(result, "q_sample", "timed out")
    assert seconds < 150


def test_a_function_that_blocks_signals_and_loops(tmp_path, honest):
    """Is a function that blocks SIGALRM and SIGINT and spins killed from outside, and the rest graded?"""
    body = ("def q_sample(x0, t, alphas_cumprod, noise=None):\n    import signal\n"
            "    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGINT])\n"
            "    while True:\n        pass\n")
    result, seconds = _grade(_notebook(tmp_path, _replace(_definitions(), "q_sample", body)))
    _assert_only(result, "q_sample", "timed out")
    assert seconds < 200


def test_os_exit_in_a_function(tmp_path, honest):
    """Does os._exit(3) cost only that function, with the exit status in the message?"""
    body = "def q_step(x_prev, t, betas, noise=None):\n    import os\n    os._exit(3)\n"
    result, _ = _grade(_notebook(tmp_path, _replace(_definitions(), "q_step", body)))
    _assert_only(result, "q_step", "exited with status 3")


def test_sys_exit_and_keyboard_interrupt(tmp_path, honest):
    """Are sys.exit() and a raised KeyboardInterrupt just errors of those functions?"""
    cells = _replace(_definitions(), "q_step", "def q_step(x_prev, t, betas, noise=None):\n    import sys\n    sys.exit(0)\n")
    cells = _replace(cells, "q_posterior", "def q_posterior(x0, xt, t, betas):\n    raise KeyboardInterrupt\n")
    cells.append("import sys\nsys.exit(1)\n")
    result, _ = _grade(_notebook(tmp_path, cells))
    table = _by_function(result)
    assert all(not t.passed and "SystemExit" in t.output for t in table["q_step"] if t.max_score)
    assert all(not t.passed and "KeyboardInterrupt" in t.output for t in table["q_posterior"] if t.max_score)
    assert all(t.passed for f, ts in table.items() if f not in ("q_step", "q_posterior", None) for t in ts)


def test_memory_exhaustion(tmp_path, honest):
    """Does a function that allocates more than the limit get 0 with 'memory', and the rest graded?"""
    body = ("def q_sample(x0, t, alphas_cumprod, noise=None):\n"
            "    hoard = [torch.empty(128 * 1024**2) for _ in range(32)]  # 16 GiB, 512 MiB at a time\n"
            "    return x0\n")
    cells = _replace(_definitions(), "q_sample", body) + ["big = torch.empty(10**11)"]
    result, _ = _grade(_notebook(tmp_path, cells))
    _assert_only(result, "q_sample", "exceeded the 2 GiB memory limit")
    assert "allocate" in result.tests[0].output


def test_processes_meant_to_outlive_grading(tmp_path, honest):
    """Are subprocesses refused, and a process forked behind the guard's back (ctypes) killed at the end?

    The fork and the exec both go through libc, which no audit hook sees, so the
    process really exists while grading (a later cell finds it in /proc and says
    so): only the kill at the end can make ``_no_process_left`` pass.
    """
    marker = f"grader-test-orphan-{os.getpid()}-{time.monotonic_ns()}"
    cells = _definitions() + [
        "import subprocess\nsubprocess.Popen(['sleep', '1000'])",
        # fork() through libc, escape the session, exec (libc's execv) a long sleep with a recognisable argv[0]
        "import ctypes, os\nlibc = ctypes.CDLL(None)\npid = ctypes.PyDLL(None).fork()  # GIL held: the child owns it\n"
        "if pid == 0:\n    libc.setsid()\n"
        f"    argv = (ctypes.c_char_p * 3)(b'{marker}', b'1000', None)\n"
        "    libc.execv(b'/bin/sleep', argv)\n    libc._exit(1)\n",
        "import os, time\ntime.sleep(1)\nfor p in filter(str.isdigit, os.listdir('/proc')):\n    try:\n"
        f"        if b'{marker}' in open(f'/proc/{{p}}/cmdline', 'rb').read():\n"
        "            print('the orphan is alive while grading')\n    except OSError:\n        pass\n",
    ]
    folder = _notebook(tmp_path, cells)
    result, _ = _grade(folder)
    assert "may not start a process" in result.tests[0].output
    assert result.score == honest.score
    executed = (folder / "feedback" / "q_sampler.executed.ipynb").read_text()
    assert "the orphan is alive while grading" in executed
    _no_process_left(marker)


def test_output_flood(tmp_path, honest):
    """Is a flood of output cut, in the notebook and during calls, without costing points?"""
    cells = _definitions() + ["for i in range(200000):\n    print('spam ' * 20)\n", "print('x' * 10**7)"]
    cells = _replace(cells, "q_step", _definitions_of("q_step").replace("    if noise is None:", "    print('y' * 10**6)\n    if noise is None:", 1))
    result, _ = _grade(_notebook(tmp_path, cells))
    assert result.score == honest.score
    executed = (tmp_path / "q_sampler" / "feedback" / "q_sampler.executed.ipynb").stat().st_size
    assert executed < 5 * LIMITS.output_bytes


def test_the_notebooks_sys_stdout_is_not_the_channels(tmp_path, honest):
    """Does a notebook whose sys.stdout and sys.stderr fail when the grader's worker flushes them (as a log that
    syncs on each flush slows it) still get every point? The outcomes leave without touching the notebook's
    streams; before, each outcome flushed both, and these made every batch of calls fail (and a flush of 0.2 s
    made one grading take 106 s instead of 16)."""
    touchy = ("import sys, traceback\nclass Log:\n    def __init__(self, inner):\n        self.inner = inner\n"
              "    def write(self, text):\n        return self.inner.write(text)\n"
              "    def flush(self):\n"
              "        if any('grader/sandbox/worker' in frame.filename for frame in traceback.extract_stack()):\n"
              "            raise OSError('this log cannot flush now')\n"
              "        self.inner.flush()\n"
              "sys.stdout, sys.stderr = Log(sys.stdout), Log(sys.stderr)\n")
    result, _ = _grade(_notebook(tmp_path, _definitions() + [touchy]))
    assert result.score == honest.score, [(t.name, t.output) for t in result.tests if not t.passed]


def _definitions_of(function: str) -> str:
    return next(c for c in _definitions() if c.lstrip().startswith(f"def {function}("))


def test_monkey_patching_comparisons_gains_nothing(tmp_path, honest):
    """Does patching torch's comparisons in the kernel leave a wrong answer wrong?"""
    patch = ("import torch, numpy\ntorch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
             "torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)\n"
             "numpy.allclose = lambda *a, **k: True\n")
    wrong = _definitions_of("q_sample").replace("alphas_cumprod.sqrt()", "alphas_cumprod")
    result, _ = _grade(_notebook(tmp_path, [patch] + _replace(_definitions(), "q_sample", wrong)))
    values = next(t for t in result.tests if t.name == "q_sample: matches the reference")
    assert not values.passed


def test_objects_that_fake_equality(tmp_path, honest):
    """Does a tensor subclass with __torch_function__ (and other fakes) earn nothing, with a clear message?"""
    fake = ("class Liar(torch.Tensor):\n"
            "    @classmethod\n    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
            "        return True\n"
            "    def __eq__(self, other):\n        return True\n\n"
            "def q_sample(x0, t, alphas_cumprod, noise=None):\n    return x0.as_subclass(Liar)\n")
    result, _ = _grade(_notebook(tmp_path, _replace(_definitions(), "q_sample", fake)))
    _assert_only(result, "q_sample")
    assert any("subclass" in t.output for t in result.tests if t.function == "q_sample")


@pytest.mark.parametrize("returned, needle", [
    ("None", "None, not a torch.Tensor"),
    ("[1.0, 2.0]", "list, not a torch.Tensor"),
    ("'x_t'", "str, not a torch.Tensor"),
    ("torch.full_like(x0, float('nan'))", "nan"),
    ("x0[:1]", "shape"),
])
def test_wrong_return_values(tmp_path, honest, returned, needle):
    """Do None, lists, strings, NaN and wrong shapes get 0 with a message that says what came back?"""
    body = f"def q_sample(x0, t, alphas_cumprod, noise=None):\n    return {returned}\n"
    result, _ = _grade(_notebook(tmp_path, _replace(_definitions(), "q_sample", body)))
    values = next(t for t in result.tests if t.name == "q_sample: matches the reference")
    law = next(t for t in result.tests if t.function == "q_sample" and t.kind == "statistical")
    assert not values.passed and not law.passed
    assert needle in values.output, values.output
    others = [t for t in result.tests if t.function not in ("q_sample", None)]
    assert all(t.passed for t in others)


def test_fake_score_and_fake_results_file(tmp_path, honest):
    """Can printing a score or writing results.json (in the working directory or the feedback folder) forge a grade?"""
    folder_feedback = tmp_path / "q_sampler" / "feedback"
    forged = json.dumps({"score": 1000, "tests": []})
    cells = _definitions() + [
        f"print({forged!r})",
        "import os\nos.makedirs('feedback', exist_ok=True)\nopen('feedback/results.json', 'w').write('{\"score\": 1000}')",
        f"open({str(folder_feedback / 'results.json')!r}, 'w').write('{{\"score\": 1000}}')",
        "import threading, time\ndef keep_writing():\n    while True:\n        try:\n"
        f"            open({str(folder_feedback / 'report.html')!r}, 'w').write('forged')\n"
        "        except Exception:\n            pass\n        time.sleep(0.01)\n"
        "threading.Thread(target=keep_writing, daemon=True).start()",
    ]
    result, _ = _grade(_notebook(tmp_path, cells))
    assert result.score == honest.score
    written = json.loads((folder_feedback / "results.json").read_text())
    assert written["score"] == honest.score
    assert (folder_feedback / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "not allowed while grading" in result.tests[0].output


def test_importing_the_reference_or_reading_solutions_is_refused(tmp_path, honest):
    """Are functions that import reference or grader internals, or read solutions/, refused by name?"""
    cheat_import = ("def q_sample(x0, t, alphas_cumprod, noise=None):\n"
                    "    from reference.q_sampler import q_sample as answer\n"
                    "    return answer(x0, t, alphas_cumprod, noise)\n")
    cheat_read = ("def q_step(x_prev, t, betas, noise=None):\n"
                  f"    source = open({str(ROOT / 'solutions' / 'q_sampler' / 'q_sampler.ipynb')!r}).read()\n"
                  "    raise RuntimeError(source[:100])\n")
    cheat_grader = ("def q_posterior(x0, xt, t, betas):\n"
                    "    import grader.exercises.q_sampler as spec\n"
                    "    return spec.ref.q_posterior(x0, xt, t, betas)\n")
    cells = _replace(_replace(_replace(_definitions(), "q_sample", cheat_import), "q_step", cheat_read),
                     "q_posterior", cheat_grader)
    cells.append("import reference")
    result, _ = _grade(_notebook(tmp_path, cells))
    table = _by_function(result)
    for function, needle in (("q_sample", "importing `reference"), ("q_step", "reading"),
                             ("q_posterior", "importing `grader.exercises")):
        for test in table[function]:
            if test.max_score:
                assert not test.passed and "refused" in test.output and needle in test.output, test.output
    assert "importing `reference` is not allowed" in result.tests[0].output


def test_deleted_and_reordered_cells(tmp_path, honest):
    """Does deleting a function's cell cost only that function, and reordering cost nothing?"""
    cells = [c for c in _definitions() if not c.lstrip().startswith("def q_step(")]
    cells = [cells[0]] + list(reversed(cells[1:]))  # definitions in reverse order
    result, _ = _grade(_notebook(tmp_path, cells))
    _assert_only(result, "q_step", "not defined")


def test_the_whole_submission_budget_bounds_grading(tmp_path):
    """Does a notebook of slow cells stop at --timeout, with what was not run saying so?

    The bound: the budget, plus at most one interrupt grace (3 s) and one kernel
    start; here 12 s of budget, so well under 60 s even on a loaded machine.
    """
    cells = _definitions() + ["import time\ntime.sleep(3)"] * 10
    started = time.monotonic()
    result, notebook = grade_submission(_notebook(tmp_path, cells), SubmitOptions(timeout=12, limits=LIMITS))
    assert time.monotonic() - started < 60
    assert "time budget was spent" in result.tests[0].output
    assert any("time budget was spent" in t.output for t in result.tests if t.max_score)


# -- The grader trusts nothing the kernel can write, name or race (see also test_channel.py) --------------

#: Escape sequences (erase the screen, colours, a window title, a hyperlink), a carriage return, a
#: backspace, a C1 CSI, a bidi override and a lone surrogate: what a submission may put in an error.
HOSTILE = "\x1b[2J\x1b[31mFULL MARKS\x1b[0m\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\r\x08\x9b1m\u202e\ud800"
#: What the grader keeps of one test's feedback (grader.submit.OUTPUT_CHARS), plus its cut note.
MAX_OUTPUT = 10_000 + 100


def _assert_clean(folder: Path, score: float, max_bytes: int = 1_000_000) -> None:
    """results.json and the report are small, parse, and hold no escape or control character."""
    feedback = folder / "feedback"
    raw = (feedback / "results.json").read_bytes()
    assert len(raw) < max_bytes, len(raw)
    assert (feedback / "report.html").stat().st_size < 2 * max_bytes
    results = json.loads(raw.decode("utf-8"))
    assert results["score"] == score
    bad = [text for text in _strings(results) if any(_unsafe(ch) for ch in text)]
    assert not bad, bad[:3]


def _unsafe(ch: str) -> bool:
    """A character that must not reach a terminal: C0 but tab and newline, DEL, C1, bidi overrides, surrogates."""
    code = ord(ch)
    return (code < 32 and ch not in "\t\n") or 0x7f <= code <= 0x9f or 0x202a <= code <= 0x202e \
        or 0x2066 <= code <= 0x2069 or 0xd800 <= code <= 0xdfff


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_pre_created_batch_folders_change_nothing(tmp_path, honest):
    """Do folders (and FIFOs) where the old channel's files were change the grade? (They made it 0/24.)"""
    plant = ("import os\nfor n in range(1, 300):\n    os.makedirs(f'.grader-batch-{n}', exist_ok=True)\n"
             "    for name in ('request.pt', '0.pt', '1.pt'):\n"
             "        path = f'.grader-batch-{n}/{name}'\n        if not os.path.exists(path):\n"
             "            os.mkfifo(path)\n")
    folder = _notebook(tmp_path, _definitions() + [plant])
    result, seconds = _grade(folder)
    assert result.score == honest.score, [t.output for t in result.tests if not t.passed]
    assert result.tests[0].passed
    _assert_clean(folder, result.score)


def test_a_thread_racing_links_and_fifos_into_new_folders_changes_nothing(tmp_path, honest):
    """Does a thread that plants FIFOs and links to the original notebook in every new folder gain
    anything, block the grader, or make it write through a link?"""
    original = tmp_path / "q_sampler" / "q_sampler.ipynb"
    race = ("import os, threading\n"
            "def plant():\n    while True:\n        for entry in os.scandir('.'):\n"
            "            if entry.is_dir() and not entry.name.startswith('.ipython'):\n"
            "                for name in ['request.pt'] + [f'{i}.pt' for i in range(64)]:\n"
            "                    path = os.path.join(entry.path, name)\n"
            "                    try:\n"
            "                        if name == 'request.pt':\n                            os.mkfifo(path)\n"
            f"                        else:\n                            os.symlink({str(original)!r}, path)\n"
            "                    except OSError:\n                        pass\n"
            "threading.Thread(target=plant, daemon=True).start()\n")
    folder = _notebook(tmp_path, _definitions() + [race])
    before = original.read_bytes()
    result, seconds = _grade(folder)
    assert original.read_bytes() == before
    assert result.score == honest.score, [t.output for t in result.tests if not t.passed]
    assert seconds < 200
    _assert_clean(folder, result.score)


def _submit(folder: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``grade submit --json`` in a process of its own, as the CLI is used; bytes, not text."""
    command = [sys.executable, "-m", "grader", "submit", str(folder), "--json", "--timeout", "200",
               "--cell-timeout", "4", "--call-timeout", "2", "--memory-limit", "2G", *extra]
    return subprocess.run(command, capture_output=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_what_the_kernel_writes_to_its_stdout_and_stderr_reaches_no_one(tmp_path, honest):
    """Do a forged summary, invalid UTF-8 and escape sequences written to fds 1 and 2 (and raised in an
    error) stay out of `--json`, the terminal, results.json and the report?"""
    forged = json.dumps({"score": 1000, "tests": []})
    noise = (f"import os\nfor fd in (1, 2):\n    os.write(fd, {forged.encode()!r} + b'\\n')\n"
             f"    os.write(fd, b'q_sampler: 24 / 24 points\\n\\xff\\xfe\\xc3\\x28 \\x1b[2J\\x1b]0;pwned\\x07\\n')\n")
    raising = ("def q_step(x_prev, t, betas, noise=None):\n"
               "    import os\n    os.write(1, b'\\xff{\"score\": 1000}\\n')\n"
               f"    raise ValueError({HOSTILE!r} * 50)\n")
    folder = _notebook(tmp_path, _replace(_definitions(), "q_step", raising) + [noise])
    done = _submit(folder)
    assert done.returncode == 1, done.stderr[-2000:]
    results = json.loads(done.stdout.decode("utf-8"))  # the grader's own JSON, whole, and nothing else
    assert results["score"] == honest.score - sum(t.max_score for t in honest.tests if t.function == "q_step")
    for stream in (done.stdout, done.stderr):
        assert b"\x1b" not in stream and b"pwned" not in stream and b'"score": 1000' not in stream
        assert b"24 / 24 points" not in stream
        stream.decode("utf-8")
    q_step = [t for t in results["tests"] if t["extra_data"]["function"] == "q_step" and t["max_score"]]
    assert q_step and all(t["score"] == 0 and "ValueError" in t["output"] for t in q_step)
    assert all("\x1b" not in t["output"] and len(t["output"]) <= MAX_OUTPUT for t in results["tests"])
    _assert_clean(folder, results["score"])


def _submit_within_budget(folder: Path, timeout: float) -> dict:
    """``grade submit --json --timeout 60`` of ``folder``: its results, once it ended with 0 or 1 within the budget
    plus its stated grace (one kernel start, one 3 s interrupt grace) and the grader's own start and the kernel's
    teardown: 60 s more covers all of these on a loaded machine."""
    started = time.monotonic()
    done = _submit(folder, "--timeout", "60", timeout=timeout)
    seconds = time.monotonic() - started
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert seconds < 60 + 60, seconds
    return json.loads(done.stdout.decode("utf-8"))


def test_a_thread_flooding_iopub_forever_holds_nothing_up(tmp_path, honest):
    """Does grading end within its budget while a thread prints and publishes without a pause, with no
    point gained? (The old drain waited for 10 ms of quiet, which never came.) The flood may cost the
    flooder calls whose results it drowned, and then the message says so."""
    flood = ("import sys, threading\nfrom IPython.display import display\n"
             "def flood():\n    while True:\n        print('flood ' * 20)\n        sys.stdout.flush()\n"
             "        display({'text/plain': 'flood'}, raw=True)\n"
             "for _ in range(4):\n    threading.Thread(target=flood, daemon=True).start()\n")
    folder = _notebook(tmp_path, _definitions() + [flood])
    results = _submit_within_budget(folder, timeout=400)
    assert results["score"] <= honest.score
    lost = [t["output"] for t in results["tests"] if t["status"] == "failed"]
    needles = ("kept the channel busy", "timed out", "not run", "time budget")
    assert all(any(n in output for n in needles) for output in lost), lost
    _assert_clean(folder, results["score"])
    assert (folder / "feedback" / "q_sampler.executed.ipynb").stat().st_size < 5 * LIMITS.output_bytes


#: A cell that writes junk into every socket the kernel holds: its ZeroMQ connections to the grader among them.
_JUNK = ("import os\n"
         "for fd in map(int, os.listdir('/proc/self/fd')):\n"
         "    try:\n"
         "        if fd > 2 and os.readlink(f'/proc/self/fd/{fd}').startswith('socket:'):\n"
         "            os.set_blocking(fd, False)\n"
         "            os.write(fd, b'not a ZeroMQ frame\\n' * 64)\n"
         "    except OSError:\n"
         "        pass\n")


def test_junk_written_into_the_kernels_sockets_holds_nothing_up(tmp_path, honest):
    """A cell writes junk into its kernel's ZeroMQ sockets, which drops the grader's connections: does grading
    still end within its budget, the cell reported as the kernel's loss, with no point gained? (jupyter_client
    sends with a blocking send: the grader's next request waited forever for a peer that was gone. Seen hanging in
    2 of 2 runs of this test, and in 5 of 6 of test_zygote's descriptor test, before the send timeout.)"""
    folder = _notebook(tmp_path, _definitions() + [_JUNK])
    results = _submit_within_budget(folder, timeout=200)
    assert results["score"] <= honest.score
    assert "no longer answered and was started afresh" in results["tests"][0]["output"], results["tests"][0]["output"]
    _assert_clean(folder, results["score"])


def test_a_patched_worker_cap_makes_no_huge_feedback(tmp_path, honest):
    """Does lifting the worker's message cap in the kernel (and raising 16 MB messages) leave
    results.json and the report small? (It made a 16 MB results.json and a 32 MB report.)"""
    patch = ("import sys\nworker = sys.modules['grader.sandbox.worker']\nworker._MAX_MESSAGE = 10**9\n")
    huge = ("def q_sample(x0, t, alphas_cumprod, noise=None):\n"
            "    raise RuntimeError('\\x1b[31m' + 'x' * 16_000_000)\n")
    folder = _notebook(tmp_path, [patch] + _replace(_definitions(), "q_sample", huge))
    result, _ = _grade(folder)
    table = _by_function(result)
    assert all(not t.passed and "RuntimeError" in t.output for t in table["q_sample"] if t.max_score)
    assert all(t.passed for f, ts in table.items() if f not in ("q_sample", None) for t in ts)
    _assert_clean(folder, result.score)


def test_meta_sparse_and_complex_results_are_clear_failures(tmp_path, honest):
    """Are results on the meta device, sparse or complex a failed test that says so, never 'the grader failed'?"""
    cells = _replace(_definitions(), "q_sample",
                     "def q_sample(x0, t, alphas_cumprod, noise=None):\n    return torch.empty_like(x0, device='meta')\n")
    cells = _replace(cells, "q_step",
                     "def q_step(x_prev, t, betas, noise=None):\n    return x_prev.to(torch.complex128)\n")
    cells = _replace(cells, "linear_beta_schedule",
                     "def linear_beta_schedule(T, beta_start=1e-4, beta_end=0.02):\n"
                     "    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64).to_sparse()\n")
    folder = _notebook(tmp_path, cells)
    result, _ = _grade(folder)
    table = _by_function(result)
    for function, needle in (("q_sample", "meta device"), ("q_step", "complex"), ("linear_beta_schedule", "sparse")):
        graded = [t for t in table[function] if t.max_score]
        assert graded and not any(t.passed for t in graded), function
        assert not any("please report" in t.output or "grader failed" in t.output for t in graded), \
            [t.output for t in graded]
        assert any(needle in t.output for t in graded), (function, [t.output for t in graded])
    _assert_clean(folder, result.score)


def test_grade_batch_writes_every_row_whatever_one_student_prints(tmp_path, honest):
    """Does a student who writes invalid UTF-8, escapes and a forged summary to the real stdout and
    stderr leave `grade batch` writing every row? (One invalid byte made it exit 2, no gradebook.)"""
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    noise = ("import os\nfor fd in (1, 2):\n    os.write(fd, b'\\xff\\xfe\\x80 \\x1b[2J\\x1b]0;pwned\\x07\\n')\n"
             "    os.write(fd, b'mallory,q_sampler,24,24,full marks\\nq_sampler: 24 / 24 points\\n')\n")
    for student, cells in (("alice", _definitions()), ("mallory", _definitions() + [noise])):
        (tmp_path / student).mkdir()
        _notebook(tmp_path / student, cells).rename(class_dir / student)
    out = tmp_path / "gradebook"
    command = [sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out), "--jobs", "1",
               "--exercise", "q_sampler", "--timeout", "200", "--cell-timeout", "4", "--call-timeout", "2",
               "--memory-limit", "2G"]
    done = subprocess.run(command, capture_output=True, timeout=900, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    for stream in (done.stdout, done.stderr):
        assert b"\x1b" not in stream and b"pwned" not in stream and b"\xff" not in stream
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").read_text().splitlines())}
    assert set(rows) == {"alice", "mallory"}
    assert float(rows["alice"]["score"]) == float(rows["mallory"]["score"]) == honest.score
