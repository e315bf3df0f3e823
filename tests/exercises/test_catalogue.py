"""Is every catalogued bug caught, naming its function, and every correct alternative given full marks?

For each exercise with a catalogue in ``tests/catalogue/``: a bug replaces one
function of the correct namespace; on every seed, at least one test of that
function must fail, and none of another function (each function is checked in
isolation, so a failure elsewhere would be a misattribution). An alternative
must pass every test of its function on every seed. The policy requires
detection in ≥ 99% of seeds; here every seed is required.

Two runs of the same tests:

* the full catalogue, every entry on ``CALIBRATION_SEEDS`` seeds (5 by default; the
  calibration, ``benchmarks/calibrate.py --seeds 20``, made the committed tables), is marked ``slow``: CI runs
  it (``python -m pytest``);
* the contributor's quick loop (``python -m pytest -m "not slow"``) runs, per exercise,
  the correct namespace on one seed and the first catalogued bug and alternative on
  one seed (:data:`QUICK_SEEDS`): every exercise and its catalogue are exercised in
  seconds, and the full run says whether every entry holds on every seed.

They are also the calibration: ``benchmarks/calibrate.py`` runs the full entries and
:func:`test_reference_gets_full_marks_on_every_seed` with CALIBRATION_SEEDS=N and
``--calibration-out FILE`` (tests/conftest.py), and every entry records there, seed by seed,
whether it failed and the p-values of its statistics; the script tabulates that file.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.catalogue as catalogue_package
from tests.helpers import SEEDS, grade_namespace

#: Seeds of the quick loop's entries: one, the grading seed 0 (the full run covers 0 … SEEDS − 1).
QUICK_SEEDS = 1


def _catalogues():
    for module in pkgutil.iter_modules(catalogue_package.__path__):
        yield module.name, importlib.import_module(f"tests.catalogue.{module.name}")


CATALOGUES = list(_catalogues())


def _params(kind: str, quick: bool) -> list:
    """One parameter per (exercise, entry): in the quick loop only the first entry of each exercise."""
    params = []
    for name, module in CATALOGUES:
        entries = getattr(module, kind)
        for entry in entries[:1] if quick else entries:
            marks = () if quick else (pytest.mark.slow,)
            params.append(pytest.param(name, entry, QUICK_SEEDS if quick else SEEDS, marks=marks,
                                       id=f"{'quick ' if quick else ''}{name}: {entry.name}"))
    return params


BUGS = _params("BUGS", quick=True) + _params("BUGS", quick=False)
ALTERNATIVES = _params("ALTERNATIVES", quick=True) + _params("ALTERNATIVES", quick=False)


def _namespace(exercise: str, function: str, impl) -> dict:
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    return {**module.CORRECT, function: impl}


def _record(record, exercise: str, kind: str, entry, seed: int, graded: list, failed: list) -> None:
    """One seed of one entry for ``--calibration-out``: whether it failed, and each statistic's p-value and n."""
    entries = {"bug": "BUGS", "alternative": "ALTERNATIVES"}
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    record({"exercise": exercise, "kind": kind, "name": entry.name if entry else "reference",
            "function": entry.function if entry else "all",
            "index": getattr(module, entries[kind]).index(entry) if entry else -1, "seed": seed, "failed": bool(failed),
            "statistics": [] if kind == "bug" else [[f"{g.name} — {s['name']}", s["p_value"], s["n"]]
                                                    for g in graded for s in g.details.get("statistics", [])]})


def _full_marks(record, exercise: str, kind: str, entry, namespace: dict, seeds: int) -> list[str]:
    """Grade ``namespace`` on seeds 0 … seeds − 1 (only ``entry``'s function, or every check for the reference),
    recording each seed; the failed tests of each seed that had any."""
    failures = []
    for seed in range(seeds):
        graded = grade_namespace(exercise, namespace, seed, functions={entry.function} if entry else None)
        failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
        _record(record, exercise, kind, entry, seed, graded, failed)
        if failed:
            failures.append(f"seed {seed}: " + "\n".join(failed))
    return failures


@pytest.mark.parametrize("exercise, bug, seeds", BUGS)
def test_bug_is_caught_and_named(exercise, bug, seeds, calibration_record):
    """Does some test of the buggy function fail on every seed, and no test of another function?"""
    namespace = _namespace(exercise, bug.function, bug.impl)
    missed = []
    for seed in range(seeds):
        graded = grade_namespace(exercise, namespace, seed, functions={bug.function})
        failed = [g for g in graded if not g.passed]
        assert all(g.function == bug.function for g in failed), [g.name for g in failed]
        _record(calibration_record, exercise, "bug", bug, seed, graded, failed)
        if not failed:
            missed.append(seed)
    assert not missed, f"{bug.name} ({bug.mistake}) was not caught on seeds {missed}"


@pytest.mark.parametrize("exercise, alternative, seeds", ALTERNATIVES)
def test_alternative_gets_full_marks(exercise, alternative, seeds, calibration_record):
    """Does a correct implementation that differs from the reference pass every test, on every seed?"""
    namespace = _namespace(exercise, alternative.function, alternative.impl)
    failures = _full_marks(calibration_record, exercise, "alternative", alternative, namespace, seeds)
    assert not failures, f"{alternative.name} ({alternative.how}) failed:\n" + "\n".join(failures[:3])


@pytest.mark.parametrize("exercise", [name for name, _ in CATALOGUES])
def test_reference_gets_full_marks(exercise):
    """Does the correct namespace itself pass every check of the exercise?"""
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    graded = grade_namespace(exercise, module.CORRECT, seed=0)
    failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.calibration
@pytest.mark.parametrize("exercise", [name for name, _ in CATALOGUES])
def test_reference_gets_full_marks_on_every_seed(exercise, calibration_record, request):
    """The calibration's reference row: does the correct namespace pass every check on CALIBRATION_SEEDS seeds?

    Only under ``--calibration-out`` (``benchmarks/calibrate.py``): elsewhere the reference is graded on
    seed 0 (above) and its statistical checks on 3 × CALIBRATION_SEEDS seeds (test_calibration.py).
    """
    if request.config.getoption("--calibration-out") is None:
        pytest.skip("the reference on every seed is the calibration's row: benchmarks/calibrate.py runs it")
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    failures = _full_marks(calibration_record, exercise, "correct", None, module.CORRECT, SEEDS)
    assert not failures, "\n".join(failures[:3])


def test_the_quick_loop_covers_every_catalogue_and_the_full_run_every_entry():
    """Does the quick loop hold one bug and one alternative of every catalogue, and the slow run all of them?"""
    quick = {p.values[0] for p in BUGS if not p.marks} & {p.values[0] for p in ALTERNATIVES if not p.marks}
    assert quick == {name for name, module in CATALOGUES if module.BUGS and module.ALTERNATIVES}
    for kind, params in (("BUGS", BUGS), ("ALTERNATIVES", ALTERNATIVES)):
        slow = [p.values[1].name for p in params if p.marks]
        assert sorted(slow) == sorted(e.name for _, m in CATALOGUES for e in getattr(m, kind))
