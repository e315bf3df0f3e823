"""The grader's errors: each message is written for the person who must act on it.

A :class:`GraderError` ends the ``grade`` command with its ``exit_code`` and its
message on one line, never a traceback.
"""

from __future__ import annotations

__all__ = ["GraderError", "SubmissionError", "UnknownExercise", "UsageError"]


class GraderError(Exception):
    """Grading could not happen; ``str(error)`` says why and what to do."""

    exit_code = 2


class SubmissionError(GraderError):
    """The input cannot be graded: no notebook, not a notebook, an unreadable notebook."""


class UnknownExercise(SubmissionError):
    """The notebook names (or its folder is named after) an exercise the grader does not know."""


class UsageError(GraderError):
    """The command line asks for something impossible (e.g. ``--device cuda`` without a GPU)."""
