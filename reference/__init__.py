"""The reference implementation of the course, one module per exercise.

Each module holds the curriculum's functions under the curriculum's names
(``reference.ddim.ddim_step`` answers what a student's ``ddim_step`` must
answer), plus :mod:`reference.toy`, the analytic toy problems (Gaussian and
Gaussian-mixture data) whose exact scores, denoisers and sampler laws the grader
checks samplers against.

Everything here is device- and dtype-agnostic and draws randomness only from an
explicit ``noise`` tensor or ``generator``. Nothing here imports the grader.
"""
