"""Everything that runs inside the student's process, and the code that starts it.

Modules loaded in the student's kernel (before any student code, so that the
audit hook cannot be bypassed by import order): :mod:`.guard`, :mod:`.wire`,
:mod:`.models`, :mod:`.worker`. They import nothing from the rest of the grader.
The grader-side modules :mod:`.kernel` and :mod:`.procs` start, talk to and stop
that process.
"""
