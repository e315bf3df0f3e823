"""Progress of a long batch: a bar on a terminal, plain lines in CI and logs.

On a terminal the bar is tqdm's: it is well kept, computes a smoothed rate and
an ETA, redraws in place at a bounded rate, and copes with narrow or resized
terminals — nothing worth writing again. Where nobody watches a terminal (output
piped to a file, or the ``CI`` variable set, as GitHub Actions, GitLab and most CI
systems do), a bar's carriage returns make unreadable logs, so each finished
submission is one plain line with the counts and the ETA.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` → ``'1m15s'``; ``3725`` → ``'1h02m'``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts finished submissions out of ``total``; ``already`` were done before this run started.

    ``bar=None`` chooses: a tqdm bar when ``stream`` is a terminal and ``CI`` is not set.
    """

    def __init__(self, total: int, already: int = 0, *, stream: TextIO | None = None, bar: bool | None = None,
                 clock=time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done, self.already = total, already, already
        self.clock = clock
        self.started = clock()
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get("CI")
        self._bar = None
        if bar:
            try:
                from tqdm import tqdm
            except ImportError:  # a dependency of the grader; without it, plain lines still say everything
                return
            self._bar = tqdm(total=total, initial=already, unit="notebook", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)

    def eta(self) -> float | None:
        """Seconds left, from this run's rate (submissions kept from an earlier run took no time)."""
        graded = self.done - self.already
        if graded <= 0:
            return None
        return (self.clock() - self.started) / graded * (self.total - self.done)

    def advance(self, label: str, outcome: str) -> None:
        """One more submission finished: ``label`` (who) and ``outcome`` (its score or why not)."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{label}: {outcome}"[:40], refresh=False)
            self._bar.update(1)
            return
        eta = self.eta()
        left = f", ETA {format_duration(eta)}" if eta is not None and self.done < self.total else ""
        print(f"[{self.done}/{self.total}] {label}: {outcome} ({format_duration(self.clock() - self.started)}"
              f" elapsed{left})", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
