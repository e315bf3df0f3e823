"""An autograder for a course on diffusion models.

Public surface: :func:`check`, for students in their notebooks, and the ``grade``
command (:mod:`grader.cli`). Everything else is the grader's own machinery.

This module stays tiny on purpose: it is imported inside the sandboxed kernel
that runs student code, where the rest of the package is off limits.
"""

from __future__ import annotations

from grader._version import __version__

__all__ = ["__version__", "check"]


def check(function, *, examples: int | None = None, verbose: bool = False):
    """Run the quick public checks of one exercise function, in this notebook.

    ``check(q_sample)`` looks up the exercise that ``q_sample`` belongs to by its
    name, calls it on a handful of inputs (the boundaries first) and prints what
    passed and, for what failed, the input, the expected and the returned value.
    It is a study aid: the grade comes from ``grade submit``, which runs many
    more checks, including statistical ones.

    Returns:
        True when every public check passed.
    """
    import os

    if os.environ.get("GRADER_SANDBOX"):
        # One line and no error: an honest notebook's check() cells must run cleanly under grading, where
        # the checks themselves are out of the kernel's reach (Landlock) and `grade submit` runs them all.
        print(f"check({getattr(function, '__name__', '?')}) is skipped while grading: `grade submit` is doing the checking")
        return None
    from grader.interactive import check as _check

    return _check(function, examples=examples, verbose=verbose)
