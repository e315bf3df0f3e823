"""The grade command: exit statuses and one-line errors for input that cannot be graded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from grader.cli import main, parse_size


def _run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_one_line_error(status, err, *needles):
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("grade: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_missing_path(tmp_path, capsys):
    """Does a path that does not exist exit 2 with one line?"""
    status, _, err = _run(["submit", str(tmp_path / "nope")], capsys)
    _assert_one_line_error(status, err, "does not exist")


def test_empty_folder(tmp_path, capsys):
    """Does a folder without a notebook exit 2 with one line?"""
    status, _, err = _run(["submit", str(tmp_path)], capsys)
    _assert_one_line_error(status, err, "no notebook")


def test_several_notebooks(tmp_path, capsys):
    """Does a folder with two notebooks exit 2 and name them?"""
    for name in ("a.ipynb", "b.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / name)
    status, _, err = _run(["submit", str(tmp_path)], capsys)
    _assert_one_line_error(status, err, "a.ipynb", "b.ipynb")


@pytest.mark.parametrize("content, needle", [
    (b"{ this is not json", "invalid JSON"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (json.dumps({"hello": "world"}).encode(), "not a Jupyter notebook"),
    (json.dumps({"nbformat": 3, "nbformat_minor": 0, "cells": [], "metadata": {}}).encode(), "format 3"),
    (json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": [{"cell_type": "code"}], "metadata": {}}).encode(),
     "not a valid notebook"),
])
def test_corrupt_notebooks(tmp_path, capsys, content, needle):
    """Does each kind of broken notebook exit 2 with one line that says what is wrong?"""
    folder = tmp_path / "q_sampler"
    folder.mkdir()
    (folder / "q_sampler.ipynb").write_bytes(content)
    status, _, err = _run(["submit", str(folder)], capsys)
    _assert_one_line_error(status, err, needle)


def test_not_a_notebook_file(tmp_path, capsys):
    """Does a file that is not .ipynb exit 2?"""
    path = tmp_path / "answers.py"
    path.write_text("print(1)")
    status, _, err = _run(["submit", str(path)], capsys)
    _assert_one_line_error(status, err, "not a notebook")


def test_unknown_exercise(tmp_path, capsys):
    """Does a notebook of an exercise the grader does not know exit 2 and list the known ones?"""
    folder = tmp_path / "homework7"
    folder.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), folder / "homework7.ipynb")
    status, _, err = _run(["submit", str(folder)], capsys)
    _assert_one_line_error(status, err, "homework7", "q_sampler")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, capsys):
    """Does --device cuda on a machine without a GPU exit 2 with one line?"""
    root = Path(__file__).resolve().parents[2]
    status, _, err = _run(["submit", str(root / "exercises" / "q_sampler"), "--device", "cuda",
                           "--out", str(tmp_path)], capsys)
    _assert_one_line_error(status, err, "CUDA")


def test_min_score_needs_ci(tmp_path, capsys):
    """Is --min-score without --ci refused rather than silently ignored?"""
    root = Path(__file__).resolve().parents[2]
    status, _, err = _run(["submit", str(root / "exercises" / "q_sampler"), "--min-score", "3"], capsys)
    _assert_one_line_error(status, err, "--ci")


@pytest.mark.parametrize("text, expected", [("4G", 4 * 1024**3), ("512M", 512 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)),
                                            ("1000", 1000)])
def test_sizes(text, expected):
    """Are memory limits read the way people write them?"""
    assert parse_size(text) == expected


def test_module_entry_point_and_version():  # a fresh interpreter without torch: ~0.1 s
    """Does `python -m grader --version` work (the console script's twin)?"""
    out = subprocess.run([sys.executable, "-m", "grader", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("grade ")


def test_list(capsys):
    """Does grade list name every exercise with its functions?"""
    status, out, _ = _run(["list"], capsys)
    assert status == 0 and "q_sampler" in out and "q_posterior" in out


def test_batch_exit_2_for_a_batch_that_cannot_run(tmp_path, capsys):
    """Do a missing folder and a folder without submissions exit 2 with one line?"""
    status, _, err = _run(["batch", str(tmp_path / "nope")], capsys)
    _assert_one_line_error(status, err, "not a folder of submissions")
    status, _, err = _run(["batch", str(tmp_path)], capsys)
    _assert_one_line_error(status, err, "holds no submissions")


def test_release_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    """Is an old release never mixed with a new one?"""
    (tmp_path / "old.txt").write_text("x")
    root = Path(__file__).resolve().parents[2]
    status, _, err = _run(["release", "--out", str(tmp_path), "--root", str(root)], capsys)
    _assert_one_line_error(status, err, "not empty")


def test_exit_statuses_are_documented():
    """Does the CLI's docstring state every exit status of grade submit and grade batch?"""
    import grader.cli

    doc = grader.cli.__doc__
    assert "``grade batch``: 0 when every notebook was graded" in doc and "130 when interrupted" in doc
    for status in ("0 when", "1 when", "2 when"):
        assert status in doc


#: The CLI's fast paths: each must not import these (each costs 0.2-2.5 s before anything is checked).
HEAVY = ("torch", "scipy", "nbclient", "jinja2", "matplotlib", "hypothesis", "rfc3987_syntax")

FAST_PATHS = """
import json, sys
from grader.cli import main
codes = []
for argv in ARGVS:
    try:
        codes.append(main(argv))
    except SystemExit as exc:  # --help and argparse's errors exit
        codes.append(exc.code)
print(json.dumps({"codes": codes, "heavy": sorted(m for m in HEAVY if sys.modules.get(m) is not None)}))
"""


def _fast_paths(tmp_path, argvs):
    unknown = tmp_path / "homework7"
    unknown.mkdir(exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(), unknown / "homework7.ipynb")
    (tmp_path / "answers.py").write_text("print(1)")
    script = FAST_PATHS.replace("ARGVS", repr(argvs)).replace("HEAVY", repr(HEAVY))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fast_paths_import_nothing_heavy(tmp_path):
    """Do grade list, --help and every bad-input error finish without importing torch, scipy, nbclient, ...?

    One fresh interpreter runs them all in turn, so one import anywhere shows in sys.modules at the end.
    Seen failing before the light index (grade list imported every declaration, so torch).
    """
    solution = str(Path(__file__).resolve().parents[2] / "solutions" / "ddim")
    argvs = [["list"], ["--help"], ["--version"], ["submit", "--help"], ["batch", "--help"],
             ["submit", str(tmp_path / "nope.ipynb")], ["submit", str(tmp_path / "answers.py")],
             ["submit", str(tmp_path / "homework7")], ["submit", solution, "--exercise", "nope"],
             ["submit", solution, "--seed", "abc"], ["submit", solution, "--timeout", "-5"]]
    seen = _fast_paths(tmp_path, argvs)
    assert seen["codes"] == [0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2], seen
    assert seen["heavy"] == [], f"the fast paths imported {seen['heavy']}"


def test_light_index_matches_every_declaration():
    """Is what grade list reads from each declaration's source what importing it gives (every exercise module)?"""
    from grader.exercises import _literal_index, describe_exercise, exercise_names, load_exercise

    assert len(exercise_names()) >= 9
    for name in exercise_names():
        assert _literal_index(name) is not None, f"{name}.py: EXERCISE's name/title/functions are not literals"
        index, exercise = describe_exercise(name), load_exercise(name)
        assert (index.name, index.title, index.functions) == (exercise.name, exercise.title, exercise.functions)


def test_restated_constants_agree():
    """Do the CLI's restated default seed and release folder agree with grader.submit's and grader.release's?"""
    import grader.cli
    import grader.release
    import grader.submit

    assert grader.cli.DEFAULT_SEED == grader.submit.DEFAULT_SEED
    assert grader.cli.RELEASED == grader.release.RELEASED


def test_precheck_names_the_exercise_like_load_submission(tmp_path):
    """Does the CLI's early check name the same exercise as load_submission (flag, stamp, folder)?"""
    from grader.cli import _precheck
    from grader.errors import UnknownExercise
    from grader.load import load_submission

    root = Path(__file__).resolve().parents[2]
    stamped = tmp_path / "someone"
    stamped.mkdir()
    notebook = nbformat.read(root / "exercises" / "ddim" / "ddim.ipynb", as_version=4)
    nbformat.write(notebook, stamped / "mine.ipynb")
    unstamped = tmp_path / "q_sampler"
    unstamped.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), unstamped / "x.ipynb")
    for path, flag in [(stamped, None), (stamped, "elbo"), (unstamped, None), (root / "solutions" / "lora", None)]:
        assert _precheck(path, flag) == load_submission(path, flag).path
    with pytest.raises(UnknownExercise):
        _precheck(unstamped, "nope")


def _block_buffered() -> dict:
    """The environment without PYTHONUNBUFFERED: a pipe is block-buffered, as for a user."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _console(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grader", *args], capture_output=True, text=True, cwd=cwd,
                          env=_block_buffered())


def test_console_script_leaves_promptly_with_its_output_whole():  # no torch: ~0.3 s
    """Does `grade list`, which leaves with os._exit (grader.cli.run), still deliver all of its piped output?

    Seen failing with the flush taken out of run(): stdout to a pipe is block-buffered, and the list vanished.
    """
    from grader.exercises import exercise_names

    out = _console(["list"])
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines() if line.strip()][-1] == sorted(exercise_names())[-1]
    for name in exercise_names():
        assert name in out.stdout


@pytest.mark.slow
def test_console_submit_json_is_whole_and_exit_status_kept(tmp_path):
    """Is `grade submit --json` through the console path one whole JSON document, with exit status 1 for a stub,
    and results.json and report.html written before the prompt exit?"""
    root = Path(__file__).resolve().parents[2]
    out = _console(["submit", str(root / "exercises" / "q_sampler"), "--out", str(tmp_path / "fb"), "--json"])
    assert out.returncode == 1, out.stderr
    document = json.loads(out.stdout)
    assert document["score"] == 0 and document["tests"]
    assert json.loads((tmp_path / "fb" / "results.json").read_text())["score"] == 0
    assert (tmp_path / "fb" / "report.html").read_text().rstrip().endswith("</html>")


def test_a_reader_that_leaves_early_gets_no_traceback_and_no_error_line():  # no torch: ~0.3 s
    """`grade list | head -1`: is it silent on stderr, exit 141, not "internal error: BrokenPipeError"?

    Seen failing before: the BrokenPipeError of print() reached main's catch-all.
    """
    grade = subprocess.Popen([sys.executable, "-m", "grader", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_block_buffered(), bufsize=0)
    grade.stdout.close()  # the reader leaves before the first byte
    err = grade.stderr.read().decode()
    assert grade.wait() == 141 and err == "", err


_STALLED = """\
import sys, time
import grader.cli, grader.submit
grader.cli.OVERRUN = 0.0  # the guard fires at --timeout itself


def stalled(path, options):  # a real kernel running the notebook, then a grader that waits forever
    grading = grader.submit.Grading(path, options)
    grading.run_notebook()
    print(grading.kernel._pid(), flush=True)
    time.sleep(1000)


grader.submit.grade_submission = stalled
grader.cli.run()
"""


@pytest.mark.slow
def test_a_stalled_grader_stops_itself_after_its_budget_and_takes_the_kernel_with_it(tmp_path):
    """The grader itself waits forever past its --timeout (here: made to): does `grade submit` end soon after the
    budget with exit 2 and one line, not a traceback, and is the kernel's tree gone? Seen hanging until the
    test's own 120 s timeout without the guard."""
    folder = tmp_path / "q_sampler"
    folder.mkdir()
    root = Path(__file__).resolve().parents[2]
    nb = nbformat.read(root / "exercises" / "q_sampler" / "q_sampler.ipynb", as_version=4)
    nbformat.write(nb, folder / "q_sampler.ipynb")
    done = subprocess.run([sys.executable, "-c", _STALLED, "submit", str(folder), "--timeout", "25"],
                          capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grade: internal error: no result after 25 s"), lines
    kernel = int(done.stdout.split()[0])
    for _ in range(50):  # the shim dies with the grader (PR_SET_PDEATHSIG); a zombie is no process left running
        try:
            if "State:\tZ" in Path(f"/proc/{kernel}/status").read_text():
                break
        except FileNotFoundError:
            break
        __import__("time").sleep(0.1)
    else:
        raise AssertionError(f"the kernel {kernel} outlived the grader")
