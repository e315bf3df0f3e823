"""Is every catalogued bug caught, naming its function, and every correct alternative given full marks?

For each exercise with a catalogue in ``tests/catalogue/``: a bug replaces one
function of the correct namespace; on every seed, at least one test of that
function must fail, and none of another function (each function is checked in
isolation, so a failure elsewhere would be a misattribution). An alternative
must pass every test of its function on every seed. The number of seeds is
``CALIBRATION_SEEDS`` (10 by default; the full calibration uses 200); the
policy requires detection in ≥ 99% of seeds, and here every seed is required.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.catalogue as catalogue_package
from tests.helpers import SEEDS, grade_namespace


def _catalogues():
    for module in pkgutil.iter_modules(catalogue_package.__path__):
        yield module.name, importlib.import_module(f"tests.catalogue.{module.name}")


BUGS = [pytest.param(name, bug, id=f"{name}: {bug.name}") for name, mod in _catalogues() for bug in mod.BUGS]
ALTERNATIVES = [pytest.param(name, alt, id=f"{name}: {alt.name}") for name, mod in _catalogues() for alt in mod.ALTERNATIVES]


def _namespace(exercise: str, function: str, impl) -> dict:
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    return {**module.CORRECT, function: impl}


@pytest.mark.parametrize("exercise, bug", BUGS)
def test_bug_is_caught_and_named(exercise, bug):
    """Does some test of the buggy function fail on every seed, and no test of another function?"""
    namespace = _namespace(exercise, bug.function, bug.impl)
    missed = []
    for seed in range(SEEDS):
        graded = grade_namespace(exercise, namespace, seed, functions={bug.function})
        failed = [g for g in graded if not g.passed]
        assert all(g.function == bug.function for g in failed), [g.name for g in failed]
        if not failed:
            missed.append(seed)
    assert not missed, f"{bug.name} ({bug.mistake}) was not caught on seeds {missed}"


@pytest.mark.parametrize("exercise, alternative", ALTERNATIVES)
def test_alternative_gets_full_marks(exercise, alternative):
    """Does a correct implementation that differs from the reference pass every test, on every seed?"""
    namespace = _namespace(exercise, alternative.function, alternative.impl)
    for seed in range(SEEDS):
        graded = grade_namespace(exercise, namespace, seed, functions={alternative.function})
        failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
        assert not failed, f"seed {seed}: {alternative.name} ({alternative.how}) failed:\n" + "\n".join(failed)


@pytest.mark.parametrize("exercise", [name for name, _ in _catalogues()])
def test_reference_gets_full_marks(exercise):
    """Does the correct namespace itself pass every check of the exercise?"""
    module = importlib.import_module(f"tests.catalogue.{exercise}")
    graded = grade_namespace(exercise, module.CORRECT, seed=0)
    failed = [f"{g.name}: {g.output}" for g in graded if not g.passed]
    assert not failed, "\n".join(failed)
