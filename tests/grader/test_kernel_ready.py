"""The grader's wait for a fresh kernel (grader.sandbox.cells.wait_for_ready): done when both channels are joined.

No kernel here: a fake client whose channels behave as ZeroMQ's do when the kernel is slow to bind or
IOPub's subscription joins late (what a channel missed is lost).
"""

from __future__ import annotations

import asyncio
from queue import Empty

import pytest

from grader.sandbox.cells import wait_for_ready


class _Channel:
    def __init__(self) -> None:
        self.queue: list[dict] = []

    async def get_msg(self, timeout=None):
        if self.queue:
            return self.queue.pop(0)
        await asyncio.sleep(min(timeout or 0, 0.01))
        raise Empty


class _Client:
    """Answers kernel_info on shell at once; IOPub is joined only from the ``joins_at``-th request on."""

    def __init__(self, joins_at: int = 1, alive: bool = True, answers: bool = True) -> None:
        self.shell_channel, self.iopub_channel = _Channel(), _Channel()
        self.requests, self.joins_at, self.alive, self.answers = 0, joins_at, alive, answers
        self.handled = None

    def kernel_info(self) -> str:
        self.requests += 1
        msg_id = f"info-{self.requests}"
        if self.answers:
            reply = {"msg_type": "kernel_info_reply", "parent_header": {"msg_id": msg_id}, "content": {}}
            self.shell_channel.queue.append(reply)
            if self.requests >= self.joins_at:  # before that, IOPub's messages went nowhere
                for state in ("busy", "idle"):
                    self.iopub_channel.queue.append({"msg_type": "status", "parent_header": {"msg_id": msg_id},
                                                     "content": {"execution_state": state}})
        return msg_id

    async def is_alive(self) -> bool:
        return self.alive

    def _handle_kernel_info_reply(self, msg) -> None:
        self.handled = msg


def test_ready_once_iopub_carried_the_answer():
    """Is the kernel ready after the first kernel_info when both channels carry its answer (no second request)?"""
    kc = _Client(joins_at=1)
    asyncio.run(wait_for_ready(kc, 10))
    assert kc.requests == 1 and kc.handled["parent_header"]["msg_id"] == "info-1"


def test_a_late_iopub_is_asked_again_until_it_carries_the_answer():
    """IOPub joins only at the third request: is the wait over only then, never on the shell reply alone?

    Seen failing with the IOPub check removed (ready on the first shell reply, while the first cell's
    output would still have gone nowhere).
    """
    kc = _Client(joins_at=3)
    asyncio.run(wait_for_ready(kc, 30))
    assert kc.requests == 3 and kc.handled["parent_header"]["msg_id"] == "info-3"


def test_a_dead_kernel_and_a_silent_one_raise():
    """A kernel that died, and one that never answers within the timeout: RuntimeError, not a hang?"""
    with pytest.raises(RuntimeError, match="died"):
        asyncio.run(wait_for_ready(_Client(answers=False, alive=False), 30))
    with pytest.raises(RuntimeError, match="respond"):
        asyncio.run(wait_for_ready(_Client(answers=False), 0.05))


def _display(png_chars: int) -> dict:
    return {"msg_type": "display_data", "header": {"msg_type": "display_data"}, "parent_header": {"msg_id": "x"},
            "content": {"data": {"image/png": "A" * png_chars, "text/plain": "<Figure>"}, "metadata": {}}}


def test_a_figure_of_a_solution_is_kept_and_a_flood_is_cut():
    """Is a 270 kB figure (the size of the course's largest scatter plots) kept whole, while one cell's output past
    1 MB and a notebook's past 5 MB are cut with a note?

    Seen failing at the old 200 kB cap: four solution figures (langevin, q_sampler, ddim, sde) were cut from the
    executed notebook a student gets back.
    """
    import nbformat

    from grader.sandbox.cells import _CappedClient

    client = _CappedClient(nbformat.v4.new_notebook())
    client.reset_execution_trackers()
    client.clear_before_next_output = False  # what nbclient sets as a cell starts
    cells = [nbformat.v4.new_code_cell("plot()") for _ in range(8)]
    client.process_message(_display(270_000), cells[0], 0)
    assert [o["output_type"] for o in cells[0].outputs] == ["display_data"]
    for _ in range(4):
        client.process_message(_display(300_000), cells[1], 1)
    assert "output cut by the grader after 1,000,000 bytes" in cells[1].outputs[-1]["text"]
    for index in range(2, 8):
        client.process_message(_display(900_000), cells[index], index)
    assert "in the whole notebook" in cells[7].outputs[-1]["text"]
