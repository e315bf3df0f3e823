"""Is every catalogued bug caught, naming its function, and every correct alternative given full marks?

For each exercise with a catalogue in ``tests/catalogue/``: a bug replaces one
function of the correct namespace; on every seed, at least one test of that
function must fail, and none of another function (each function is checked in
isolation, so a failure elsewhere would be a misattribution). An alternative
must pass every test of its function on every seed. The policy requires
detection in ≥ 99% of seeds; here every seed is required.

Two runs of the same tests:

* the full catalogue, every entry on ``CALIBRATION_SEEDS`` seeds (10 by default; the
  full calibration, ``benchmarks/calibrate.py``, uses 200), is marked ``slow``: CI runs
  it (``python -m pytest``);
* the contributor's quick loop (``python -m pytest -m "not slow"``) runs, per exercise,
  the correct namespace on one seed and the first catalogued bug and alternative on
  one seed (:data:`QUICK_SEEDS`): every exercise and its catalogue are exercised in
  seconds, and the full run says whether every entry holds on every seed.
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


@pytest.mark.parametrize("exercise, bug, seeds", BUGS)
def test_bug_is_caught_and_named(exercise, bug, seeds):
    """Does some test of the buggy function fail on every seed, and no test of another function?"""
    namespace = _namespace(exercise, bug.function, bug.impl)
    missed = []
    for seed in range(seeds):
        graded = grade_namespace(exercise, namespace, seed, functions={bug.function})
        failed = [g for g in graded if not g.passed]
        assert all(g.function == bug.function for g in failed), [g.name for g in failed]
        if not failed:
            missed.append(seed)
    assert not missed, f"{bug.name} ({bug.mistake}) was not caught on seeds {missed}"


@pytest.mark.parametrize("exercise, alternative, seeds", ALTERNATIVES)
def test_alternative_gets_full_marks(exercise, alternative, seeds):
    """Does a correct implementation that differs from the reference pass every test, on every seed?"""
    namespace = _namespace(exercise, alternative.function, alternative.impl)
    for seed in range(seeds):
        graded = grade_namespace(exercise, namespace, seed, functions={alternative.function})
        failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
        assert not failed, f"seed {seed}: {alternative.name} ({alternative.how}) failed:\n" + "\n".join(failed)


@pytest.mark.parametrize("exercise", [name for name, _ in CATALOGUES])
def test_reference_gets_full_marks(exercise):
    """Does the correct namespace itself pass every check of the exercise?"""
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    graded = grade_namespace(exercise, module.CORRECT, seed=0)
    failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
    assert not failed, "\n".join(failed)


def test_the_quick_loop_covers_every_catalogue_and_the_full_run_every_entry():
    """Does the quick loop hold one bug and one alternative of every catalogue, and the slow run all of them?"""
    quick = {p.values[0] for p in BUGS if not p.marks} & {p.values[0] for p in ALTERNATIVES if not p.marks}
    assert quick == {name for name, module in CATALOGUES if module.BUGS and module.ALTERNATIVES}
    for kind, params in (("BUGS", BUGS), ("ALTERNATIVES", ALTERNATIVES)):
        slow = [p.values[1].name for p in params if p.marks]
        assert sorted(slow) == sorted(e.name for _, m in CATALOGUES for e in getattr(m, kind))
