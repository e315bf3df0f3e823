"""grade release: what students get holds values, never the reference or a solution, and check(fn) works from it.

Fast: a public check whose judge is its declaration's code records as plain data (its
judge copied, what it asks of the reference a proxy), saved and loaded with
``weights_only=True``; a proxy answers what it recorded and nothing else; a toy model
travels as a table that the release's model replays. Slow (one release, written once for
the module): the release holds every public test of the course but those listed in
:data:`NOT_HELD`; its check() verdicts equal the checkout's, per exercise, on the reference
and on catalogued bugs (``RELEASE_BUGS=all``: every one); no reference function body, no solution cell is in any of
its files, the recorded values included (a planted reference line is found); and check()
answers in a fresh process that sees only the release, with ``reference`` unimportable.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

from grader.checks import Context
from grader.exercises import exercise_names, load_exercise
from grader.release import Encoder, Proxy, Table, Unrecorded, load_released, record_check
from grader.runner import InProcessRunner

ROOT = Path(__file__).resolve().parents[2]

#: The public tests a release cannot hold, and why: the judge runs the reference on the student's output.
NOT_HELD = {
    "ddim_invert: η = 0 sampling from its x_T returns x₀ within 0.3 standard deviations":
        "samples with the reference from the student's x_T (code on the student's output, not a value)",
    **dict.fromkeys([
        "dpm_solver_sample: the first step is first order (no previous x̂₀ yet)",
        "dpm_solver_sample: the last step, to the data, is first order",
        "dpm_solver_sample: every other step is a 2M step with the previous x̂₀",
        "dpm_solver_sample: measured order of convergence ≈ 2 on Gaussian data (40, 80, 160 steps against the "
        "ODE's exact solution)"],
        "steps the reference's solver from the student's own states (code on the student's output, not a value)"),
}


def test_a_judge_of_code_records_as_data(tmp_path):
    """Does a public check judged by its declaration's code record as data, its judge copied, the reference a proxy?"""
    exercise = load_exercise("q_sampler")
    check = next(c for c in exercise.checks if c.function == "cosine_beta_schedule" and type(c).__name__ == "Property")
    encoder = Encoder(Table())
    data = record_check(check, "q_sampler", encoder)
    torch.save(data, tmp_path / "check.pt")
    loaded = torch.load(tmp_path / "check.pt", weights_only=True)  # raises on anything but plain data
    assert loaded["tests"] == [spec.name for spec in check.tests()] and not loaded["dropped"]
    judge = loaded["fields"]["aspects"]["tuple"][0]["fields"]["judge"]
    assert judge == {"shipped": "judge_schedule_properties"}
    assert list(encoder.shipped) == ["judge_schedule_properties"]  # the judge, and nothing the hidden checks use
    assert "def judge_schedule_properties(" in encoder.module_source("q_sampler")
    hidden = [c for c in exercise.checks if not c.public]
    assert hidden and not any(getattr(c, "probe", None) and c.probe.__name__ in encoder.shipped for c in hidden)


def test_a_proxy_answers_what_it_recorded_and_nothing_else():
    """Does a proxy record an answer, replay it from the table alone, and refuse a question it was never asked?"""
    table = Table()
    table.targets["f"] = lambda x: x * 2
    proxy = table.proxy("f")
    table.recording = True
    assert torch.equal(proxy(torch.ones(2)), torch.full((2,), 2.0))
    table.recording = False
    replay = Table(table.values).proxy("f")  # no target: the record only
    assert isinstance(replay, Proxy) and torch.equal(replay(torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(Unrecorded):
        replay(torch.ones(2) * 1.0001)  # the student's output, say: never asked at release time


def test_a_toy_model_travels_as_a_table():
    """Does the tabulated Gaussian ε-model give the toy model's values at every timestep, in the input's dtype?"""
    from grader.release import _tabulated
    from grader.sandbox import models, wire
    from grader.checks import Inputs

    g = torch.Generator().manual_seed(0)
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)
    spec = wire.model_spec("gaussian_eps", mean=torch.randn(3, generator=g, dtype=torch.float64),
                           var=torch.rand(3, generator=g, dtype=torch.float64) + 0.1, alphas_cumprod=ac)
    table = _tabulated(spec, Inputs({"model": spec}))
    original, replayed = models.build(spec, []), models.build(table, [])
    x, t = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.arange(50)
    assert torch.allclose(replayed(x, t), original(x, t), rtol=1e-12, atol=1e-12)
    assert replayed(x.float(), t).dtype == torch.float64  # float64 parameters promote, as the toy's do
    with pytest.raises(IndexError):
        replayed(x, t + 50)  # past the schedule, as ᾱ[t] is


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


def _strings(value) -> list[str]:
    """Every string a recorded value holds (keys included): notes, messages, names."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [s for v in value for s in _strings(v)]
    return []


def _release_texts(folder: Path) -> dict[str, str]:
    """Every text file of the release and every string of its recorded values, each line stripped."""
    texts = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        raw = "\n".join(_strings(torch.load(path, weights_only=True))) if path.suffix == ".pt" else \
            path.read_text(encoding="utf-8")
        texts[path.relative_to(folder).as_posix()] = "\n".join(line.strip() for line in raw.splitlines())
    return texts


def _solution_code() -> list[tuple[str, str]]:
    """(notebook, code) of every solution cell and solution-only cell of the course, lines stripped."""
    found = []
    for solution_path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(solution_path, as_version=4).cells:
            marked = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S)
            solution_only = "solution-only" in cell.metadata.get("tags", [])
            for code in marked + ([cell.source] if solution_only else []):
                lines = "\n".join(line.strip() for line in code.splitlines() if line.strip())
                if len(lines.splitlines()) >= 2 or solution_only and lines:
                    found.append((solution_path.name, lines))
    return found


def _leaks(folder: Path) -> list[str]:
    """What of the reference or the solutions a release holds, anywhere: files, copied code, recorded values."""
    texts = _release_texts(folder)
    text = "\n".join(texts.values())
    leaks = [f"solution marker in {name}" for name, t in texts.items()
             if re.search(r"^\s*### (BEGIN|END) SOLUTION\s*$", t, re.M) or re.search(r"<!--\s*(BEGIN|END) SOLUTION\s*-->", t)]
    # grade submit's sandbox names the reference's folder to forbid it; a release refuses grade submit.
    leaks += [f"{name} imports reference" for name, t in texts.items()
              if re.search(r"^(import reference|from reference)", t, re.M) and name != "grader/submit.py"]
    leaks += [f"the body of {name}" for name, body in _reference_bodies() if body in text]
    leaks += [f"solution code of {notebook}" for notebook, code in _solution_code() if code in text]
    return leaks


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from grader.release import write_release

    out = tmp_path_factory.mktemp("release") / "course"
    write_release(ROOT, out)
    return out


def _hidden_only_code(exercise) -> set[str]:
    """Names of a declaration's functions that only hidden checks use as judge, probe or scenario."""

    def names(checks) -> set[str]:
        found = set()
        for check in checks:
            for fn in [getattr(a, "judge", None) for a in getattr(check, "aspects", ())] + [getattr(check, "probe", None)]:
                module = getattr(fn, "__module__", "") or ""
                if module.startswith("grader.exercises.") and hasattr(fn, "__qualname__"):
                    found.add(fn.__qualname__.split(".")[0])
        return found

    return names(c for c in exercise.checks if not c.public) - names(c for c in exercise.checks if c.public)


@pytest.mark.slow
def test_no_reference_no_solution_in_the_release(release):
    """Is there no reference module, no reference function body, no solution code, no hidden check's code in it?"""
    files = [p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()]
    assert not [f for f in files if f.startswith(("reference/", "solutions/", "grader/exercises/_common", "grader/export/"))]
    declarations = [f for f in files if f.startswith("grader/exercises/") and f.endswith(".py")
                    and not f.startswith("grader/exercises/released/") and f != "grader/exercises/__init__.py"]
    assert not declarations  # the declarations are gone: recorded values and the public checks' code instead
    assert len(_reference_bodies()) > 20 and len(_solution_code()) > 20
    assert not _leaks(release)
    for name in exercise_names():
        copied = (release / "grader" / "exercises" / "released" / f"{name}.py").read_text(encoding="utf-8")
        hidden = sorted(n for n in _hidden_only_code(load_exercise(name)) if f"def {n}(" in copied)
        assert not hidden, f"{name}: code of hidden checks only in the release: {hidden}"


@pytest.mark.slow
def test_a_planted_reference_line_is_found(release, tmp_path):
    """Is a reference function's body, planted in one recorded note of a copy of the release, found?"""
    import shutil

    planted = tmp_path / "planted"
    shutil.copytree(release / "grader" / "exercises" / "released", planted / "grader" / "exercises" / "released")
    path = planted / "grader" / "exercises" / "released" / "q_sampler.pt"
    data = torch.load(path, weights_only=True)
    name, body = next((n, b) for n, b in _reference_bodies() if n.startswith("reference.q_sampler."))
    data["checks"][0]["cases"][0][2] = {"dict": [["x0", body]]}  # a case's notes, as a recorded value
    torch.save(data, path)
    assert _leaks(planted) == [f"the body of {name}"]


#: Public tests held by the release, per exercise, as written by ``grade release`` (NOT_HELD says why not all).
HELD = {"q_sampler": (13, 13), "cfg": (20, 20), "elbo": (15, 15), "langevin": (15, 15), "ddim": (15, 16),
        "parametrization": (26, 26), "lora": (11, 11), "latent_vae": (10, 10), "fid": (6, 6),
        "sde": (16, 16), "dpm_solver": (13, 17)}


def _bundle(release: Path, name: str) -> dict:
    return torch.load(release / "grader" / "exercises" / "released" / f"{name}.pt", weights_only=True)


@pytest.mark.slow
def test_the_release_holds_every_public_test(release):
    """Does the bundle hold every public test of every exercise, but those NOT_HELD (a table, printed)?"""
    rows = []
    for name in exercise_names():
        data = _bundle(release, name)
        held = [t for c in data["checks"] for t in c["tests"]]
        public = [spec.name for c in load_exercise(name).checks if c.public for spec in c.tests()]
        assert sorted(held + list(data["not_released"])) == sorted(public)  # every public test, held or named
        rows.append(f"| {name} | {len(held)}/{len(public)} |")
        assert (len(held), len(public)) == HELD.get(name), name  # a new exercise is pinned here too
        assert set(data["not_released"]) <= set(NOT_HELD), data["not_released"]
    print("\n| exercise | held |\n| --- | --- |\n" + "\n".join(rows))


def _verdicts(checks, namespace: dict, exercise: str, functions: set, left: set) -> dict:
    from grader.interactive import SCALE
    from grader.submit import run_checks

    ctx = Context(InProcessRunner(dict(namespace)), torch.device("cpu"), 0, exercise, scale=SCALE, public_only=True)
    chosen = tuple(c for c in checks if c.public and c.function in functions)
    return {spec.name: verdict.passed for _, spec, verdict in run_checks(chosen, ctx) if spec.name not in left}


@pytest.mark.slow
@pytest.mark.parametrize("exercise", sorted(HELD))
def test_release_verdicts_are_the_checkouts(release, exercise):
    """Do the release's public checks give the checkout's verdicts, on the reference and on catalogued bugs?

    The first bug of each function by default (CI's budget: every bug of the course takes ~12 min on
    the loaded 2 cores); ``RELEASE_BUGS=all`` runs every catalogued bug.
    """
    catalogue = importlib.import_module(f"tests.catalogue.{exercise}")
    data, released = load_released(release / "grader" / "exercises" / "released", exercise, from_file=True)
    left, declared = set(data["not_released"]), load_exercise(exercise).checks
    functions = {f for f, _ in load_exercise(exercise).functions}
    bugs = catalogue.BUGS if os.environ.get("RELEASE_BUGS") == "all" else \
        list({bug.function: bug for bug in reversed(catalogue.BUGS)}.values())  # the first bug of each function
    students = [("the reference", catalogue.CORRECT, functions)] + [
        (bug.name, {**catalogue.CORRECT, bug.function: bug.impl}, {bug.function}) for bug in bugs]
    caught, differ = 0, []
    for label, namespace, chosen in students:
        mine = _verdicts(released, namespace, exercise, chosen, left)
        theirs = _verdicts(declared, namespace, exercise, chosen, left)
        assert set(mine) == set(theirs), label
        differ += [f"{label}: {t} (release {mine[t]}, checkout {theirs[t]})" for t in mine if mine[t] != theirs[t]]
        caught += label != "the reference" and not all(theirs.values())
    assert not differ, differ
    assert all(_verdicts(released, catalogue.CORRECT, exercise, functions, left).values())
    print(f"\n{exercise}: the same verdicts on the reference and {len(bugs)} of {len(catalogue.BUGS)} bugs "
          f"({caught} caught by the public tests)")


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
    assert "cannot be answered from values recorded" not in out  # q_sample's public tests are all held
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
