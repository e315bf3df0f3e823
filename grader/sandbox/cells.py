"""nbclient with the grader's caps: the part of :mod:`grader.sandbox.kernel` that needs nbclient.

Kept apart so that the grader can start the kernel before it imports nbclient and
nbformat (over a second together: jsonschema's format checkers): the kernel boots
while the grader loads them, torch and the exercise.
"""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

__all__ = ["DeadKernelError", "_CappedClient", "_short_error"]


class _CappedClient(NotebookClient):
    """nbclient with caps on the output each cell, and the whole notebook, may keep.

    Every IOPub message of a cell counts (not only outputs: a display update or a comm message
    carries data too, and nbclient would store it); once a cap is reached the rest is dropped
    with a note. Errors always pass, cut to a few lines, so that a failing cell is still seen.
    """

    output_limit: int = 200_000
    #: The whole notebook's outputs: 25 cells at the per-cell cap (the course's notebooks show a
    #: dozen plots of about 50 kB each), so that many small floods cannot add up to a huge file.
    total_cells: int = 25

    def process_message(self, msg, cell, cell_index):  # noqa: D401 -- nbclient's hook
        msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        if msg_type in ("status", "execute_input"):
            return super().process_message(msg, cell, cell_index)
        if msg_type == "error":
            msg["content"] = _short_error(msg.get("content", {}))
            return super().process_message(msg, cell, cell_index)
        size = len(json.dumps(msg.get("content", {}), default=str))
        used, total = self._used.get(cell_index, 0), getattr(self, "_total", 0)  # _total outlives restarts
        self._used[cell_index], self._total = used + size, total + size
        if used + size > self.output_limit or total + size > self.output_limit * self.total_cells:
            if cell_index not in self._cut:
                self._cut.add(cell_index)
                which = (f"{self.output_limit:,} bytes" if used + size > self.output_limit
                         else f"{self.output_limit * self.total_cells:,} bytes in the whole notebook")
                cell.setdefault("outputs", []).append(nbformat.v4.new_output(
                    "stream", name="stderr", text=f"\n[output cut by the grader after {which}]\n"))
            return None
        return super().process_message(msg, cell, cell_index)

    def reset_execution_trackers(self) -> None:
        super().reset_execution_trackers()
        self._used: dict[int, int] = {}
        self._cut: set[int] = set()
        self.timed_out = False

    async def _async_handle_timeout(self, timeout, cell=None):
        self.timed_out = True  # whatever the kernel answers after the interrupt, this cell timed out
        return await super()._async_handle_timeout(timeout, cell)


def _short_error(content: dict) -> dict:
    """An error message's content with its name, value and traceback cut to a readable size."""
    lines = content.get("traceback", [])
    lines = [str(line)[:2000] for line in lines[-60:]] if isinstance(lines, list) else []
    return {**content, "ename": str(content.get("ename", "Error"))[:200],
            "evalue": str(content.get("evalue", ""))[:2000], "traceback": lines}
