"""The job runner: trains queued jobs, each in a worker subprocess, `max_concurrent` at a time.

It lives on the server's event loop and never blocks it: the process is an asyncio subprocess, database
writes go to worker threads. Each job's process is `python -m hotlora_trainer` (`command.Launch`) at the
lowest CPU priority (SCHED_IDLE), so that it trains on the CPU time serving leaves. Its JSON lines become
the job's events; when it exits 0 the adapter it registered is loaded into the engine, and only then is
the job `succeeded` — its `fine_tuned_model` is servable the moment a client sees that. A cancel stops the process
(SIGTERM: the trainer cleans up and registers nothing; SIGKILL if it does not stop in time), and removes
the adapter should the trainer have registered it in that moment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
from typing import Protocol

from ..errors import HotloraError
from ..types import AdapterInfo
from .command import Launch
from .files import FileStore
from .jobs import ACTIVE, Event, JobRecord, JobStore
from .progress import Progress

log = logging.getLogger(__name__)

NICENESS = 10  # where SCHED_IDLE is missing
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
LINE_LIMIT = 1 << 20  # longest line read from the trainer
STDERR_LINES = 20  # kept to explain a process that died without saying why
SHUTDOWN_REASON = "the server shut down while this job was training; create a new job to train again"


class Adapters(Protocol):
    """What the runner needs of the engine (`types.EngineClient` has it)."""

    async def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo: ...
    async def unload_adapter(self, name: str, purge: bool = False) -> None: ...


class JobRunner:
    def __init__(
        self, jobs: JobStore, files: FileStore, adapters: Adapters, launch: Launch, max_concurrent: int
    ) -> None:
        self._jobs, self._files, self._adapters, self._launch = jobs, files, adapters, launch
        self._max = max_concurrent
        self._queue: collections.deque[str] = collections.deque()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stopping: dict[str, str] = {}  # job id -> why its process is being stopped

    async def start(self) -> None:
        """Fail what a stopped server left running; queue again what was waiting."""
        self._queue.extend(await asyncio.to_thread(self._jobs.recover))
        self._pump()

    def submit(self, job_id: str) -> None:
        self._queue.append(job_id)
        self._pump()

    async def cancel(self, job: JobRecord) -> None:
        """Cancel a job that has not ended (the caller checked): at once if it waits, else stop its process."""
        cancelled = await asyncio.to_thread(
            self._jobs.transition,
            job.id,
            "cancelled",
            only_from=ACTIVE,
            event=Event("Fine-tuning job cancelled"),
        )
        if not cancelled:
            return
        with contextlib.suppress(ValueError):
            self._queue.remove(job.id)
        if job.id in self._tasks:
            self._stop(job.id, "cancelled")

    async def stop(self) -> None:
        """At shutdown: stop every training process, failing its job, and wait for them."""
        self._queue.clear()
        for job_id in list(self._tasks):  # a job whose process is still starting included
            self._stop(job_id, SHUTDOWN_REASON)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stop(self, job_id: str, why: str) -> None:
        proc = self._procs.get(job_id)
        self._stopping.setdefault(job_id, why)
        if proc is not None and proc.returncode is None:
            _signal(proc, signal.SIGTERM)
            asyncio.get_running_loop().call_later(STOP_GRACE_S, _signal, proc, signal.SIGKILL)

    def _pump(self) -> None:
        while self._queue and len(self._tasks) < self._max:
            job_id = self._queue.popleft()
            self._tasks[job_id] = asyncio.create_task(self._run(job_id), name=f"fine-tuning {job_id}")

    async def _run(self, job_id: str) -> None:
        try:
            await self._train(job_id)
        except Exception as exc:  # a fault fails this job, never the runner
            log.exception("fine-tuning job %s failed", job_id)
            await self._fail(job_id, "internal_error", f"the job failed unexpectedly: {exc}")
        finally:
            self._tasks.pop(job_id, None)
            self._procs.pop(job_id, None)
            self._stopping.pop(job_id, None)
            self._pump()

    async def _train(self, job_id: str) -> None:
        job = await asyncio.to_thread(self._jobs.get, job_id)
        started = await asyncio.to_thread(
            self._jobs.transition,
            job_id,
            "running",
            only_from=("validating_files", "queued"),
            event=Event("Fine-tuning job started"),
        )
        if not started:
            return  # cancelled while it waited
        data = self._files.path(job.training_file)
        eval_data = self._files.path(job.validation_file) if job.validation_file else None
        proc = await asyncio.create_subprocess_exec(
            *self._launch.argv(job, data, eval_data),
            stdin=asyncio.subprocess.PIPE,  # never written: it closes when this process dies
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._launch.env(os.environ),
            # its own process group, so a signal to the group reaches whatever it starts too; not its own
            # session, which Linux's autogroup would schedule as a peer of the server's, whatever its priority
            process_group=0,
            limit=LINE_LIMIT,
        )
        self._procs[job_id] = proc
        _yield_to_serving(proc.pid)
        if job_id in self._stopping:  # cancelled or shut down while it was starting
            self._stop(job_id, self._stopping[job_id])
        progress = Progress()
        stderr = asyncio.create_task(_tail(proc))
        assert proc.stdout is not None
        while line := await _readline(proc.stdout):
            event = progress.read(line)
            if event is not None:
                await asyncio.to_thread(self._jobs.add_event, job_id, event)
        returncode = await proc.wait()
        errors = await stderr
        await self._finish(job, progress, returncode, errors)

    async def _finish(self, job: JobRecord, progress: Progress, returncode: int, errors: list[str]) -> None:
        name = job.adapter_name
        stopping = self._stopping.get(job.id)
        if stopping is None and returncode == 0 and progress.registered == name:
            try:
                await self._adapters.load_adapter(name)
            except HotloraError as exc:
                await self._fail(
                    job.id, "adapter_not_served", f"the trained adapter cannot be served: {exc.message}"
                )
                return
            result = {
                "step": progress.step,
                "train_loss": progress.train_loss,
                "valid_loss": progress.valid_loss,
            }
            if await asyncio.to_thread(
                self._jobs.transition,
                job.id,
                "succeeded",
                only_from=("running",),
                event=Event(f"New fine-tuned model created: {name}. The job has successfully completed"),
                trained_tokens=progress.trained_tokens,
                result=result,
            ):
                return
            stopping = "cancelled"  # it left `running` meanwhile, which only a cancel does
        if stopping is not None:
            if returncode == 0 or progress.registered:  # registered as it was stopped: take it back
                with contextlib.suppress(HotloraError):
                    await self._adapters.unload_adapter(name, purge=True)
            if stopping != "cancelled":
                await self._fail(job.id, "server_shutdown", stopping)
            return
        why = progress.error or "\n".join(errors)
        if not why:
            why = f"the training process exited with status {returncode} without registering the adapter"
        await self._fail(job.id, "training_failed", why)

    async def _fail(self, job_id: str, code: str, message: str) -> None:
        await asyncio.to_thread(
            self._jobs.transition,
            job_id,
            "failed",
            only_from=ACTIVE,
            event=Event(f"The job failed: {message}", level="error"),
            error={"code": code, "message": message, "param": None},
        )


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """The next line (b"" at the end); a line past `LINE_LIMIT` is skipped."""
    while True:
        try:
            return await stream.readline()
        except ValueError:  # asyncio.LimitOverrunError, surfaced by readline; the buffer was cleared
            continue


async def _tail(proc: asyncio.subprocess.Process) -> list[str]:
    """The last lines of the process's stderr (read to the end, so the process never blocks on it)."""
    assert proc.stderr is not None
    lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    while line := await _readline(proc.stderr):
        text = line.decode(errors="replace").rstrip()
        if text:
            lines.append(text)
            log.debug("trainer: %s", text)
    return list(lines)


def _yield_to_serving(pid: int) -> None:
    """Run the training process only on CPU time serving leaves: Linux's SCHED_IDLE, else nice 10. Set
    before it starts its threads, which inherit it."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, NICENESS)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
