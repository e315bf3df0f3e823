"""The student's process: a sandboxed Jupyter kernel that runs the notebook, then answers calls.

:class:`SandboxKernel` starts ipykernel through :mod:`grader.sandbox.launch`
(limits, then guard), executes the notebook's cells with nbclient (a per-cell
timeout, an output cap, errors recorded and later cells still run), and then
serves batched calls through :mod:`grader.sandbox.worker`.

Every wait has a deadline. A call that overruns is interrupted; a kernel that
does not answer the interrupt, or that dies (``os._exit``, a signal, the CPU
limit), is killed with everything it started and restarted, and the cells that
ran cleanly the first time are replayed so that later calls find the
notebook's definitions again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec
from jupyter_core.utils import run_sync

from grader.errors import GraderError
from grader.sandbox import isolation, procs
from grader.sandbox.constants import MAX_OUTCOME_BYTES, OUTCOME_MIME

if TYPE_CHECKING:
    import nbformat

__all__ = ["CellRun", "KernelError", "Limits", "SandboxKernel"]

GiB = 1024**3

#: The largest message the grader accepts from the kernel on any channel (ZMQ_MAXMSGSIZE: a
#: bigger one is dropped by ZeroMQ before the grader parses it). One outcome of the largest size
#: the grader reads back (:data:`grader.sandbox.wire.MAX_OUTCOME_BYTES`) in base64, with room for
#: the JSON around it; a notebook's outputs are cut far below this anyway (``Limits.output_bytes``).
MAX_MESSAGE_BYTES = 2 * MAX_OUTCOME_BYTES
#: The most outcome bytes (packed: wire.pack) one batch may send back: what the grader holds at once.
MAX_BATCH_BYTES = 4 * MAX_OUTCOME_BYTES
#: Seconds the grader keeps reading IOPub after the kernel's reply, for the outcomes published
#: before it (they come through another socket, so they may trail the reply). They are sent before
#: the reply, so they are normally in hand within milliseconds; 2 s covers a loaded machine, and a
#: thread that floods IOPub cannot hold the grader longer than this.
DRAIN_GRACE = 2.0
#: Characters kept of a cell's error line and of its traceback (the traceback's last ones).
CELL_ERROR_CHARS, CELL_TRACEBACK_CHARS = 500, 4000

_CONTEXT: zmq.asyncio.Context | None = None


def _context() -> zmq.asyncio.Context:
    """The ZeroMQ context of the grader's kernel clients: every socket refuses oversized messages."""
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.closed:
        _CONTEXT = zmq.asyncio.Context()
        _CONTEXT.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return _CONTEXT


def _lost(exc: zmq.Again):
    """What a send that timed out (:data:`grader.sandbox.cells.SEND_TIMEOUT`) means: the kernel is beyond reach,
    a :class:`DeadKernelError` as for a dead one (it is killed and started afresh)."""
    from grader.sandbox.cells import DeadKernelError

    return DeadKernelError(f"the kernel's connection to the grader was lost ({exc})")


class _Manager(AsyncKernelManager):
    """jupyter_client's kernel manager whose clients use the capped context (:func:`_context`).

    With :attr:`zygote` set (a ``grade batch`` slot's, :func:`use_zygote`), the kernel's process is
    forked by it, pre-imported, instead of started cold; when it cannot fork one, cold as ever.
    """

    zygote = None

    def client(self, **kwargs: Any):
        kwargs.setdefault("context", _context())
        return super().client(**kwargs)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        process = None
        if self.zygote is not None:
            # What jupyter_client's launcher adds to the kernel's environment on POSIX.
            env = {**kw["env"], "JPY_PARENT_PID": str(os.getpid())}
            try:
                process = self.zygote.spawn(kernel_cmd, kw["cwd"], env)
            except Exception:  # noqa: BLE001 -- whatever broke in the zygote, this kernel starts cold
                process = None
        if process is None:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        provisioner = self.provisioner
        provisioner.process, provisioner.pid, provisioner.cwd = process, process.pid, kw["cwd"]
        provisioner.pgid = process.pid  # the forked kernel is a session leader (start_new_session)
        self._reconcile_connection_info(provisioner.connection_info)


#: The zygote kernels are forked from in this process (a ``grade batch`` slot), or None: cold kernels.
_ZYGOTE = None


def use_zygote(zygote) -> None:
    """Fork every later kernel of this process from ``zygote`` (:class:`grader.sandbox.zygote.Zygote`), or
    start each cold (None). Only a ``grade batch`` slot does this; ``grade submit`` starts its kernel cold."""
    global _ZYGOTE
    _ZYGOTE = zygote


def kernel_environment(limits: "Limits", extra: dict | None = None, base: dict | None = None) -> dict:
    """Every kernel's environment but its folders (IPYTHONDIR, TMPDIR and the caches under it).

    ``base``: the grader's environment it is made from (default: this process's).
    """
    project_root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(("JPY_", "JUPYTER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [project_root, env.get("PYTHONPATH", "")] if p)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["GRADER_MEMORY_LIMIT"] = str(limits.memory_bytes)
    if limits.threads:
        env["OMP_NUM_THREADS"] = str(limits.threads)
    env.update(extra or {})
    return env

#: nbclient and jupyter_client log timeouts and restarts as errors on stderr; the grader
#: reports them itself, in the feedback, so their logs go nowhere.
_QUIET = logging.getLogger("grader.sandbox.kernel.jupyter")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class Limits:
    """Resource limits of one submission's kernel.

    Attributes:
        cell_timeout: seconds one notebook cell may run before it is interrupted.
        call_timeout: seconds one graded call may run (an alarm inside the kernel).
        batch_timeout: seconds a whole batch of calls may take, from outside the kernel.
        memory_bytes: the kernel's data segment limit (RLIMIT_DATA): what it may allocate.
        cpu_seconds: total CPU seconds of the kernel (RLIMIT_CPU), a backstop against busy loops
            that dodge the other timeouts.
        output_bytes: notebook output kept per cell; the rest is cut with a note.
        startup_timeout: seconds the kernel may take to start.
        threads: torch intra-op threads in the kernel. One by default: graded calls work on small
            tensors, and on a shared machine (a class graded in parallel, CI) torch's default pool
            oversubscribes the cores — one elbo_bpd call was measured at 0.2 s on one thread and
            over 10 s with the default pool on 2 loaded cores, enough to trip the call timeout.
    """

    cell_timeout: float = 60.0
    call_timeout: float = 10.0
    batch_timeout: float = 120.0
    memory_bytes: int = 4 * GiB
    cpu_seconds: int = 3600
    output_bytes: int = 1_000_000
    startup_timeout: float = 60.0
    threads: int | None = 1


class KernelError(GraderError):
    """The kernel could not be started (a broken environment, not a broken submission)."""


@dataclass
class CellRun:
    """How one code cell of the notebook ran."""

    index: int
    status: str  # "ok", "error", "timeout", "died"
    error: str = ""  # one line: "NameError: name 'x' is not defined"
    traceback: str = ""
    seconds: float = 0.0


#: Restarts of one submission's kernel before the grader gives up on it (every later call fails).
MAX_RESTARTS = 8


@dataclass
class _State:
    replay: list[str] = field(default_factory=list)  # sources of cells that ran cleanly
    restarts: int = 0
    broken: str = ""  # why the kernel is beyond restarting, once it is


#: Process ids of the kernels (their shims) that this process launched and has not yet killed.
_LIVE: set[int] = set()


class SandboxKernel:
    """One sandboxed kernel in ``workdir``; use as a context manager.

    Args:
        workdir: the staging folder; the kernel's working directory and the only writable one.
        limits: see :class:`Limits`.
        forbidden_dirs: folders the kernel may neither read nor write.
        env: extra environment variables for the kernel.
    """

    def __init__(self, workdir: Path, limits: Limits, forbidden_dirs: list[Path], env: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.limits = limits
        self._private = Path(tempfile.mkdtemp(prefix="grader-private-"))
        self._forbidden = [str(d) for d in forbidden_dirs] + [str(self._private)]
        self.walls = isolation.Walls(self.workdir, self._private, self._forbidden, limits.memory_bytes)
        self._env = env or {}
        self._state = _State()
        self._batch = 0
        self._deadline = float("inf")  # the submission's, set by run_notebook and call; bounds restarts too
        self._known_children: set[int] = set()
        self.km: AsyncKernelManager | None = None
        self.client = None  # grader.sandbox.cells._CappedClient, once started

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> "SandboxKernel":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _kernel_spec(self) -> KernelSpec:
        config = {
            "memory_bytes": self.limits.memory_bytes,
            "cpu_seconds": self.limits.cpu_seconds,
            "file_bytes": 512 * 1024**2,
            "threads": self.limits.threads,
            "forbidden_dirs": self._forbidden,
            "writable_dirs": self.walls.writable(),
            **self.walls.config(),
        }
        config_path = self._private / "launch.json"
        config_path.write_text(json.dumps(config))
        argv = [sys.executable, "-m", "grader.sandbox.launch", str(config_path), "-f", "{connection_file}",
                "--HistoryManager.enabled=False"]
        return KernelSpec(argv=argv, display_name="grader sandbox", language="python")

    def _environment(self) -> dict:
        env = kernel_environment(self.limits)
        env["IPYTHONDIR"] = str(self.workdir / ".ipython")
        env.update(self.walls.environment())  # TMPDIR and caches in the kernel's own temporary folder
        env.update(self._env)
        return env

    def launch(self) -> "SandboxKernel":
        """Start the kernel's process and return at once, without waiting for it to answer.

        The kernel boots (Python, torch, ipykernel, the walls) while the caller does other
        work — ``grade submit`` imports torch and the exercise, a ``grade batch`` slot checks
        the previous submission — and :meth:`start` then waits until it answers. Needs
        neither nbclient nor torch in this process. Idempotent.
        """
        if self.km is not None:
            return self
        procs.become_subreaper()
        self._known_children = procs.children(os.getpid())
        # IPC sockets in the private folder: no TCP port for other local users to reach.
        self.km = _Manager(transport="ipc", ip=str(self._private / "kernel"), log=_QUIET)
        self.km._kernel_spec = self._kernel_spec()
        if _ZYGOTE is not None and _ZYGOTE.threads == self.limits.threads:
            self.km.zygote = _ZYGOTE
        try:
            run_sync(self._alaunch)()
        except Exception as exc:  # noqa: BLE001 -- any failure to start is the environment's
            self.close()
            raise KernelError(f"the grading kernel could not start: {exc}") from exc
        if self._pid() is not None:
            _LIVE.add(self._pid())
        return self

    def start(self) -> None:
        """Launch the kernel (unless :meth:`launch` did) and wait until it answers; then cells may run."""
        import nbformat

        from grader.sandbox.cells import _CappedClient

        self.launch()
        self.client = _CappedClient(
            nbformat.v4.new_notebook(),
            km=self.km,
            timeout=self.limits.cell_timeout,
            startup_timeout=self.limits.startup_timeout,
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": "CellTimeout", "evalue": f"the cell ran longer than {self.limits.cell_timeout:g} s",
                              "traceback": []},
            shutdown_kernel="immediate",
            iopub_timeout=5,
            record_timing=False,
            log=_QUIET,
        )
        self.client.output_limit = self.limits.output_bytes
        try:
            run_sync(self._aconnect)()
        except Exception as exc:  # noqa: BLE001 -- any failure to start is the environment's
            self.close()
            raise KernelError(f"the grading kernel could not start: {exc}") from exc

    async def _alaunch(self) -> None:
        assert self.km is not None
        # The kernel's stdout and stderr are not the grader's: what it prints there (a forged summary,
        # invalid UTF-8, escape sequences) must reach neither the terminal nor `--json`.
        await self.km.start_kernel(cwd=str(self.workdir), env=self._environment(), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def _aconnect(self) -> None:
        assert self.client is not None and self.km is not None
        self.client.reset_execution_trackers()
        await self.client.async_start_new_kernel_client()
        self.walls.started(self._pid())  # before any cell: what is in force, the namespace, the watchdog

    async def _astart(self) -> None:
        """A fresh kernel in the same folder, with the same walls (a restart)."""
        await self._alaunch()
        if self._pid() is not None:
            _LIVE.add(self._pid())
        await self._aconnect()

    def close(self) -> None:
        """Stop the kernel and every process it started; remove the private folder."""
        try:
            if self.client is not None and self.client.kc is not None:
                self.client.kc.stop_channels()
        except Exception:  # noqa: BLE001 -- best effort on the way out
            pass
        self._kill()
        if self.km is not None:
            try:
                run_sync(self.km.cleanup_resources)()
            except Exception:  # noqa: BLE001
                pass
        # Strays re-parented to this process, but not the kernels of other live SandboxKernels (a
        # `grade batch` slot launches the next submission's kernel while this one is still checked).
        procs.reap(self._known_children | _LIVE | ({_ZYGOTE.pid} if _ZYGOTE is not None and _ZYGOTE.pid else set()))
        shutil.rmtree(self._private, ignore_errors=True)
        self.client = None
        self.km = None

    def _pid(self) -> int | None:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    def _kill(self) -> None:
        pid = self._pid()
        if pid is not None:
            _LIVE.discard(pid)
            process = self.km.provisioner.process
            if self.walls.init is not None:
                self.walls.kill()  # the namespace's PID 1: Linux kills everything in it; the shim then exits
                try:  # the shim exits once every process of the namespace is gone
                    process.wait(timeout=isolation.TEARDOWN_GRACE)
                except Exception:  # noqa: BLE001
                    pass
            # Without a known namespace (none could be made, or the kernel was launched and never connected: a
            # batch slot's next submission that turned out not gradable) nothing was killed yet, and waiting for
            # the kernel to end by itself only waited (5 s, on every such close): its tree is killed now.
            procs.kill_tree(pid, session=pid)  # with a namespace, nothing is left to find
            try:
                process.wait(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        self.walls.stopped()

    def exit_description(self) -> str:
        """How the kernel process ended, for a message: "exited with status 3", "was killed by SIGKILL"."""
        if self.walls.exit_reason():
            return f"was stopped because {self.walls.exit_reason()}"
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code is None:
            return "stopped responding"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the CPU time limit)" if name == "SIGXCPU" else ""
            return f"was killed by {name}{hint}"
        return f"exited with status {code}"

    def restart(self) -> None:
        """Kill the kernel and everything it started, start a fresh one, replay the clean cells.

        A cell that ran cleanly the first time but kills the kernel on replay is
        dropped from the replay; after :data:`MAX_RESTARTS` restarts the kernel is
        marked broken and every later call fails at once with the reason.
        """
        from grader.sandbox.cells import DeadKernelError

        while True:
            self._state.restarts += 1
            if time.monotonic() >= self._deadline:
                self._state.broken = "the submission's time budget was spent"
                self._kill()
                return
            if self._state.restarts > MAX_RESTARTS:
                self._state.broken = f"the kernel was restarted {MAX_RESTARTS} times; the grader gave up on it"
                self._kill()
                return
            if self.client is not None and self.client.kc is not None:
                self.client.kc.stop_channels()
            self._kill()
            try:
                run_sync(self._astart)()
            except Exception as exc:  # noqa: BLE001 -- cannot even start: nothing more to try
                self._state.broken = f"the kernel could not be restarted ({type(exc).__name__})"
                return
            try:
                for index, source in enumerate(list(self._state.replay)):
                    budget = min(self.limits.cell_timeout, self._deadline - time.monotonic())
                    if budget <= 0 or run_sync(self._aexecute_source)(source, budget) is None:
                        raise DeadKernelError("replay timed out")
            except DeadKernelError:
                del self._state.replay[index]
                continue
            return

    # -- the notebook --------------------------------------------------------------------

    def run_notebook(self, nb: nbformat.NotebookNode, deadline: float) -> list[CellRun]:
        """Execute every code cell of ``nb`` in place (outputs are stored), in order."""
        assert self.client is not None
        self._deadline = deadline
        self.client.nb = nb
        runs = []
        count = 0
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            count += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                runs.append(CellRun(index, "timeout", "not run: the submission's time budget was spent"))
                continue
            runs.append(self._run_cell(cell, index, count, min(self.limits.cell_timeout, remaining)))
        return runs

    def _run_cell(self, cell, index: int, count: int, timeout: float) -> CellRun:
        from grader.sandbox import wire
        from grader.sandbox.cells import DeadKernelError

        assert self.client is not None
        self.client.timeout = max(1, int(timeout + 0.999))
        self.client.timed_out = False
        started = time.monotonic()
        try:
            try:
                run_sync(self.client.async_execute_cell)(cell, index, execution_count=count)
            except zmq.Again as exc:
                raise _lost(exc) from exc
        except DeadKernelError:
            run = CellRun(index, "died", f"the kernel {self.exit_description()} while running this cell")
            self.restart()
            run.seconds = time.monotonic() - started
            return run
        seconds = time.monotonic() - started
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        if self.client.timed_out:  # first: an interrupted cell may still end with no error output at all
            message = f"the cell ran longer than {self.client.timeout} s and was interrupted"
            if not self._responsive():
                message += "; the kernel then no longer answered and was started afresh (the cells that had run "\
                           "cleanly were run again)"
                self.restart()
            return CellRun(index, "timeout", message, seconds=seconds)
        if error is None:
            self._state.replay.append(cell.source)
            return CellRun(index, "ok", seconds=seconds)
        lines = error.get("traceback", [])
        trace = "\n".join(str(line) for line in lines[-200:]) if isinstance(lines, list) else ""
        return CellRun(index, "error", wire.clean_text(f"{error.get('ename')}: {error.get('evalue')}", CELL_ERROR_CHARS),
                       wire.clean_text(trace, CELL_TRACEBACK_CHARS, keep="tail"), seconds)

    def warm_meta(self) -> None:
        """Ask the kernel to load PyTorch's meta machinery in a thread of its own while the notebook runs
        (:func:`grader.sandbox.meta.warm_in_background`); best effort, no verdict depends on it."""
        from grader.sandbox.cells import DeadKernelError

        try:
            run_sync(self._aexecute_source)(
                "__import__('grader.sandbox.meta', fromlist=['warm_in_background']).warm_in_background()", 5.0)
        except DeadKernelError:
            pass  # the notebook's first cell finds it dead, and says so

    def _responsive(self, timeout: float = 5.0) -> bool:
        from grader.sandbox.cells import DeadKernelError

        try:
            return run_sync(self._aexecute_source)("pass", timeout) is not None
        except DeadKernelError:
            return False

    async def _aexecute_source(self, source: str, timeout: float, sink: "_Outcomes | None" = None,
                               buffers: list[bytes] | None = None) -> dict | None:
        """Run code silently; the shell reply, or None when none came within ``timeout``.

        ``buffers`` travel as the execute_request's binary frames (the kernel reads them from its
        parent message): data sent there is not parsed, hashed and compiled as the code is.

        IOPub is read all along (a flood cannot pile up) and each of its messages that answers
        this request goes to ``sink.take``, and the reply to ``sink.take_reply``. After the reply
        the grader waits until ``sink`` has every outcome or the kernel's "idle" came on IOPub
        (everything the request published has then arrived), for at most :data:`DRAIN_GRACE`
        seconds and never past ``timeout``: output that never stops holds nothing up. A kernel
        that dies leaves what it published before dying to ``sink`` too.
        """
        from grader.sandbox.cells import DeadKernelError

        assert self.client is not None and self.client.kc is not None
        kc = self.client.kc
        on_iopub = sink.take if sink is not None else None
        content = {"code": source, "silent": True, "store_history": False, "allow_stdin": False,
                   "stop_on_error": False, "user_expressions": sink.expressions if sink is not None else {}}
        msg = kc.session.msg("execute_request", content)
        msg_id = msg["header"]["msg_id"]
        try:
            kc.session.send(kc.shell_channel.socket, msg, buffers=buffers)
        except zmq.Again as exc:
            raise _lost(exc) from exc
        deadline = time.monotonic() + timeout
        shell, iopub = kc.shell_channel.socket, kc.iopub_channel.socket
        poller = zmq.asyncio.Poller()
        poller.register(shell, zmq.POLLIN)
        poller.register(iopub, zmq.POLLIN)
        reply = None
        idle = self.drained = False
        checked = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline or (reply is not None and (idle or (sink is not None and sink.complete()))):
                self.drained = idle or (sink is not None and sink.complete())
                return reply
            ready = dict(await poller.poll(timeout=max(1, int(1000 * min(0.5, deadline - now)))))
            if iopub in ready:
                idle = await self._read_iopub(msg_id, on_iopub, until=deadline) or idle
            if reply is None and shell in ready:
                msg = await kc.get_shell_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
                    deadline = min(deadline, time.monotonic() + DRAIN_GRACE)
                    if sink is not None:
                        sink.take_reply(msg)
            if reply is None and time.monotonic() - checked >= 0.5:
                checked = time.monotonic()
                if not await kc.is_alive():
                    await self._read_iopub(msg_id, on_iopub, until=time.monotonic() + 0.5, wait=0.1)
                    raise DeadKernelError("Kernel died")

    async def _read_iopub(self, msg_id: str, on_iopub, *, until: float, wait: float = 0.0) -> bool:
        """Read the IOPub messages at hand (waiting up to ``wait`` s for each), at most until ``until``;
        pass those that answer ``msg_id`` to ``on_iopub``. True when the kernel's "idle" for it came."""
        kc = self.client.kc
        idle = False
        for _ in range(1000):  # then back to the caller, which checks its deadline and the shell
            if time.monotonic() >= until:
                break
            try:
                msg = await kc.get_iopub_msg(timeout=wait)
            except Empty:
                break
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg.get("msg_type") == "status" and msg.get("content", {}).get("execution_state") == "idle":
                idle = True
            elif on_iopub is not None:
                on_iopub(msg)
        return idle

    # -- calls ------------------------------------------------------------------------------

    def call(self, request: dict, deadline: float) -> list[dict]:
        """Serve one batch of calls (see :mod:`grader.sandbox.worker`); one outcome per call.

        The request goes as the execute_request's one binary frame; the outcomes come back as IOPub messages
        (:func:`grader.sandbox.worker.serve`), each checked, cleaned and capped here
        (:meth:`_Outcomes.take`). Nothing of the channel is in a place the kernel can write.

        Outcomes the kernel could not produce are made here: ``timeout`` for the call
        in flight when the batch overran, ``crashed`` for the call in flight when the
        kernel died, and ``skipped`` for the calls after either.
        """
        from grader.sandbox import wire
        from grader.sandbox.cells import DeadKernelError

        self._deadline = deadline
        self._batch += 1
        n = len(request["calls"])
        if self._state.broken:
            return [{"status": "crashed", "message": self._state.broken} for _ in range(n)]
        outcomes = _Outcomes(secrets.token_hex(16), n)
        # The code stays a line: IPython tokenises, transforms and hashes (in Python) all of a cell's text,
        # which for a request's bytes inside it cost more than the calls it carried.
        code = f"__import__('grader.sandbox.worker', fromlist=['serve']).serve({outcomes.token!r}, globals())"
        budget = min(self.limits.batch_timeout, max(1.0, deadline - time.monotonic()))
        failure: dict | None = None
        try:
            reply = run_sync(self._aexecute_source)(code, budget, outcomes, [wire.dumps(request)])
            if reply is None:
                failure = {"status": "timeout", "message": f"timed out after {budget:.0f} s"}
                self._interrupt_or_restart()
            elif reply["content"].get("status") == "error":
                content = reply["content"]
                stopped = wire.clean_text(f"{content.get('ename')}: {content.get('evalue')}", 400)
                failure = {"status": "error", "error_type": wire.clean_text(content.get("ename", "Error"), 100),
                           "message": f"the call was stopped: {stopped}"}
        except DeadKernelError:
            failure = {"status": "crashed", "message": f"the process {self.exit_description()}"}
            self.restart()
        result = []
        for index in range(n):
            outcome = outcomes.got.get(index)
            if outcome is None:
                if failure is None and not self.drained:
                    failure = {"status": "crashed", "message": f"its result did not arrive within {DRAIN_GRACE:g} s of "
                               "the call's end: output from the notebook (a thread still printing?) kept the channel busy"}
                elif failure is None:
                    failure = {"status": "crashed", "message": "the call left no result"}
                outcome = dict(failure)
                failure = {"status": "skipped", "message": "not run: an earlier call of this batch failed badly"}
            result.append(outcome)
        return result

    def _interrupt_or_restart(self) -> None:
        try:
            run_sync(self.km.interrupt_kernel)()
        except Exception:  # noqa: BLE001
            pass
        if not self._responsive(timeout=3.0):
            self.restart()


_REPLY = re.compile(r"'[0-9A-Za-z+/=:;]*'")


class _Outcomes:
    """The outcomes of one batch as they arrive on IOPub: checked, cleaned and capped on this side.

    A message counts only if it carries the batch's random ``token`` and the index of a call
    that has no outcome yet; its payload must be base64 of a well-formed packed outcome
    (:func:`grader.sandbox.wire.unpack_untrusted`) within :data:`grader.sandbox.wire.MAX_OUTCOME_BYTES`,
    and the batch's within :data:`MAX_BATCH_BYTES`.
    Whatever the worker in the kernel was patched to send, the grader keeps at most that.
    """

    def __init__(self, token: str, n: int) -> None:
        self.token = token
        self.n = n
        self.got: dict[int, dict] = {}
        self.used = 0
        #: The execute_request's user_expressions: the outcomes again, in the reply (worker.reply).
        self.expressions = {"outcomes": f"__import__('grader.sandbox.worker', fromlist=['reply']).reply({token!r})"}

    def complete(self) -> bool:
        return len(self.got) == self.n

    def take_reply(self, msg: dict) -> None:
        """The outcomes the execute_reply carries again: ``'index:base64;...'`` as a string's repr."""
        content = msg.get("content")
        found = content.get("user_expressions") if isinstance(content, dict) else None
        found = found.get("outcomes") if isinstance(found, dict) else None
        data = found.get("data") if isinstance(found, dict) else None
        text = data.get("text/plain") if isinstance(data, dict) else None
        if not isinstance(text, str) or not _REPLY.fullmatch(text):
            return
        for item in filter(None, text[1:-1].split(";")):
            index, _, payload = item.partition(":")
            if index.isdigit() and int(index) < self.n and int(index) not in self.got:
                self.got[int(index)] = self._read(payload)

    def take(self, msg: dict) -> None:
        if msg.get("msg_type") != "display_data":
            return
        content = msg.get("content")
        data = content.get("data") if isinstance(content, dict) else None
        metadata = content.get("metadata") if isinstance(content, dict) else None
        if not isinstance(data, dict) or OUTCOME_MIME not in data or not isinstance(metadata, dict):
            return
        tag = metadata.get(OUTCOME_MIME)
        if not isinstance(tag, dict) or tag.get("token") != self.token:
            return
        index = tag.get("index")
        if type(index) is not int or not 0 <= index < self.n or index in self.got:
            return
        self.got[index] = self._read(data[OUTCOME_MIME])

    def _read(self, payload) -> dict:
        from grader.sandbox import wire

        if not isinstance(payload, str):
            return wire.transfer_error("the result sent back was not understood")
        size = len(payload) * 3 // 4
        if size > wire.MAX_OUTCOME_BYTES:
            return wire.transfer_error(f"the returned value is too large to send back "
                                       f"(over {wire.MAX_OUTCOME_BYTES // 1024**2} MiB)")
        if self.used + size > MAX_BATCH_BYTES:
            return wire.transfer_error(f"the values returned by this batch of calls are too large "
                                       f"(over {MAX_BATCH_BYTES // 1024**2} MiB together)")
        self.used += size
        try:
            raw = wire.unpack_untrusted(base64.b64decode(payload, validate=True))
        except wire.TransferRefused as exc:
            return wire.transfer_error(f"the result could not be read back: {exc}")
        except (binascii.Error, ValueError):
            return wire.transfer_error("the result could not be read back: it is not base64")
        except Exception as exc:  # noqa: BLE001 -- whatever else a corrupt message raises is the submission's doing
            return wire.transfer_error(f"the result could not be read back ({type(exc).__name__})")
        return wire.outcome_from_kernel(raw)
