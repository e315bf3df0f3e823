"""``grade batch``: grade a class, each notebook in its own sandboxed kernel, used once.

Layout: ``SUBMISSIONS_DIR/<student>/`` (a folder holding one notebook, or one per
exercise for a whole course) or ``SUBMISSIONS_DIR/<student>.ipynb``. Output:

* ``OUT/<student>/`` (one notebook) or ``OUT/<student>/<notebook>/`` (several):
  results.json, report.html, the executed notebook, and ``.record.json``, what
  the batch knows of that grading (the content hash it was made from);
* ``OUT/gradebook.csv``: one row per notebook — the score, each function's
  points, a ``status`` saying whether it was graded and, if not, why. What was not
  graded is blank, never 0, so an imported score column gives no one a zero for
  work that could not be read;
* ``OUT/course.csv``: one row per student, one column per exercise (the score;
  blank where there is no graded notebook).

Resumable: a notebook whose content hash (its bytes, the grading options and the
grader's version) matches its record is not graded again, unless the grader itself
failed on it (a lost worker, an unreadable results.json), which is tried again. Records are written
atomically, only when a grading has ended, so a batch killed at any moment and
started again grades exactly what is missing or changed.

Where: here, in ``--jobs`` slots (:class:`_Slot`): each a long-lived grading process that
pays the grader's imports once and launches the next notebook's kernel while the current
one is checked; or on a Dask distributed cluster (``--scheduler ADDRESS`` or ``local``),
one ``grade submit`` task per notebook (:func:`grade_remote`).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from grader._version import __version__
from grader.cli import OVERRUN  # what a `grade submit` may overrun its budget by before the batch kills it
from grader.errors import UsageError
from grader.progress import Progress
from grader.submit import SubmitOptions

__all__ = ["Item", "Row", "grade_batch", "grade_remote", "write_course_sheet", "write_gradebook"]

#: Longest error text kept in the gradebook: one line, enough for the reason, not for a flood.
ERROR_CHARS = 300

RECORD = ".record.json"

#: gradebook ``status`` values; only the first two carry a score.
GRADED, FULL_MARKS = "graded", "full marks"
UNGRADABLE, TIMED_OUT, FAILED, PENDING = "not gradable", "timed out", "grader failed", "not graded yet"


@dataclass
class Item:
    """One notebook to grade: whose, where, where its feedback goes."""

    student: str
    path: Path
    key: str  # "alice" or "alice/q_sampler": the feedback folder under OUT
    exercise: str | None = None  # passed as --exercise


@dataclass
class Row:
    """What the batch knows about one item."""

    item: Item
    status: str
    results: dict | None = None
    error: str = ""
    exit: int | None = None
    kept: bool = False  # taken from an earlier run's record

    @property
    def graded(self) -> bool:
        return self.status in (GRADED, FULL_MARKS) and self.results is not None


# ----------------------------------------------------------------------------------------- what to grade

def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.endswith(".executed.ipynb")
                  and not p.name.startswith("."))


def _stamped_exercise(path: Path) -> str | None:
    try:
        grader_meta = json.loads(path.read_bytes()).get("metadata", {}).get("grader", {})
        name = grader_meta.get("exercise") if isinstance(grader_meta, dict) else None
        return name if isinstance(name, str) and name else None
    except Exception:  # noqa: BLE001 -- unreadable: grade submit says why
        return None


def find_items(folder: Path, exercise: str | None = None, skip: Path | None = None) -> list[Item]:
    """Every notebook under ``folder``: one per ``<student>.ipynb``, one per notebook in ``<student>/``.

    ``skip`` (the batch's output folder, when it lies inside ``folder``) is no student's.
    """
    from grader.exercises import exercise_names

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of submissions")
    known = set(exercise_names())
    items: list[Item] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or skip is not None and path.resolve() == skip:
            continue
        if path.is_file() and path.suffix == ".ipynb":
            items.append(Item(path.stem, path, path.stem, exercise))
        elif path.is_dir():
            notebooks = _notebooks(path)
            if len(notebooks) <= 1:  # none: grade submit says so, in this student's row
                items.append(Item(path.name, notebooks[0] if notebooks else path, path.name, exercise))
                continue
            for notebook in notebooks:
                # A course folder: the notebook's stem names its exercise when its metadata was lost.
                name = exercise or (None if _stamped_exercise(notebook) else
                                    notebook.stem if notebook.stem in known else None)
                items.append(Item(path.name, notebook, f"{path.name}/{notebook.stem}", name))
    if not items:
        raise UsageError(f"{folder} holds no submissions (folders or .ipynb files)")
    return items


def content_hash(item: Item, options: SubmitOptions) -> str:
    """What a grading depends on: the notebook's bytes, every grading option, the grader's version."""
    digest = hashlib.sha256()
    try:
        if item.path.is_file():
            with item.path.open("rb") as f:  # in chunks: a huge upload costs no memory here
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(b"<folder without a notebook>")
    except OSError as exc:
        digest.update(f"<unreadable: {exc.strerror}>".encode())
    limits = options.limits
    digest.update(json.dumps([__version__, item.exercise, options.seed, options.device, options.timeout,
                              limits.cell_timeout, limits.call_timeout, limits.memory_bytes, limits.threads]).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- one grading

def submit_command(path: Path, out: Path, options: SubmitOptions, exercise: str | None) -> list[str]:
    limits = options.limits
    command = [sys.executable, "-m", "grader", "submit", str(path), "--out", str(out),
               "--seed", str(options.seed), "--device", options.device, "--timeout", str(options.timeout),
               "--cell-timeout", str(limits.cell_timeout), "--call-timeout", str(limits.call_timeout),
               "--memory-limit", str(limits.memory_bytes), "--threads", str(limits.threads or 1)]
    if exercise:
        command += ["--exercise", exercise]
    if options.require_isolation:
        command.append("--require-isolation")
    return command


def _die_with_parent() -> None:  # pragma: no cover -- runs in the child, between fork and exec
    """Linux: SIGKILL this grader when the batch dies, so a killed batch leaves no grading behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 -- not Linux: the grader's own deadline still ends it
        pass


def one_line(text: str) -> str:
    """Any bytes a submission may have put in a message, as one printable line of bounded length."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in line).strip() for line in text.splitlines())
    return flat[:ERROR_CHARS] + ("…" if len(flat) > ERROR_CHARS else "")


_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def stop_running() -> None:
    """SIGTERM every ``grade submit`` this process started (each cleans up its kernel), then SIGKILL."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(10)  # one kernel's clean-up: an interrupt grace and a kill
        except subprocess.TimeoutExpired:
            process.kill()


def run_submit(command: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``grade submit``; ``(exit status, why it could not grade)``; exit None when it was killed for time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the grader's own process: small tensors
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, preexec_fn=_die_with_parent if os.name == "posix" else None)
    with _RUNNING_LOCK:
        _RUNNING.add(process)
    try:
        _, raw = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None, f"grading took longer than {timeout:.0f} s and was stopped"
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
    stderr = raw.decode("utf-8", errors="replace")
    lines = [line for line in stderr.splitlines() if line.startswith("grade:")]
    if process.returncode in (0, 1):
        return process.returncode, ""
    return process.returncode, one_line(lines[-1]) if lines else f"the grader ended with exit status {process.returncode}"


def _read_results(folder: Path) -> dict | None:
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        float(results["score"]), float(results["extra_data"]["max_score"])
        return results if isinstance(results.get("tests"), list) else None
    except Exception:  # noqa: BLE001 -- missing or malformed: the row says the grader failed
        return None


def _row_from(item: Item, exit_status: int | None, error: str, results: dict | None) -> Row:
    if exit_status is None:
        return Row(item, TIMED_OUT, None, error, None)
    if exit_status in (0, 1):
        if results is None:
            return Row(item, FAILED, None, "the grader ended but its results.json could not be read", exit_status)
        return Row(item, FULL_MARKS if exit_status == 0 else GRADED, results, "", exit_status)
    if exit_status == 2 and error.startswith("grade: error:"):
        return Row(item, UNGRADABLE, None, error.removeprefix("grade: error:").strip(), exit_status)
    return Row(item, FAILED, None, error, exit_status)


def grade_remote(notebook: bytes, name: str, parent: str, options: SubmitOptions, exercise: str | None) -> dict:
    """A Dask task: grade one notebook's bytes in a fresh ``grade submit`` on this worker; its outputs as bytes.

    The notebook travels as bytes and the feedback comes back as bytes, so the workers
    need no file system shared with the client. It is staged as ``<parent>/<name>`` so
    that an unstamped notebook is named after its folder, as on the client.
    """
    with tempfile.TemporaryDirectory(prefix="grade-task-") as tmp:
        folder = Path(tmp) / "in" / (parent or "submission")
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(notebook)
        feedback = Path(tmp) / "feedback"
        exit_status, error = run_submit(submit_command(path, feedback, options, exercise), options.timeout + OVERRUN)
        files = {p.name: p.read_bytes() for p in feedback.glob("*") if p.is_file()} if feedback.is_dir() else {}
    return {"exit": exit_status, "error": error, "files": files}


def _safe_name(name: str) -> str | None:
    return name if name and "/" not in name and "\\" not in name and name not in (".", "..") else None


def _row_from_remote(item: Item, out: Path, outcome: dict) -> Row:
    folder = out / item.key
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in outcome.get("files", {}).items():
        if _safe_name(name):
            _atomic_write(folder / name, data)
    exit_status = outcome.get("exit")
    return _row_from(item, exit_status, outcome.get("error", ""),
                     _read_results(folder) if exit_status in (0, 1) else None)


# ----------------------------------------------------------------------------------------- job slots

#: Lines of a slot's standard error kept, to say why it died.
SLOT_STDERR_LINES = 20


class _Slot:
    """One job slot of a local batch: a long-lived grading process (:func:`serve_slot`) and its queue.

    The process pays the grader's imports once and, while one submission is being
    checked, launches the next one's sandboxed kernel (a fresh working folder, fresh
    namespaces, limits and walls, torch pre-imported), so that kernel is booting, not
    waiting to be started, when its turn comes. Each kernel serves exactly one
    submission and is killed as one tree after it (:class:`grader.submit.Grading`).

    This side holds the clock: a submission gets ``--timeout`` plus :data:`OVERRUN` from
    the moment it becomes the process's current one. A process that overruns is killed
    (its kernels die with it: PR_SET_PDEATHSIG), its submission is "timed out"; one that
    dies leaves its submission "grader failed" (tried again by a rerun). Either way the
    submission it had been handed next goes to a fresh process and the batch carries on.
    """

    #: The slot process's command, before its output folder.
    command = [sys.executable, "-m", "grader.batch", "--slot"]
    #: The command of a slot started pristine, which forks its own zygote (:func:`grader.sandbox.zygote.pristine_slot`),
    #: before its torch threads; None: every slot starts as :attr:`command`. No output folder on it: its zygote and
    #: kernels keep its command line.
    pristine = [sys.executable, "-m", "grader.sandbox.launch", "--slot"]

    def __init__(self, out: Path, options: SubmitOptions, take, finish) -> None:
        self.out, self.options, self.take, self.finish = out, options, take, finish
        self.process: subprocess.Popen | None = None
        self.lines: "queue.Queue[dict | None]" = None  # type: ignore[assignment]
        self.stderr: list[str] = []

    def run(self) -> None:
        pending: list[tuple[Item, str]] = []  # handed to the process, in order; [0] is its current one
        while True:
            if not pending:
                job = self.take()
                if job is None:
                    break
                pending.append(job)
            if self.process is None:
                self._start()
                for item, _ in pending:
                    self._send(item)
            self._serve(pending)
        self._stop()

    def _serve(self, pending: list[tuple[Item, str]]) -> None:
        """Answer the process until ``pending`` is empty or the process is gone (then it is restarted)."""
        deadline = time.monotonic() + self.options.timeout + OVERRUN
        while pending:
            try:
                message = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item, digest = pending.pop(0)
                self._kill()
                self.finish(Row(item, TIMED_OUT, None, f"grading took longer than "
                                f"{self.options.timeout + OVERRUN:.0f} s and was stopped", None), digest)
                return
            if message is None:  # the process is gone
                item, digest = pending.pop(0)
                code = self._kill()
                self._stderr_reader.join(2.0)  # its last words, which may trail the end of its stdout
                why = one_line(" ".join(self.stderr[-3:])) if self.stderr else ""
                self.finish(Row(item, FAILED, None, one_line(f"the grading process died ({_exit_words(code)})"
                                                             + (f": {why}" if why else "")), None), digest)
                return
            if message.get("want"):
                job = self.take()
                if job is not None:
                    pending.append(job)
                self._send(job[0] if job is not None else None)
            elif "done" in message and message.get("done") == pending[0][0].key:
                item, digest = pending.pop(0)
                exit_status = message.get("exit")
                exit_status = exit_status if isinstance(exit_status, int) else 2
                error = one_line(str(message.get("error", "")))
                folder = self.out / item.key
                self.finish(_row_from(item, exit_status, error,
                                      _read_results(folder) if exit_status in (0, 1) else None), digest)
                deadline = time.monotonic() + self.options.timeout + OVERRUN

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the grader's own process: small tensors
        first = {"options": _options_to_json(self.options)}
        threads = self.options.limits.threads
        if (self.pristine and sys.platform.startswith("linux") and os.environ.get("GRADER_ZYGOTE") != "0"
                and os.environ.get("GRADER_PRISTINE_SLOT") != "0" and (threads or 1) == 1):
            # Started as its zygote would be (that environment, those imports), it forks the zygote before it loads
            # the grader, then takes back its own environment, sent first. With more torch threads torch starts
            # them at its import and no zygote can be forked (every kernel starts cold): a slot as ever.
            from grader.sandbox.zygote import environment

            command = [*self.pristine, str(threads or 0)]
            first["env"] = env
            env = environment(self.options.limits, base=env)
        else:
            command = [*self.command, str(self.out)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env, preexec_fn=_die_with_parent if os.name == "posix" else None)
        with _RUNNING_LOCK:
            _RUNNING.add(self.process)
        self.lines = queue.Queue()
        self.stderr = []
        process, lines, stderr = self.process, self.lines, self.stderr

        def read_stdout() -> None:
            for raw in process.stdout:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    lines.put(message)
            lines.put(None)

        def read_stderr() -> None:
            for raw in process.stderr:
                stderr.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                del stderr[:-SLOT_STDERR_LINES]

        threading.Thread(target=read_stdout, daemon=True).start()
        self._stderr_reader = threading.Thread(target=read_stderr, daemon=True)
        self._stderr_reader.start()
        self._write(first)

    def _send(self, item: Item | None) -> None:
        job = None if item is None else {"key": item.key, "path": str(item.path), "exercise": item.exercise,
                                         "out": str(self.out / item.key)}
        if item is not None:
            (self.out / item.key).mkdir(parents=True, exist_ok=True)
        self._write(job)

    def _write(self, message) -> None:
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone: its stdout's end says so

    def _kill(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        code = process.wait()
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
        return code

    def _stop(self) -> None:
        """No more work: close the process's input (it exits after its last submission) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with _RUNNING_LOCK:
            _RUNNING.discard(process)


def _exit_words(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _options_to_json(options: SubmitOptions) -> dict:
    import dataclasses

    fields = dataclasses.asdict(options)
    fields.pop("out", None)
    fields.pop("exercise", None)
    return fields


def _options_from_json(fields: dict) -> SubmitOptions:
    from grader.sandbox.kernel import Limits

    return SubmitOptions(**{**fields, "limits": Limits(**fields["limits"])})


def serve_slot(zygote=None) -> int:
    """The process of one job slot (``python -m grader.batch --slot OUT``, OUT the batch's output folder, for
    ``ps``; or pristine, :func:`grader.sandbox.zygote.pristine_slot`): grade what arrives on stdin.

    Input, one JSON value a line: ``{"options": {...}}`` first (with ``"env"``, the slot's own environment,
    for a slot started pristine, in its zygote's), then jobs
    ``{"key", "path", "exercise", "out"}``; ``null`` or the end of input means no more.
    Output, one JSON object a line, on the process's original standard output (the
    grader's own prints go to standard error): ``{"want": true}`` asks for the next
    job (answered at once, with a job or ``null``), ``{"done": key, "exit": 0|1|2,
    "error": "grade: error: ..."}`` reports one submission exactly as ``grade submit``'s
    exit status and error line would. Student code never runs here: each submission
    runs in its own sandboxed kernel, launched one submission ahead.

    ``zygote``: the one a pristine slot forked (:func:`grader.sandbox.zygote.pristine_slot`); None: one is started.
    """
    from grader.cli import _skip_unused_validators, _terminate_cleanly

    _skip_unused_validators()  # as `grade submit` does: nbformat's import without rfc3987's 2.5 s parser
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # whatever the grader prints goes to stderr, never into the channel
    sys.stdout = sys.stderr
    _terminate_cleanly()

    def read():
        line = sys.stdin.readline()
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")

    first = read()
    if not isinstance(first, dict) or "options" not in first:
        if zygote is not None:
            zygote.close()
        return 2
    env = first.get("env")
    if isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        os.environ.clear()  # a pristine slot's own, after its zygote's (which every kernel's is made from again)
        os.environ.update(env)
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    options = _options_from_json(first["options"])
    if zygote is not None:
        from grader.sandbox import kernel

        kernel.use_zygote(zygote)
    else:
        zygote = _start_zygote(options)  # the first kernel's launch waits for its imports, as a cold kernel would
    held: list = []  # every Grading this process made and has not closed: closed on the way out
    frozen = False  # gc.freeze() done, after the first submission
    current = _begin(read(), options, held)
    try:
        while current is not None:
            job, grading, failure = current
            if failure is None:
                failure = _guard(grading.run_notebook)
            send({"want": True})
            following = _begin(read(), options, held)  # its kernel boots while this one is checked
            exit_status, error = failure if failure is not None else _finish(grading, job)
            if grading is not None:
                grading.close()
                held.remove(grading)
            send({"done": job["key"], "exit": exit_status, "error": error})
            current = following
            if not frozen:
                # After the first submission, what is alive (the imports, the exercise's references and tables) lives
                # as long as the slot: frozen once, it is no longer walked by each full collection (~0.1 s each
                # with torch's heap). Once only: garbage in cycles made of frozen objects is never collected.
                # A flag, not gc.get_freeze_count(), which walks the frozen list: 17 ms for its ~210,000 objects.
                gc.collect()
                gc.freeze()
                frozen = True
    finally:
        for grading in held:
            grading.close()
        if zygote is not None:
            zygote.close()
    return 0


def _start_zygote(options: SubmitOptions):
    """This slot's fork server (:mod:`grader.sandbox.zygote`), which every later kernel is forked from; None off Linux.

    Each kernel it forks is what a cold one is (torch and ipykernel imported, then its own
    namespace, limits, guard and walls) without the ~2 s of CPU of those imports, and with the
    meta machinery and matplotlib.pyplot loaded (:func:`grader.sandbox.launch.preimport`); whatever it
    cannot fork (not ready, dead, refusing) is launched cold, and a dead one is started again.
    """
    if not sys.platform.startswith("linux") or os.environ.get("GRADER_ZYGOTE") == "0":  # 0: every kernel cold
        return None
    from grader.sandbox import kernel, procs
    from grader.sandbox.zygote import Zygote, environment

    procs.become_subreaper()  # before any fork: its kernels are re-parented here
    zygote = Zygote(environment(options.limits), options.limits.threads)
    kernel.use_zygote(zygote)
    return zygote


def _begin(job, options: SubmitOptions, held: list):
    """``(job, Grading | None, failure | None)``, the job's kernel launched; None when there is no job."""
    import dataclasses

    from grader.submit import Grading

    if not isinstance(job, dict):
        return None
    mine = dataclasses.replace(options, out=Path(job["out"]), exercise=job.get("exercise"))
    made: list = []
    failure = _guard(lambda: made.append(Grading(job["path"], mine)))
    held.extend(made)
    return job, (made[0] if made else None), failure


def _guard(step) -> tuple[int, str] | None:
    """None when ``step()`` ran; else ``grade submit``'s exit status and error line for what it raised."""
    from grader.errors import GraderError

    try:
        step()
        return None
    except GraderError as exc:
        return exc.exit_code, f"grade: error: {exc}"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- as grade submit's: an internal error, never a traceback
        return 2, f"grade: internal error: {type(exc).__name__}: {exc} (please report this)"


def _finish(grading, job: dict) -> tuple[int, str]:
    """Check, write the feedback (after the kernel's tree is gone); ``(exit status, error line)``."""
    done: list = []

    def step():
        from grader.render import write_outputs

        result, notebook = grading.check()
        write_outputs(result, notebook, Path(job["out"]))
        done.append(0 if result.full_marks else 1)

    failure = _guard(step)
    return failure if failure is not None else (done[0], "")


# ----------------------------------------------------------------------------------------- records

def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_record(out: Path, row: Row, digest: str) -> None:
    record = {"hash": digest, "status": row.status, "exit": row.exit, "error": row.error, "results": row.results}
    _atomic_write(out / row.item.key / RECORD, json.dumps(record, ensure_ascii=False).encode())


def _load_record(out: Path, item: Item, digest: str) -> Row | None:
    try:
        record = json.loads((out / item.key / RECORD).read_text(encoding="utf-8"))
        if record["hash"] != digest or record["status"] == FAILED:  # the grader's own failure: try again
            return None
        return Row(item, record["status"], record.get("results"), record.get("error", ""), record.get("exit"), True)
    except Exception:  # noqa: BLE001 -- no record, or a damaged one: grade again
        return None


# ----------------------------------------------------------------------------------------- sheets

#: A cell a spreadsheet would run as a formula (CSV injection): shown as text with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    value = one_line(value) if value else ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _per_function(results: dict) -> dict[str, float]:
    points: dict[str, float] = {}
    for test in results.get("tests", []):
        name = (test.get("extra_data") or {}).get("function")
        if isinstance(name, str) and name:
            points[name] = points.get(name, 0.0) + float(test.get("score", 0.0))
    return points


def write_gradebook(rows: list[Row], path: Path) -> None:
    """One row per notebook: score, points per function, status, why not graded. Blank, never 0, when not graded."""
    functions: list[str] = []
    for row in rows:
        for name in _per_function(row.results or {}) if row.graded else ():
            if name not in functions:
                functions.append(name)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "notebook", "exercise", "score", "max_score", "status", *functions, "error"])
    for row in rows:
        results = row.results if row.graded else None
        extra = (results or {}).get("extra_data", {})
        per_function = _per_function(results) if results else {}
        writer.writerow([_text(row.item.student), _text(row.item.path.name), _text(extra.get("exercise", "")),
                         _number(results["score"]) if results else "", _number(extra.get("max_score")),
                         row.status, *(_number(per_function.get(name)) for name in functions), _text(row.error)])
    _atomic_write(path, buffer.getvalue().encode("utf-8"))


def write_course_sheet(rows: list[Row], path: Path) -> None:
    """One row per student, one column per exercise: the score, blank where nothing was graded."""
    from grader.exercises import exercise_names

    order = {name: i for i, name in enumerate(exercise_names())}
    scores: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        scores.setdefault(row.item.student, {})
        if row.graded:
            exercise = row.results["extra_data"]["exercise"]
            scores[row.item.student].setdefault(exercise, []).append(float(row.results["score"]))
    exercises = sorted({e for s in scores.values() for e in s}, key=lambda e: (order.get(e, len(order)), e))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", *exercises, "notes"])
    for student, by_exercise in scores.items():
        notes = [f"{e}: {len(v)} graded notebooks, cell left blank" for e, v in by_exercise.items() if len(v) > 1]
        cells = [_number(by_exercise[e][0]) if len(by_exercise.get(e, ())) == 1 else "" for e in exercises]
        writer.writerow([_text(student), *cells, "; ".join(notes)])
    _atomic_write(path, buffer.getvalue().encode("utf-8"))


# ----------------------------------------------------------------------------------------- the batch

def _outcome(row: Row) -> str:
    if row.graded:
        return f"{row.results['score']:g}/{row.results['extra_data']['max_score']:g}" + (" (kept)" if row.kept else "")
    return f"{row.status}" + (f": {row.error}" if row.error else "")


def _run_local(todo: list[tuple[Item, str]], out: Path, options: SubmitOptions, jobs: int, finish) -> None:
    """``jobs`` slots (:class:`_Slot`), each a long-lived grading process fed from one shared queue."""
    waiting = list(todo)
    lock = threading.Lock()

    def take() -> tuple[Item, str] | None:
        with lock:
            return waiting.pop(0) if waiting else None

    errors: list[BaseException] = []
    stopped = threading.Event()

    def finish_unless_stopped(row: Row, digest: str) -> None:
        if not stopped.is_set():  # after an interrupt, a slot's end is not a grading's: nothing is recorded
            finish(row, digest)

    def slot_loop() -> None:
        try:
            _Slot(out, options, take, finish_unless_stopped).run()
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=slot_loop, name=f"grade-slot-{n}", daemon=True)
               for n in range(min(jobs, len(todo)))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except BaseException:  # interrupted: nothing half-done is recorded, so a rerun grades it again
        stopped.set()
        with lock:
            waiting.clear()
        stop_running()
        raise
    if errors:
        raise errors[0]


def _run_dask(todo: list[tuple[Item, str]], out: Path, options: SubmitOptions, scheduler: str, jobs: int,
              finish) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UsageError("--scheduler needs Dask distributed: pip install distributed") from None
    cluster = None
    try:
        if scheduler == "local":
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        futures = {}
        for item, digest in todo:
            data = item.path.read_bytes() if item.path.is_file() else b""
            if not item.path.is_file():  # a folder without a notebook: nothing to send, say so here
                finish(Row(item, UNGRADABLE, None, f"{item.path} holds no notebook (.ipynb)", 2), digest)
                continue
            # retries: an exception in the task (a worker's disk full, a lost connection) is tried again;
            # a worker that dies is handled by the scheduler itself, which reruns its tasks elsewhere.
            future = client.submit(grade_remote, data, item.path.name, item.path.parent.name, options, item.exercise,
                                   key=f"grade-{item.key}-{digest[:16]}", pure=False, retries=2)
            futures[future] = (item, digest)
        for future in as_completed(list(futures)):
            item, digest = futures[future]
            try:
                row = _row_from_remote(item, out, future.result())
            except Exception as exc:  # noqa: BLE001 -- e.g. KilledWorker after repeated worker deaths
                row = Row(item, FAILED, None, one_line(f"the cluster could not grade it: {type(exc).__name__}: {exc}"))
            finish(row, digest)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def grade_batch(submissions: Path, out: Path | None, *, jobs: int | None, exercise: str | None,
                options: SubmitOptions, scheduler: str | None = None, regrade: bool = False,
                progress: bool | None = None) -> int:
    """Grade every notebook under ``submissions``; 0 when every one was graded, 1 otherwise (see grader.cli)."""
    out = (out or submissions.resolve().parent / "gradebook").resolve()
    items = find_items(submissions, exercise, skip=out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or (os.cpu_count() or 2) // 2)
    rows: dict[str, Row] = {}
    todo: list[tuple[Item, str]] = []
    for item in items:
        digest = content_hash(item, options)
        kept = None if regrade else _load_record(out, item, digest)
        if kept is not None:
            rows[item.key] = kept
        else:
            rows[item.key] = Row(item, PENDING)
            todo.append((item, digest))
    bar = Progress(len(items), len(items) - len(todo), bar=progress)
    if len(todo) < len(items):
        print(f"{len(items) - len(todo)} of {len(items)} notebooks unchanged since they were graded: kept",
              file=sys.stderr)
    lock = threading.Lock()

    def finish(row: Row, digest: str) -> None:
        with lock:
            _save_record(out, row, digest)
            rows[row.item.key] = row
            bar.advance(row.item.key, _outcome(row))
            write_gradebook(list(rows.values()), out / "gradebook.csv")  # streamed: a crash keeps what was done

    try:
        if scheduler:
            _run_dask(todo, out, options, scheduler, jobs, finish)
        else:
            _run_local(todo, out, options, jobs, finish)
    finally:
        bar.close()
        final = list(rows.values())
        write_gradebook(final, out / "gradebook.csv")
        write_course_sheet(final, out / "course.csv")
    not_graded = [r for r in final if not r.graded]
    for row in not_graded:
        print(f"not graded: {row.item.key}: {_outcome(row)}")
    print(f"{len(final) - len(not_graded)} of {len(final)} submissions graded; gradebook: {out / 'gradebook.csv'}, "
          f"course sheet: {out / 'course.csv'}")
    return 1 if not_graded else 0


if __name__ == "__main__" and sys.argv[1:2] == ["--slot"]:
    sys.exit(serve_slot())
