"""The ``grade`` command: a thin layer over :mod:`grader.submit`, :mod:`grader.generate`, :mod:`grader.batch`.

Exit status: 0 when every test passed (or the command succeeded), 1 when grading
completed below full marks (or below ``--min-score`` with ``--ci``), 2 when the
input could not be graded or the command could not run, with one line on
standard error saying why (and when ``grade submit`` stalled: no result :data:`OVERRUN` s
past its ``--timeout``); 130 when interrupted (Ctrl-C, SIGTERM); 141 (a shell's
"killed by SIGPIPE") when the reader of its output left early (``grade list | head``).
Never a traceback of the grader's own.

``grade batch``: 0 when every notebook was graded (whatever its score), 1 when at
least one could not be (its gradebook row says why: not gradable, timed out,
grader failed), 2 when the batch itself could not run (no such folder, no
submissions, an unreachable Dask scheduler), 130 when interrupted — what was
graded is kept, and the same command started again grades only the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from grader import blas
from grader._version import __version__
from grader.errors import GraderError, UsageError

__all__ = ["main"]

EXIT_PASSED, EXIT_FAILED, EXIT_UNGRADABLE = 0, 1, 2
#: Seconds a ``grade submit`` may overrun its own budget (``--timeout``) before it stops itself as stalled
#: (:func:`_stall_guard`; ``grade batch`` and the Gradescope runner kill it then too): one kernel start and one
#: interrupt grace are already inside the budget; 120 s more covers a grader slowed down by swap.
OVERRUN = 120.0

#: grader.submit.DEFAULT_SEED, restated so that ``--help`` imports nothing heavy (test_cli checks they agree).
DEFAULT_SEED = 2024

#: The folder of recorded exercises in a student release (grader.release.RELEASED; test_cli checks they agree).
RELEASED = "released"

# Fast paths: `grade list`, `--help` and every bad-input error finish in well under 0.5 s because nothing
# here imports torch, scipy, nbclient, jinja2 or matplotlib before the input is known to be gradable; the
# heavy modules are imported inside the command that needs them (tests/grader/test_cli.py checks it
# through sys.modules in a fresh interpreter).


def _skip_unused_validators() -> None:
    """Keep jsonschema from importing rfc3987_syntax, which builds a parser at import (2.4-2.8 s here).

    nbformat imports jsonschema, whose format checkers import rfc3987_syntax when it is installed (the
    ``notebook`` extra brings it) only to check the "iri" string formats; no notebook schema uses any
    string format, so validation is unchanged. A ``None`` in ``sys.modules`` makes the import raise
    ImportError, which jsonschema expects for an optional checker. Only in the grader's own process, never in
    the kernel (student code there gets its Python untouched).
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def parse_size(text: str) -> int:
    """'4G', '512M', '4GiB', '1000000' → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4G or 512M)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _add_grading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"grading seed (default {DEFAULT_SEED}: the same submission always gets the same grade)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="where reference and student tensors live (default: cuda when available)")
    p.add_argument("--timeout", type=_positive, default=900.0, metavar="SECONDS",
                   help="time budget of a whole submission (default 900)")
    p.add_argument("--cell-timeout", type=_positive, default=60.0, metavar="SECONDS",
                   help="time one notebook cell may run (default 60)")
    p.add_argument("--call-timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="time one call of a graded function may run (default 10)")
    p.add_argument("--memory-limit", type=parse_size, default=parse_size("4G"), metavar="SIZE",
                   help="memory the submission may allocate (default 4G)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads in the submission's kernel (default 1: fast and steady for small tensors)")
    p.add_argument("--require-isolation", action="store_true",
                   help="refuse to grade (exit 2) unless the operating system confines the kernel "
                        "(Linux: Landlock ABI >= 6 and a user+PID namespace); for summative grading")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option or value as one line on standard error (exit 2), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", message)  # a value typed on the command line, shown safely
        self.exit(EXIT_UNGRADABLE, f"grade: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="grade", description="Autograder for the diffusion-models course.")
    parser.add_argument("--version", action="version", version=f"grade {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="grade one notebook", description="Grade one submission.")
    submit.add_argument("path", type=Path, help="an exercise folder holding one notebook, or a notebook file")
    submit.add_argument("--out", type=Path, default=None, help="feedback folder (default: feedback/ beside the notebook)")
    submit.add_argument("--json", action="store_true", help="print results.json to standard output")
    submit.add_argument("--ci", action="store_true", help="CI mode: a short summary; exit 1 below full marks or --min-score")
    submit.add_argument("--min-score", type=float, default=None, help="with --ci: the score needed to pass")
    submit.add_argument("-v", "--verbose", action="store_true", help="print whole failure messages")
    submit.add_argument("-q", "--quiet", action="store_true", help="print one line: the score and what failed")
    submit.add_argument("--exercise", default=None, help="grade as this exercise (default: the notebook's metadata, "
                                                         "else its folder's name)")
    _add_grading_options(submit)

    generate = commands.add_parser("generate", help="regenerate student notebooks from solutions/",
                                   description="Generate exercises/ from solutions/.")
    generate.add_argument("exercises", nargs="*", help="only these exercises (default: all)")
    generate.add_argument("--check", action="store_true", help="write nothing; exit 1 when exercises/ is out of date")
    generate.add_argument("--root", type=Path, default=Path("."), help="the course repository (default: .)")

    batch = commands.add_parser("batch", help="grade a folder of submissions in parallel",
                                description="Grade every submission under SUBMISSIONS_DIR; write a gradebook.")
    batch.add_argument("submissions", type=Path, help="a folder of submissions: one notebook or folder per student")
    batch.add_argument("--out", type=Path, default=None, help="output folder (default: SUBMISSIONS_DIR/../gradebook)")
    batch.add_argument("--jobs", type=int, default=None, help="submissions graded at once (default: CPU cores / 2)")
    batch.add_argument("--exercise", default=None, help="grade every notebook as this exercise")
    batch.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="grade on a Dask distributed cluster: its scheduler's address (tcp://host:8786), "
                            "or 'local' for a LocalCluster of --jobs workers")
    batch.add_argument("--regrade", action="store_true",
                       help="grade everything again (default: keep gradings whose notebook and options are unchanged)")
    batch.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                       help="a bar (a terminal), one line per notebook (logs, CI), or auto (default)")
    _add_grading_options(batch)

    export = commands.add_parser("export", help="hand the grader to a platform (Gradescope, GitHub Classroom)",
                                 description="Write what a grading platform runs.")
    targets = export.add_subparsers(dest="target", required=True, metavar="PLATFORM")
    gradescope = targets.add_parser("gradescope", help="Gradescope's autograder zip for one exercise",
                                    description="Write Gradescope's autograder zip (setup.sh, run_autograder).")
    gradescope.add_argument("exercise", help="the exercise it grades")
    gradescope.add_argument("--out", type=Path, default=Path("autograder.zip"), help="the zip (default autograder.zip)")
    gradescope.add_argument("--gradescope-timeout", type=_positive, default=600.0, metavar="SECONDS",
                            help="the assignment's timeout on Gradescope (default 600); the grader's budget is "
                                 "set 120 s below it")
    visibility = ["hidden", "after_due_date", "after_published", "visible"]
    gradescope.add_argument("--visibility", choices=visibility, default="visible",
                            help="when students see the results (default visible)")
    gradescope.add_argument("--test-visibility", choices=visibility, default="visible",
                            help="when students see each test (default visible)")
    gradescope.add_argument("--stdout-visibility", choices=visibility, default="hidden",
                            help="when students see the grader's log (default hidden)")
    github = targets.add_parser("github", help="a GitHub Actions workflow for GitHub Classroom",
                                description="Write DIR/.github/workflows/classroom.yml, which students commit.")
    github.add_argument("exercises", nargs="*", help="the exercises it grades (default: those with a notebook in "
                                                     "./exercises/, else every exercise)")
    github.add_argument("--out", type=Path, required=True, help="the repository (template) folder to write into")
    github.add_argument("--grader", default=None, metavar="REQUIREMENT",
                        help="how the workflow installs the grader: a pip requirement, e.g. "
                             "'diffusion-course-grader @ git+https://github.com/COURSE/grader@v1' "
                             "(default: diffusion-course-grader==this version)")
    github.add_argument("--min-score", type=float, default=None, help="the score a step needs to pass")

    release = commands.add_parser("release", help="write what students get: notebooks, public checks, the CLI",
                                  description="Write the student release: the generated notebooks, the public "
                                              "checks as values, the grader's CLI; no reference, no solutions.")
    release.add_argument("--out", type=Path, required=True, help="the release folder (must be empty or absent)")
    release.add_argument("--root", type=Path, default=Path("."), help="the course repository (default: .)")

    commands.add_parser("list", help="list the exercises the grader knows")
    return parser


def _options(args: argparse.Namespace, out: Path | None):
    from grader.sandbox.kernel import Limits
    from grader.submit import SubmitOptions

    limits = Limits(cell_timeout=args.cell_timeout, call_timeout=args.call_timeout,
                    memory_bytes=args.memory_limit, batch_timeout=max(120.0, 4 * args.call_timeout),
                    threads=max(1, args.threads))
    return SubmitOptions(seed=args.seed, device=args.device, timeout=args.timeout, limits=limits, out=out,
                         exercise=getattr(args, "exercise", None),
                         require_isolation=getattr(args, "require_isolation", False))


def _precheck(path: Path, exercise: str | None) -> Path:
    """The notebook to grade, with every bad input (no file, not a notebook, unknown exercise) refused here.

    Before torch or the exercise's declaration is imported, so that an error takes a fraction of a second.
    The exercise is named by the rule of :func:`grader.load.load_submission` (``--exercise``, else the
    notebook's stamp, else its folder), checked against the light index; test_cli checks both name the same
    exercise. Reading and validating the notebook again in ``grade_submission`` costs ~2 ms (nbformat
    caches the compiled schema).
    """
    from grader.exercises import describe_exercise
    from grader.load import find_notebook, read_notebook

    notebook_path = find_notebook(path)
    notebook = read_notebook(notebook_path)
    stamped = notebook.metadata.get("grader", {})
    name = exercise or (stamped.get("exercise") if isinstance(stamped, dict) else None)
    if not isinstance(name, str) or not name:
        name = notebook_path.parent.resolve().name
    describe_exercise(name)  # UnknownExercise, with the known ones
    return notebook_path


def _stall_guard(seconds: float):
    """A timer that ends this process after ``seconds`` with one line and :data:`EXIT_UNGRADABLE`: the last wall
    against a grader that waits forever (a kernel can break the grader's connections, for one; see
    ``cells.SEND_TIMEOUT``). The kernels die with it (their shims asked for SIGKILL when the grader dies)."""
    import threading

    def stalled() -> None:
        try:
            sys.stderr.write(f"grade: internal error: no result after {seconds:.0f} s, past the submission's budget: "
                             "the grader stalled and stopped (please report this)\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_UNGRADABLE)

    timer = threading.Timer(seconds, stalled)
    timer.daemon = True
    timer.start()
    return timer


def _submit(args: argparse.Namespace) -> int:
    if args.min_score is not None and not args.ci:
        raise UsageError("--min-score only applies with --ci")
    stall = _stall_guard(args.timeout + OVERRUN)
    try:
        return _submit_guarded(args)
    finally:
        stall.cancel()


def _submit_guarded(args: argparse.Namespace) -> int:
    try:
        notebook_path = _precheck(args.path, args.exercise)
        from grader.submit import grade_submission

        out = args.out or notebook_path.parent / "feedback"
        result, notebook = grade_submission(args.path, _options(args, out))
    except GraderError as exc:
        if args.ci:  # GitHub still gets a result: an error, with the reason, not a silent 0
            from grader.ci import write_github

            write_github(None, False, error=str(exc), max_score=_max_score_of(args.exercise))
        raise
    from grader.render import terminal_summary, write_outputs

    paths = write_outputs(result, notebook, out)
    passed = result.full_marks if args.min_score is None else result.score >= args.min_score
    if args.json:
        print(json.dumps(result.to_gradescope(), indent=2, ensure_ascii=False))
    elif args.ci:
        from grader.ci import neutralise

        print(neutralise(result.summary()))
        for test in result.tests:
            if not test.passed and test.max_score:
                print(neutralise(f"  FAIL {test.name}: {test.output.splitlines()[0] if test.output else ''}"))
        print(f"report: {paths['report']}")
    elif args.quiet:
        print(terminal_summary(result, quiet=True))
    else:
        print(terminal_summary(result, verbose=args.verbose))
        print(f"Feedback: {paths['report']}")
    if args.ci:
        from grader.ci import write_github

        write_github(result, passed, notebook=notebook_path)
    return EXIT_PASSED if passed else EXIT_FAILED


def _max_score_of(exercise: str | None) -> float:
    """The points an exercise offers (0 when unknown), for a CI result of a notebook that could not be graded."""
    try:
        from grader.exercises import load_exercise

        return sum(spec.points for check in load_exercise(exercise).all_checks() for spec in check.tests()) \
            if exercise else 0.0
    except Exception:  # noqa: BLE001 -- unknown exercise: 0, and the error says why
        return 0.0


def _generate(args: argparse.Namespace) -> int:
    from grader.generate import generate_all

    results = generate_all(args.root, check=args.check, only=args.exercises or None)
    stale = [r for r in results if r.changed]
    for r in results:
        state = ("out of date" if args.check else "written") if r.changed else "up to date"
        print(f"{r.target}: {state}")
    if args.check and stale:
        print(f"grade generate --check: {len(stale)} notebook(s) out of date; run `grade generate`", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PASSED


def _batch(args: argparse.Namespace) -> int:
    from grader.batch import grade_batch

    if args.require_isolation:  # refuse before grading anyone (each `grade submit` checks again)
        from grader.sandbox import isolation

        isolation.require(isolation.probe())
    return grade_batch(args.submissions, args.out, jobs=args.jobs, exercise=args.exercise,
                       options=_options(args, None), scheduler=args.scheduler, regrade=args.regrade,
                       progress={"auto": None, "bar": True, "lines": False}[args.progress])


def _export(args: argparse.Namespace) -> int:
    if args.target == "gradescope":
        from grader.export.gradescope import write_autograder

        try:
            path = write_autograder(args.exercise, args.out, timeout=args.gradescope_timeout,
                                    visibility=args.visibility, test_visibility=args.test_visibility,
                                    stdout_visibility=args.stdout_visibility)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(f"{path}: upload it as the assignment's autograder (setup.sh and run_autograder at its root)")
        return EXIT_PASSED
    from grader.exercises import exercise_names
    from grader.export.github import write_workflow

    grader = args.grader or f"diffusion-course-grader=={__version__}"
    # Default: the exercises whose notebooks are here (exercises/NAME/NAME.ipynb), else every exercise.
    present = [n for n in exercise_names() if (Path("exercises") / n / f"{n}.ipynb").is_file()]
    path = write_workflow(args.out, args.exercises or present or exercise_names(), grader, min_score=args.min_score)
    print(f"{path}: commit it to the assignment's template repository")
    return EXIT_PASSED


def _release(args: argparse.Namespace) -> int:
    from grader.release import write_release

    summary = write_release(args.root, args.out)
    print(summary)
    return EXIT_PASSED


def _list(args: argparse.Namespace) -> int:
    import grader.exercises as exercises

    # The light index where there is one (the course's grader); a release's recorded exercises load fast anyway.
    describe = getattr(exercises, "describe_exercise", exercises.load_exercise)
    for name in exercises.exercise_names():
        exercise = describe(name)
        print(f"{name:16s} {exercise.title}: {', '.join(exercise.function_names)}")
    return EXIT_PASSED


def _terminate_cleanly() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that the kernel and its processes are cleaned up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, handler)


def _refuse_in_a_release(command: str) -> None:
    """A student release has the public checks only: grading needs the course's grader."""
    import grader.exercises

    # grader.release.is_release, without importing grader.release (torch, hypothesis)
    if command != "list" and (Path(grader.exercises.__file__).resolve().parent / RELEASED).is_dir():
        raise UsageError(f"grade {command} needs the course's grader; this is the student release, which runs "
                         "the public checks only: call check(fn) in your notebook")


#: Commands after which the console script leaves at once (:func:`run`): by then everything they
#: made is written and closed, and their kernels' trees are gone.
PROMPT_EXIT = ("submit", "list")
#: The exit status when standard output's reader left early: 128 + SIGPIPE, as a shell reports it.
EXIT_PIPE = 141
_ran: list[str] = []  # the command main() last ran, for run()


def run() -> None:
    """The ``grade`` console script (and ``python -m grader``): :func:`main`, then exit.

    After ``grade submit`` and ``grade list`` the process leaves with ``os._exit`` once its
    output is flushed: Python's own teardown (freeing torch's, nbclient's and the checks' modules
    one by one) took 0.5-0.6 s after the last result was written, on every submission, and
    nothing is left for it to do: results.json, report.html and the executed notebook are
    written and closed, and the kernel's whole tree is gone. Other commands (``grade batch``'s
    Dask clients, ``generate``, ``release``) exit the ordinary way.
    """
    status = main()
    if _ran and _ran[-1] in PROMPT_EXIT:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BrokenPipeError:  # the reader left before the buffered end of the output reached it
                status = EXIT_PIPE if stream is sys.stdout else status
            except (OSError, ValueError):  # a closed stream: nothing more can reach it anyway
                pass
        os._exit(status)
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    """Run ``grade`` with ``argv`` (default: the command line); the exit status."""
    blas.pin()  # before numpy is imported, here and in every kernel: the same round-off on every grader
    _skip_unused_validators()
    parser = build_parser()
    args = parser.parse_args(argv)
    _terminate_cleanly()
    _ran.append(args.command)
    command = {"submit": _submit, "generate": _generate, "batch": _batch, "export": _export, "release": _release,
               "list": _list}[args.command]
    try:
        _refuse_in_a_release(args.command)
        return command(args)
    except GraderError as exc:
        print(f"grade: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("grade: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `grade list | head`: the reader left; nothing to say, and nobody to say it to
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail again
        except (OSError, ValueError):
            pass
        return EXIT_PIPE
    except Exception as exc:  # noqa: BLE001 -- the promise: never a traceback of ours
        print(f"grade: internal error: {type(exc).__name__}: {exc} (please report this)", file=sys.stderr)
        return EXIT_UNGRADABLE
