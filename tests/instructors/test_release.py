"""grade release: what students get holds values, never the reference or a solution, and check(fn) works from it.

The fast test records one public check, saves it, loads it back with
``weights_only=True`` and replays it on a right and a wrong function, and a check
that judges with code of its own is not recorded at all. The slow ones
write a whole release, grep it for every reference function's body and every
solution cell, and run ``check`` in a fresh process that sees only the release (and
the installed libraries), with ``reference`` made unimportable.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

from grader.checks import Context
from grader.exercises import load_exercise
from grader.release import record_check, recorded_check
from grader.runner import InProcessRunner

ROOT = Path(__file__).resolve().parents[2]


def _right_cumprod(betas):
    return torch.cumprod(1 - betas, dim=0)


def _wrong_cumprod(betas):
    return torch.cumprod(betas, dim=0)


def _recorded(tmp_path):
    exercise = load_exercise("q_sampler")
    check = next(c for c in exercise.checks if c.function == "compute_alphas_cumprod" and c.public)
    data = record_check(check, "q_sampler")
    torch.save(data, tmp_path / "check.pt")
    loaded = torch.load(tmp_path / "check.pt", weights_only=True)  # raises on anything but plain data
    return exercise, check, loaded


def test_a_recorded_check_is_data(tmp_path):
    """Does a public agreement check record as plain data, and a check that judges with code not at all?"""
    exercise, check, loaded = _recorded(tmp_path)
    recorded = recorded_check(loaded)
    assert [spec.name for spec in recorded.tests()] == [spec.name for spec in check.tests()] == loaded["tests"]
    assert recorded.tolerance == check.tolerance and len(loaded["cases"]) >= len(check.examples)
    by_code = next(c for c in exercise.checks if c.function == "cosine_beta_schedule" and type(c).__name__ == "Property")
    assert record_check(by_code, "q_sampler") is None  # its judge is code: left to grade submit


@pytest.mark.slow  # the first op on the meta device imports torch._dynamo: seconds
def test_a_recorded_check_tells_right_from_wrong(tmp_path):
    """Replayed from the loaded values, does the check pass the right function and fail the wrong one?"""
    _, _, loaded = _recorded(tmp_path)
    recorded = recorded_check(loaded)

    def verdicts(fn):
        ctx = Context(InProcessRunner({"compute_alphas_cumprod": fn}), torch.device("cpu"), 0, "q_sampler",
                      public_only=True)
        return recorded.run(ctx)

    assert all(v.passed for v in verdicts(_right_cumprod))
    wrong = verdicts(_wrong_cumprod)
    assert not wrong[0].passed and "compute_alphas_cumprod(" in wrong[0].output
    assert not any(v.passed for v in wrong)


def _reference_bodies() -> list[tuple[str, str]]:
    """(name, body) of every function and method of the reference package, normalised (docstrings out)."""
    import pkgutil

    import reference

    bodies = []
    for module_info in pkgutil.iter_modules(reference.__path__):
        module = __import__(f"reference.{module_info.name}", fromlist=["_"])
        for name, obj in vars(module).items():
            functions = [(name, obj)] if inspect.isfunction(obj) else \
                [(f"{name}.{k}", v) for k, v in vars(obj).items() if inspect.isfunction(v)] if inspect.isclass(obj) else []
            for qualname, fn in functions:
                if getattr(fn, "__module__", "") != module.__name__:
                    continue
                try:
                    source = textwrap.dedent(inspect.getsource(fn))
                except (OSError, TypeError):  # made at run time (a dataclass's __init__): no source to leak
                    continue
                body = re.sub(r'^(\s*)(r?"""|\'\'\').*?\2', "", source.split(":\n", 1)[-1], count=1, flags=re.S)
                lines = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
                if len(lines) >= 2:  # a one-line body (return x) proves nothing either way
                    bodies.append((f"{module.__name__}.{qualname}", "\n".join(lines)))
    return bodies


def _release_texts(folder: Path) -> dict[str, str]:
    """Every text file of the release, each line stripped (so indentation cannot hide a copy)."""
    return {path.relative_to(folder).as_posix(): "\n".join(line.strip() for line in
                                                           path.read_text(encoding="utf-8").splitlines())
            for path in folder.rglob("*") if path.is_file() and path.suffix != ".pt"}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from grader.release import write_release

    out = tmp_path_factory.mktemp("release") / "course"
    write_release(ROOT, out)
    return out


@pytest.mark.slow
def test_no_reference_no_solution_in_the_release(release):
    """Is there no reference module, no reference function body, no solution code or solution-only cell in it?"""
    files = [p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()]
    assert not [f for f in files if f.startswith(("reference/", "solutions/", "grader/exercises/_common", "grader/export/"))]
    assert not [f for f in files if f.startswith("grader/exercises/") and f.endswith(".py")
                and f != "grader/exercises/__init__.py"]  # the declarations are gone, replaced by values
    texts = _release_texts(release)
    text = "\n".join(texts.values())
    assert not re.search(r"^\s*### (BEGIN|END) SOLUTION\s*$", text, re.M)  # a marker line, as in a solution cell
    assert not re.search(r"<!--\s*(BEGIN|END) SOLUTION\s*-->", text)
    importing = {name for name, t in texts.items() if re.search(r"^(import reference|from reference)", t, re.M)}
    # grade submit's sandbox names the reference's folder to forbid it; a release refuses grade submit.
    assert importing <= {"grader/submit.py"}, importing
    bodies = _reference_bodies()
    assert len(bodies) > 20
    leaked = [name for name, body in bodies if body in text]
    assert not leaked, leaked
    for solution_path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(solution_path, as_version=4).cells:
            marked = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S)
            solution_only = "solution-only" in cell.metadata.get("tags", [])
            for code in marked + ([cell.source] if solution_only else []):
                lines = "\n".join(line.strip() for line in code.splitlines() if line.strip())
                if len(lines.splitlines()) >= 2 or solution_only and lines:
                    assert lines not in text, f"{solution_path.name}: solution code in the release"
    for path in (release / "grader" / "exercises" / "released").glob("*.pt"):
        torch.load(path, weights_only=True)  # values only: no pickled code


CHECK_IN_A_FRESH_PROCESS = r'''
import importlib.abc, sys, time
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("reference", "solutions"):
            raise ImportError(f"{name} is not part of the release")
sys.meta_path.insert(0, Refuse())
import torch
import grader, grader.interactive
print("FROM", grader.__file__)
from grader import check

def q_sample(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise

started = time.monotonic(); right = check(q_sample); print("RIGHT", right, time.monotonic() - started)

def q_sample(x0, t, alphas_cumprod, noise=None):
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return a * x0 + (1 - a) * noise

started = time.monotonic(); wrong = check(q_sample); print("WRONG", wrong, time.monotonic() - started)

def q_sample(x0, t, alphas_cumprod, noise=None):  # right again, in float64 all the way (another correct way)
    noise = torch.randn_like(x0) if noise is None else noise
    a = alphas_cumprod.double()[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).to(x0.dtype)

started = time.monotonic(); again = check(q_sample); print("AGAIN", again, time.monotonic() - started)
'''


@pytest.mark.slow
def test_check_answers_from_the_release_alone(release, tmp_path):
    """With only the release on the path and reference unimportable, does check() pass right, fail wrong, fast?"""
    done = subprocess.run([sys.executable, "-c", CHECK_IN_A_FRESH_PROCESS], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(release), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert f"FROM {release / 'grader' / '__init__.py'}" in out
    right, wrong, again = (re.search(rf"^{word} (\w+) ([\d.]+)$", out, re.M) for word in ("RIGHT", "WRONG", "AGAIN"))
    assert right.group(1) == "True" and wrong.group(1) == "False" and again.group(1) == "True"
    assert "Hint: ᾱ_t and 1 − ᾱ_t are variances" in out  # a known mistake named, from recorded values
    assert "judge with code this release does not carry" not in out  # q_sample's public tests are all values
    seconds = [float(m.group(2)) for m in (right, wrong, again)]
    print(f"\ncheck(q_sample) from the release: first call {seconds[0]:.2f} s (torch imports torch._dynamo the "
          f"first time an op runs on the meta device), then {seconds[1]:.2f} s and {seconds[2]:.2f} s")
    # "About a second": the repository's own check() takes 0.03-0.28 s warm on an idle machine
    # (benchmarks); 2 s leaves room for 8 test runs sharing 2 cores.
    assert max(seconds[1:]) < 2


@pytest.mark.slow
def test_the_release_cli_lists_and_refuses_to_grade(release, tmp_path):
    """Does the release's grade list its exercises, and grade submit say in one line why it cannot grade?"""
    env = {"PYTHONPATH": str(release), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "grader", "list"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and "q_sampler" in listed.stdout and "q_sample" in listed.stdout
    refused = subprocess.run([sys.executable, "-m", "grader", "submit", str(release / "exercises" / "q_sampler")],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "student release" in refused.stderr
