"""Everything that runs inside the student's process, and the code that starts it.

Modules loaded in the student's kernel (before any student code, so that the
audit hook cannot be bypassed by import order): :mod:`.guard`, :mod:`.wire`,
:mod:`.models`, :mod:`.worker`, :mod:`.figures` (a ``grade batch`` zygote's first
figure), and the walls :mod:`.namespace` and :mod:`.landlock` (stdlib only). They
import nothing from the rest of the grader, whose files the walls then leave out
of the kernel's reach. The grader-side modules :mod:`.kernel`,
:mod:`.procs`, :mod:`.isolation` and :mod:`.watchdog` start, confine, watch, talk to
and stop that process.
"""
