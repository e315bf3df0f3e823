"""grade batch: one gradebook row per notebook, blank (never 0) for what was not graded, resumable, a course sheet.

The fast tests build rows by hand; the slow ones grade real notebooks, kill a batch
mid-way and start it again, and grade on a Dask LocalCluster whose worker is killed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grader import batch
from grader.batch import FULL_MARKS, GRADED, PENDING, UNGRADABLE, Item, Row, content_hash, find_items
from grader.cli import main
from grader.progress import Progress, format_duration
from grader.submit import SubmitOptions

ROOT = Path(__file__).resolve().parents[2]


def _results(exercise: str, score: float, max_score: float, points: dict[str, float]) -> dict:
    tests = [{"name": f"{f}: matches", "score": p, "max_score": 1, "extra_data": {"function": f}}
             for f, p in points.items()]
    return {"score": score, "tests": tests, "extra_data": {"exercise": exercise, "max_score": max_score}}


def _read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_not_graded_is_blank_not_zero_and_says_why(tmp_path):
    """Does an ungradable or pending notebook get blank scores and a status, and a mixed class blanks, not 0?"""
    rows = [
        Row(Item("alice", Path("alice/q_sampler.ipynb"), "alice"), GRADED,
            _results("q_sampler", 3, 24, {"q_sample": 3, "q_step": 0})),
        Row(Item("bob", Path("bob/elbo.ipynb"), "bob"), FULL_MARKS, _results("elbo", 24, 24, {"normal_kl": 2})),
        Row(Item("carol", Path("carol.ipynb"), "carol"), UNGRADABLE, None, "carol.ipynb is not a notebook"),
        Row(Item("dave", Path("dave.ipynb"), "dave"), PENDING),
    ]
    batch.write_gradebook(rows, tmp_path / "gradebook.csv")
    book = {row["student"]: row for row in _read(tmp_path / "gradebook.csv")}
    assert book["alice"]["score"] == "3" and book["alice"]["q_step"] == "0" and book["alice"]["normal_kl"] == ""
    assert book["bob"]["q_sample"] == "" and book["bob"]["normal_kl"] == "2"  # never graded on q_sample: blank
    for who, status in (("carol", UNGRADABLE), ("dave", PENDING)):
        assert book[who]["status"] == status
        assert all(book[who][c] == "" for c in ("score", "max_score", "q_sample", "normal_kl")), book[who]
    assert "not a notebook" in book["carol"]["error"]


def test_course_sheet_one_row_per_student_one_column_per_exercise(tmp_path):
    """Does the course sheet give each student one row, a score per exercise, blank where nothing was graded?"""
    rows = [
        Row(Item("alice", Path("a/q_sampler.ipynb"), "alice/q_sampler"), GRADED, _results("q_sampler", 16, 24, {})),
        Row(Item("alice", Path("a/elbo.ipynb"), "alice/elbo"), UNGRADABLE, None, "invalid JSON"),
        Row(Item("bob", Path("b/elbo.ipynb"), "bob/elbo"), FULL_MARKS, _results("elbo", 24, 24, {})),
    ]
    batch.write_course_sheet(rows, tmp_path / "course.csv")
    sheet = _read(tmp_path / "course.csv")
    assert [r["student"] for r in sheet] == ["alice", "bob"]
    assert sheet[0]["q_sampler"] == "16" and sheet[0]["elbo"] == ""
    assert sheet[1]["q_sampler"] == "" and sheet[1]["elbo"] == "24"


@pytest.mark.parametrize("hostile", ["=HYPERLINK(\"http://x\",\"click\")", "+1+1", "@SUM(A1)", "-2+3"])
def test_a_students_text_is_never_a_formula_or_a_second_row(tmp_path, hostile):
    """Can a folder name or an error message run as a spreadsheet formula, or add a line to the CSV?"""
    rows = [Row(Item(hostile, Path("x.ipynb"), "x"), UNGRADABLE, None, f"{hostile}\nfake,row,0\r\n\x1b[31m"),
            Row(Item("next", Path("n.ipynb"), "n"), GRADED, _results("q_sampler", 5, 24, {"q_sample": 5}))]
    batch.write_gradebook(rows, tmp_path / "gradebook.csv")
    raw = (tmp_path / "gradebook.csv").read_text(encoding="utf-8")
    book = list(csv.reader(io.StringIO(raw)))
    assert len(book) == 3  # header, the hostile row, the next student's row: nothing injected
    assert book[1][0] == "'" + hostile and book[1][-1].startswith("'" + hostile)
    assert "\x1b" not in raw and book[2][0] == "next" and book[2][3] == "5"


def test_course_folder_items_and_the_content_hash(tmp_path):
    """Is each notebook of a course folder its own item, and does the hash change with the bytes and the options?"""
    shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", tmp_path / "solo.ipynb")
    (tmp_path / "ann").mkdir()
    for name in ("q_sampler", "elbo"):
        notebook = nbformat.read(ROOT / "exercises" / name / f"{name}.ipynb", as_version=4)
        notebook.metadata.pop("grader", None)  # metadata lost: the notebook's name says the exercise
        nbformat.write(notebook, tmp_path / "ann" / f"{name}.ipynb")
    (tmp_path / "ann" / "elbo.executed.ipynb").write_text("{}")  # an old executed copy is not a submission
    (tmp_path / "gradebook").mkdir()  # the batch's own output, inside the submissions folder
    items = {i.key: i for i in find_items(tmp_path, skip=(tmp_path / "gradebook").resolve())}
    assert set(items) == {"solo", "ann/q_sampler", "ann/elbo"}
    assert items["ann/elbo"].exercise == "elbo" and items["solo"].exercise is None
    options = SubmitOptions()
    first = content_hash(items["solo"], options)
    assert content_hash(items["solo"], options) == first
    assert content_hash(items["solo"], SubmitOptions(seed=1)) != first
    (tmp_path / "solo.ipynb").write_bytes((tmp_path / "solo.ipynb").read_bytes() + b" ")
    assert content_hash(items["solo"], options) != first


def test_a_record_is_kept_only_for_the_same_hash(tmp_path):
    """Is a finished grading reused when nothing changed, and not when the hash differs or the record is damaged?"""
    item = Item("alice", tmp_path / "alice.ipynb", "alice")
    (tmp_path / "alice").mkdir()
    row = Row(item, GRADED, _results("q_sampler", 7, 24, {"q_sample": 2}), "", 1)
    batch._save_record(tmp_path, row, "abc")
    kept = batch._load_record(tmp_path, item, "abc")
    assert kept is not None and kept.kept and kept.results["score"] == 7 and kept.status == GRADED
    assert batch._load_record(tmp_path, item, "abd") is None
    batch._save_record(tmp_path, Row(item, batch.FAILED, None, "the cluster could not grade it: KilledWorker"), "abc")
    assert batch._load_record(tmp_path, item, "abc") is None  # the grader's own failure is tried again
    batch._save_record(tmp_path, Row(item, UNGRADABLE, None, "invalid JSON", 2), "abc")
    assert batch._load_record(tmp_path, item, "abc").status == UNGRADABLE  # the same bytes: the same verdict
    (tmp_path / "alice" / batch.RECORD).write_text("{ half a rec")
    assert batch._load_record(tmp_path, item, "abc") is None


def test_progress_plain_lines_with_counts_and_eta():
    """Without a terminal, is each finished notebook one line with the counts and an ETA from this run's rate?"""
    stream, now = io.StringIO(), [0.0]
    progress = Progress(4, already=1, stream=stream, clock=lambda: now[0])
    now[0] = 30.0
    progress.advance("alice", "16/24")
    now[0] = 60.0
    progress.advance("bob", "not gradable")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[2/4] alice: 16/24 (30s elapsed, ETA 1m00s)"  # 30 s per notebook, 2 left
    assert lines[1] == "[3/4] bob: not gradable (1m00s elapsed, ETA 30s)"
    assert format_duration(3725) == "1h02m"


def test_progress_bar_on_a_terminal(monkeypatch):
    """On a terminal (and not in CI), is it tqdm's bar with the counts?"""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    stream = Terminal()
    progress = Progress(3, stream=stream)
    progress.advance("alice", "16/24")
    progress.close()
    assert progress._bar is not None and "1/3" in stream.getvalue()
    monkeypatch.setenv("CI", "true")
    assert Progress(3, stream=Terminal())._bar is None


def test_one_line_bounds_any_bytes():
    """Is whatever a grader's stderr held reduced to one printable line of bounded length?"""
    line = batch.one_line("a\nb\x00c\x1b[2J" + "x" * 1000)
    assert "\n" not in line and "\x00" not in line and "\x1b" not in line and len(line) <= batch.ERROR_CHARS + 1


# ----------------------------------------------------------------------------------------- end to end

def _class(folder: Path) -> Path:
    class_dir = folder / "submissions"
    class_dir.mkdir()
    shutil.copytree(ROOT / "samples" / "alice", class_dir / "alice")
    shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / "bob.ipynb")
    (class_dir / "carol").mkdir()
    (class_dir / "carol" / "q_sampler.ipynb").write_text("{ not json")
    return class_dir


@pytest.mark.slow
def test_a_class_with_a_good_a_partial_and_a_broken_submission(tmp_path, capsys):
    """Does every student get a row — points per function, or why they could not be graded — and feedback?"""
    class_dir = _class(tmp_path)
    out = tmp_path / "gradebook"

    status = main(["batch", str(class_dir), "--out", str(out), "--jobs", "2", "--exercise", "q_sampler",
                   "--progress", "lines"])

    assert status == 1  # carol's notebook could not be graded
    rows = {row["student"]: row for row in _read(out / "gradebook.csv")}
    assert set(rows) == {"alice", "bob", "carol"}
    alice = json.loads((out / "alice" / "results.json").read_text())
    assert float(rows["alice"]["score"]) == alice["score"] and 0 < alice["score"] < 24
    assert rows["alice"]["linear_beta_schedule"] == "2" and rows["alice"]["status"] == GRADED
    assert float(rows["bob"]["score"]) == 0 and rows["bob"]["status"] == GRADED
    assert rows["carol"]["status"] == UNGRADABLE and "invalid JSON" in rows["carol"]["error"]
    assert rows["carol"]["score"] == "" and rows["carol"]["q_sample"] == ""
    assert (out / "bob" / "report.html").is_file()
    assert {r["student"] for r in _read(out / "course.csv")} == {"alice", "bob", "carol"}
    captured = capsys.readouterr()
    assert "2 of 3 submissions graded" in captured.out and "[3/3]" in captured.err


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes() \
                    and (entry / "stat").read_text().split(") ")[-1][0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _records(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"*/{batch.RECORD}")}


@pytest.mark.slow
def test_killed_mid_batch_and_started_again_grades_only_what_is_missing(tmp_path):
    """Killed (SIGKILL) after the first notebook, does a rerun keep it, grade the rest, and regrade a changed one?"""
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    for name in ("ann", "ben", "cat"):
        shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / f"{name}.ipynb")
    out = tmp_path / "gradebook"
    command = [sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out), "--jobs", "1",
               "--device", "cpu", "--progress", "lines", "--exercise", "q_sampler"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _records(out) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = _records(out)
    assert len(first) == 1, first  # one graded, killed during the second
    deadline = time.monotonic() + 10  # the parent-death signal is immediate; a kernel's clean-up is not needed
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(out))  # the killed batch's grader died with it
    book = {r["student"]: r for r in _read(out / "gradebook.csv")}
    (done,) = first
    assert book[done]["status"] == GRADED and all(book[s]["status"] == PENDING for s in book if s != done)

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 of 3 notebooks unchanged since they were graded: kept" in again.stderr
    second = _records(out)
    assert second[done] == first[done] and set(second) == {"ann", "ben", "cat"}  # kept, not redone
    assert {r["status"] for r in _read(out / "gradebook.csv")} == {GRADED}

    changed = next(s for s in ("ann", "ben", "cat") if s != done)
    solution = nbformat.read(ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb", as_version=4)
    nbformat.write(solution, class_dir / f"{changed}.ipynb")
    third = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "2 of 3 notebooks unchanged" in third.stderr
    records = _records(out)
    assert records[changed] != second[changed] and all(records[s] == second[s] for s in records if s != changed)
    assert {r["student"]: r["score"] for r in _read(out / "gradebook.csv")}[changed] == "24"


@pytest.mark.slow
def test_dask_cluster_with_a_worker_killed_mid_batch(tmp_path):
    """On a LocalCluster of 2 workers, is every notebook graded, streamed into the gradebook, when a worker dies?"""
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed")
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    for name in ("ann", "ben", "cat", "dan"):
        shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / f"{name}.ipynb")
    (class_dir / "eve.ipynb").write_text("{ not json")
    out = tmp_path / "gradebook"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        command = [sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out),
                   "--scheduler", cluster.scheduler_address, "--device", "cpu", "--progress", "lines"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        busy: dict = {}
        while time.monotonic() < deadline and process.poll() is None:
            # a gradable student's task: eve's is refused at once and leaves no feedback to look for
            busy = {w: [k for k in keys if str(k).split("-")[1] != "eve"] for w, keys in client.processing().items()}
            busy = {w: keys for w, keys in busy.items() if keys}
            if busy:
                break
            time.sleep(0.2)
        assert busy, "no task started"
        victim = next(iter(busy))
        killed_key = next(iter(busy[victim]))
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-task; its nanny starts another
        stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 1, stderr  # eve's notebook is not gradable, everything else is graded
    book = {r["student"]: r for r in _read(out / "gradebook.csv")}
    assert {s: r["status"] for s, r in book.items()} == {"ann": GRADED, "ben": GRADED, "cat": GRADED, "dan": GRADED,
                                                         "eve": UNGRADABLE}
    assert all(book[s]["score"] == "0" for s in ("ann", "ben", "cat", "dan")) and book["eve"]["score"] == ""
    student = str(killed_key).split("-")[1]
    assert (out / student / "report.html").is_file()  # the killed task was rerun elsewhere, its feedback is here
    assert stderr.count("[") >= 5  # streamed: one progress line per notebook


# ----------------------------------------------------------------------------------------- job slots

#: A stand-in for a slot's process (``python -m grader.batch --slot OUT``) that speaks its protocol,
#: grades nothing, and dies (exit 3) on a notebook named "dies": what the batch does around it is tested.
_FAKE_SLOT = r"""
import json, os, sys
from pathlib import Path
first = json.loads(sys.stdin.readline())
job = json.loads(sys.stdin.readline() or "null")
while job:
    print(json.dumps({"want": True}), flush=True)
    following = json.loads(sys.stdin.readline() or "null")
    if job["key"] == "dies":
        print("grader: something broke", file=sys.stderr, flush=True)
        os._exit(3)
    results = {"score": 1, "tests": [], "extra_data": {"exercise": "q_sampler", "max_score": 24, "pid": os.getpid()}}
    Path(job["out"], "results.json").write_text(json.dumps(results))
    print(json.dumps({"done": job["key"], "exit": 1, "error": ""}), flush=True)
    job = following
"""


def test_a_slot_that_dies_fails_its_row_and_a_fresh_one_takes_the_next(tmp_path, monkeypatch):
    """When a slot's process dies mid-grading, is that row 'grader failed' (with why), and the rest graded by a new one?"""
    script = tmp_path / "slot.py"
    script.write_text(_FAKE_SLOT)
    monkeypatch.setattr(batch._Slot, "command", [sys.executable, str(script)])
    monkeypatch.setattr(batch._Slot, "pristine", None)
    items = [Item(name, tmp_path / f"{name}.ipynb", name) for name in ("ann", "dies", "cat", "dan")]
    rows: dict[str, Row] = {}
    batch._run_local([(item, "h") for item in items], tmp_path / "out", SubmitOptions(timeout=60), 1,
                     lambda row, digest: rows.__setitem__(row.item.key, row))
    assert set(rows) == {"ann", "dies", "cat", "dan"}
    assert rows["dies"].status == batch.FAILED and rows["dies"].results is None
    assert "the grading process died (exit status 3): grader: something broke" == rows["dies"].error
    assert all(rows[k].status == GRADED and rows[k].results["score"] == 1 for k in ("ann", "cat", "dan")), rows
    pids = {k: rows[k].results["extra_data"]["pid"] for k in ("ann", "cat", "dan")}
    # cat had been handed to the dying process as its next job: a fresh process graded it, and dan after it.
    assert pids["ann"] != pids["cat"] == pids["dan"]


def test_a_slot_starts_pristine_only_where_it_can_fork_its_zygote(tmp_path, monkeypatch):
    """Is a slot started pristine (in its zygote's environment, its own sent first) on Linux with one torch
    thread, and as ever with more threads (torch starts them at its import: no zygote can be forked), with
    GRADER_ZYGOTE=0 (every kernel cold) or with GRADER_PRISTINE_SLOT=0?"""
    import io

    from grader.sandbox.kernel import Limits
    from grader.sandbox.zygote import environment

    started = []

    class Recorder:
        def __init__(self, command, env, **kwargs):
            self.stdin, self.stdout, self.stderr = io.BytesIO(), io.BytesIO(), io.BytesIO()
            started.append((command, env, self.stdin))

    monkeypatch.setattr(batch.subprocess, "Popen", Recorder)
    monkeypatch.setattr(batch.sys, "platform", "linux")
    monkeypatch.delenv("GRADER_ZYGOTE", raising=False)
    monkeypatch.delenv("GRADER_PRISTINE_SLOT", raising=False)

    def start(threads, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        options = SubmitOptions(limits=Limits(threads=threads))
        batch._Slot(tmp_path, options, None, None)._start()
        for name in env:
            monkeypatch.delenv(name)
        command, env_, stdin = started.pop()
        return command, env_, json.loads(stdin.getvalue().decode().splitlines()[0])

    own = {**os.environ, "OMP_NUM_THREADS": "1"}
    command, env, first = start(1)
    assert command == [sys.executable, "-m", "grader.sandbox.launch", "--slot", "1"]
    assert env == environment(Limits(threads=1), base=own) and first["env"] == own
    assert env["MPLBACKEND"] != own.get("MPLBACKEND")  # a zygote's environment, not the slot's
    assert batch._options_from_json(first["options"]) == SubmitOptions(limits=Limits(threads=1))
    for threads, env in ((2, {}), (1, {"GRADER_ZYGOTE": "0"}), (1, {"GRADER_PRISTINE_SLOT": "0"})):
        command, env_, first = start(threads, **env)
        assert command == [sys.executable, "-m", "grader.batch", "--slot", str(tmp_path)], (threads, env)
        assert "env" not in first and env_ == {**os.environ, **env, "OMP_NUM_THREADS": "1"}


def test_slot_options_travel_whole():
    """Does a slot's process grade with exactly the batch's options (all but the per-notebook out and exercise)?"""
    from grader.sandbox.kernel import Limits

    options = SubmitOptions(seed=7, device="cpu", timeout=33.0, require_isolation=True,
                            limits=Limits(cell_timeout=5.0, call_timeout=2.0, memory_bytes=123456789, threads=2))
    assert batch._options_from_json(json.loads(json.dumps(batch._options_to_json(options)))) == options


def _notebook(tmp_path: Path, name: str, *sources: str) -> Path:
    path = tmp_path / f"{name}.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["grader"] = {"exercise": "q_sampler"}
    nbformat.write(notebook, path)
    return path


_LEAKER = """\
import builtins, ctypes, os, pathlib, sys, types
pathlib.Path("leak.txt").write_text("left behind")
pathlib.Path(os.environ["TMPDIR"], "leak.txt").write_text("left behind")
LEAKED = 1
builtins.LEAKED = 1
os.environ["LEAKED"] = "1"
sys.modules["leaked_module"] = types.ModuleType("leaked_module")
libc = ctypes.CDLL(None)  # posix_spawn through libc, in a session of its own: past the guard, which is advice
argv = (ctypes.c_char_p * 3)(b"/bin/sleep", b"987.654", None)
attr = ctypes.create_string_buffer(1024)
libc.posix_spawnattr_init(attr)
libc.posix_spawnattr_setflags(attr, ctypes.c_short(0x80))  # POSIX_SPAWN_SETSID
assert libc.posix_spawn(ctypes.byref(ctypes.c_int()), b"/bin/sleep", None, attr, argv, None) == 0
"""

_PROBE = """\
import builtins, os, pathlib, sys
seen = [what for what, there in [
    ("a file in the working folder", pathlib.Path("leak.txt").exists()),
    ("a file in the temporary folder", pathlib.Path(os.environ["TMPDIR"], "leak.txt").exists()),
    ("a global", "LEAKED" in globals()),
    ("a builtin", hasattr(builtins, "LEAKED")),
    ("an environment variable", "LEAKED" in os.environ),
    ("a module", "leaked_module" in sys.modules),
    ("a process", any(b"987.654" in pathlib.Path("/proc", p, "cmdline").read_bytes()
                      for p in os.listdir("/proc") if p.isdigit() and pathlib.Path("/proc", p, "cmdline").exists())),
] if there]
assert not seen, "left behind by the previous submission: " + ", ".join(seen)
"""


@pytest.mark.slow
def test_a_warm_slot_gives_each_submission_a_fresh_kernel_and_a_cold_submits_verdicts(tmp_path):
    """In one slot, does a notebook see nothing the previous one left (file, global, builtin, env var, module,
    process), and are its isolation report and every verdict the same as a cold `grade submit`'s?"""
    from grader.submit import grade_submission

    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    _notebook(class_dir, "a_leaker", _LEAKER)
    probe = _notebook(class_dir, "b_probe", _PROBE)
    shutil.copy(ROOT / "solutions" / "q_sampler" / "q_sampler.ipynb", class_dir / "c_solution.ipynb")
    out = tmp_path / "gradebook"
    status = main(["batch", str(class_dir), "--out", str(out), "--jobs", "1", "--device", "cpu",
                   "--progress", "lines", "--exercise", "q_sampler"])
    assert status == 0
    warm = {name: json.loads((out / name / "results.json").read_text()) for name in ("a_leaker", "b_probe",
                                                                                      "c_solution")}
    assert [c["status"] for c in warm["a_leaker"]["extra_data"]["cells"]] == ["ok"]  # it did leave all that
    assert warm["b_probe"]["extra_data"]["cells"] == [{"cell": 1, "status": "ok", "error": ""}]
    assert not _processes_mentioning("987.654")  # the leaker's process died with its kernel's tree
    assert warm["c_solution"]["score"] == 24

    def verdicts(results: dict) -> list:
        return [(t["name"], t["score"], t["status"], t.get("output", "")) for t in results["tests"]]

    for name, path in (("b_probe", probe), ("c_solution", class_dir / "c_solution.ipynb")):
        cold, _ = grade_submission(path, SubmitOptions(device="cpu", out=tmp_path / "cold" / name,
                                                       exercise="q_sampler"))
        cold = cold.to_gradescope()
        assert warm[name]["extra_data"]["isolation"] == cold["extra_data"]["isolation"]
        assert warm[name]["extra_data"]["isolation"]["filesystem"] or sys.platform != "linux"
        assert verdicts(warm[name]) == verdicts(cold)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.slow
def test_a_slot_killed_mid_grading_is_a_failed_row_and_the_batch_carries_on(tmp_path):
    """SIGKILL a slot's process while it runs a notebook: is that row 'grader failed' (which a rerun grades again:
    test_a_record_is_kept_only_for_the_same_hash), its kernels gone with it, the next notebook graded by a fresh slot?"""
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    _notebook(class_dir, "a_slow", "import time\ntime.sleep(60)")
    shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / "b_stub.ipynb")
    out = tmp_path / "gradebook"
    command = [sys.executable, "-m", "grader", "batch", str(class_dir), "--out", str(out), "--jobs", "1",
               "--device", "cpu", "--progress", "lines", "--cell-timeout", "90"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    slot, kernels = None, []
    while time.monotonic() < deadline and process.poll() is None and not kernels:
        slots = [p for p in _children(process.pid) if b"--slot" in Path(f"/proc/{p}/cmdline").read_bytes()]
        slot = slots[0] if slots else None
        kernels = _children(slot) if slot else []
        time.sleep(0.2)
    assert kernels, "the slot's kernel never started"
    time.sleep(8)  # booted, and in the sleeping cell
    kernels = _children(slot)
    os.kill(slot, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr
    book = {r["student"]: r for r in _read(out / "gradebook.csv")}
    assert book["a_slow"]["status"] == batch.FAILED and book["a_slow"]["score"] == ""
    assert "the grading process died (killed by SIGKILL)" in book["a_slow"]["error"]
    assert book["b_stub"]["status"] == GRADED and book["b_stub"]["score"] == "0"
    assert not any(Path(f"/proc/{k}").exists() and (Path(f"/proc/{k}/stat").read_text().split(") ")[-1][0] != "Z")
                   for k in kernels)  # the slot's kernels died with it


@pytest.mark.slow
def test_hostile_neighbours_in_one_slot_leave_the_next_row_and_the_slot_alone(tmp_path):
    """In one slot, after a memory bomb with a swarm of processes, a kernel that kills itself and a hang, is
    each of them a graded row, and the honest stub after them graded exactly as a cold `grade submit` grades it?"""
    from grader.sandbox.kernel import Limits
    from grader.submit import grade_submission

    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    _notebook(class_dir, "a_bomb", "import ctypes, os, time\nfork = ctypes.PyDLL(None).fork\nfor i in range(20):\n"
              "    if fork() == 0:  # past the guard: 20 processes of 100 MiB each, 2 GiB in all\n"
              "        try:\n            block = b'x' * (100 * 1024**2)\n            time.sleep(600)\n"
              "        finally:\n            os._exit(0)\ntime.sleep(600)")
    _notebook(class_dir, "b_crash", "import os\nos._exit(7)")
    _notebook(class_dir, "c_hang", "while True:\n    pass")
    shutil.copy(ROOT / "exercises" / "q_sampler" / "q_sampler.ipynb", class_dir / "d_stub.ipynb")
    out = tmp_path / "gradebook"
    options = ["--device", "cpu", "--cell-timeout", "5", "--memory-limit", "1G", "--exercise", "q_sampler"]
    assert main(["batch", str(class_dir), "--out", str(out), "--jobs", "1", "--progress", "lines", *options]) == 0
    book = {r["student"]: r for r in _read(out / "gradebook.csv")}
    assert {s: r["status"] for s, r in book.items()} == dict.fromkeys(["a_bomb", "b_crash", "c_hang", "d_stub"], GRADED)
    cells = {s: json.loads((out / s / "results.json").read_text())["extra_data"]["cells"][0] for s in book}
    assert cells["a_bomb"]["status"] in ("died", "timeout"), cells["a_bomb"]  # the watchdog, or the cell's timeout
    assert cells["b_crash"]["status"] == "died" and "status 7" in cells["b_crash"]["error"], cells["b_crash"]
    assert cells["c_hang"]["status"] == "timeout", cells["c_hang"]
    limits = Limits(cell_timeout=5.0, memory_bytes=1024**3)  # what the options above make (grader.cli._options)
    cold, _ = grade_submission(class_dir / "d_stub.ipynb", SubmitOptions(device="cpu", exercise="q_sampler",
                                                                         limits=limits))
    warm = json.loads((out / "d_stub" / "results.json").read_text())
    assert [(t["name"], t["score"], t.get("output", "")) for t in warm["tests"]] == \
        [(t["name"], t["score"], t.get("output", "")) for t in cold.to_gradescope()["tests"]]
