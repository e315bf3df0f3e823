"""nbclient with the grader's caps: the part of :mod:`grader.sandbox.kernel` that needs nbclient.

Kept apart so that the grader can start the kernel before it imports nbclient and
nbformat (over a second together: jsonschema's format checkers): the kernel boots
while the grader loads them, torch and the exercise.
"""

from __future__ import annotations

import json
import time
from queue import Empty

import nbformat
import zmq
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

__all__ = ["DeadKernelError", "_CappedClient", "_short_error", "wait_for_ready"]


#: How long a send on the shell, control or stdin channel may wait (s), after which it raises ``zmq.Again``
#: (the kernel is then treated as dead: :func:`grader.sandbox.kernel._lost`). jupyter_client sends with a
#: blocking send, which waits forever once no connection to the kernel is left to queue the message on: a
#: cell that writes junk into its ZeroMQ sockets has the grader drop them. A message to a connected kernel
#: is queued at once (the high-water mark is 1000 messages; the grader has one or two in flight).
SEND_TIMEOUT = 5.0


class _CappedClient(NotebookClient):
    """nbclient with caps on the output each cell, and the whole notebook, may keep.

    Every IOPub message of a cell counts (not only outputs: a display update or a comm message
    carries data too, and nbclient would store it); once a cap is reached the rest is dropped
    with a note. Errors always pass, cut to a few lines, so that a failing cell is still seen.
    """

    output_limit: int = 1_000_000
    #: The whole notebook's outputs, so that many small floods cannot add up to a huge file: 5 MB, twice
    #: what the course's largest solution shows (a dozen figures of 50-270 kB each; scatter plots of
    #: thousands of points are the large ones).
    notebook_limit: int = 5_000_000

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
        if used + size > self.output_limit or total + size > self.notebook_limit:
            if cell_index not in self._cut:
                self._cut.add(cell_index)
                which = (f"{self.output_limit:,} bytes" if used + size > self.output_limit
                         else f"{self.notebook_limit:,} bytes in the whole notebook")
                cell.setdefault("outputs", []).append(nbformat.v4.new_output(
                    "stream", name="stderr", text=f"\n[output cut by the grader after {which}]\n"))
            return None
        return super().process_message(msg, cell, cell_index)

    def reset_execution_trackers(self) -> None:
        super().reset_execution_trackers()
        self._used: dict[int, int] = {}
        self._cut: set[int] = set()
        self.timed_out = False

    async def async_start_new_kernel_client(self):
        """nbclient's, but ready as soon as the kernel has answered (:func:`wait_for_ready`)."""
        assert self.km is not None
        self.kc = self.km.client()
        try:
            # No heartbeat: the manager's process tells whether the kernel lives (kc.is_alive asks it), and a
            # heartbeat thread whose ping found no connection never stops (stop_channels waited forever).
            await ensure_async(self.kc.start_channels(hb=False))
            for channel in (self.kc.shell_channel, self.kc.control_channel, self.kc.stdin_channel):
                channel.socket.setsockopt(zmq.SNDTIMEO, int(SEND_TIMEOUT * 1000))
            await wait_for_ready(self.kc, self.startup_timeout)
        except Exception:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        return self.kc

    async def _async_handle_timeout(self, timeout, cell=None):
        self.timed_out = True  # whatever the kernel answers after the interrupt, this cell timed out
        return await super()._async_handle_timeout(timeout, cell)


def _short_error(content: dict) -> dict:
    """An error message's content with its name, value and traceback cut to a readable size."""
    lines = content.get("traceback", [])
    lines = [str(line)[:2000] for line in lines[-60:]] if isinstance(lines, list) else []
    return {**content, "ename": str(content.get("ename", "Error"))[:200],
            "evalue": str(content.get("evalue", ""))[:2000], "traceback": lines}


#: Seconds to wait for IOPub to carry the answer of one kernel_info request once its reply came, before
#: asking again (IOPub's subscription may not have joined yet; what it missed is lost): jupyter_client's.
IOPUB_JOIN = 0.2


async def wait_for_ready(kc, timeout: float) -> None:
    """Return once the kernel answered a kernel_info request on the shell channel *and* IOPub carried
    that request's "idle" status, so both channels are connected and the first cell's output cannot be
    lost; raise RuntimeError when it died or ``timeout`` passed first.

    jupyter_client's ``wait_for_ready`` ends with a blind drain of IOPub that always waits 0.2 s for a
    message that does not come (on every submission); here the kernel_info's own busy/idle pair is the
    proof that IOPub is joined, and the wait ends the moment its "idle" arrives.
    """
    deadline = time.monotonic() + timeout
    asked: set[str] = set()
    while True:
        asked.add(kc.kernel_info())
        replied = False
        try:
            reply = await ensure_async(kc.shell_channel.get_msg(timeout=1))
            replied = reply.get("msg_type") == "kernel_info_reply"
        except Empty:
            pass
        if replied:
            joined = time.monotonic() + IOPUB_JOIN
            while time.monotonic() < joined:
                try:
                    msg = await ensure_async(kc.iopub_channel.get_msg(timeout=max(0.0, joined - time.monotonic())))
                except Empty:
                    break
                if (msg.get("parent_header", {}).get("msg_id") in asked and msg.get("msg_type") == "status"
                        and msg.get("content", {}).get("execution_state") == "idle"):
                    kc._handle_kernel_info_reply(reply)
                    return
        if not await ensure_async(kc.is_alive()):
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
