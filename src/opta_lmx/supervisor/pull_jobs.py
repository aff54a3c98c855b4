"""Pulls as jobs: each download runs in a thread of its own inside the supervisor (which owns the
data directory), reports its progress as ``PullJob``s on the events socket, and, once its files
are in place, has the supervisor scan the disk again so that the model is served by name.

The thread only moves bytes; every change of a job is applied on the event loop (progress is
handed over with ``call_soon_threadsafe``, at most every ``PUBLISH_INTERVAL`` seconds per job
plus each change of state or file), so the sockets and the job table have one owner. A job is
kept after it finished (the last ``KEEP_FINISHED``) so that a client that polls late still
learns how it ended.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable

from opta_lmx.errors import DownloadError, ModelStoreError
from opta_lmx.proto import PULL_FINISHED, CommandResult, ControlReply, PullJob, PullModel, PullsReply
from opta_lmx.supervisor.model_store import ModelStore, PullHandle, PullProgress

log = logging.getLogger("opta_lmx.supervisor")

PUBLISH_INTERVAL = 0.25
KEEP_FINISHED = 32

# Publishes a job's state on the events socket.
Publish = Callable[[PullJob], None]
# Scans the disk again after a pull; answers the name the model at that path is served under
# ("" if none).
Installed = Callable[[Path], Awaitable[str]]


class _Job:
    """One pull: the handle doing the work, and what the supervisor decided about it."""

    def __init__(self, job_id: str, quant: str | None) -> None:
        self.id = job_id
        self.quant = quant
        self.pull: PullHandle | None = None
        self.started_at = time.time()
        # Set on the loop once the thread is done: installing, then done, failed or cancelled.
        self.state = ""
        self.finished_at = 0.0
        self.error = ""
        self.message = ""
        self.model = ""
        self.path = ""
        # The pull thread's own: what it last handed to the loop.
        self.sent_state = ""
        self.sent_file = ""
        self.sent_at = 0.0

    @property
    def finished(self) -> bool:
        return self.state in PULL_FINISHED

    def snapshot(self, seq: int) -> PullJob:
        assert self.pull is not None
        status: PullProgress = self.pull.status
        state = self.state or status.state
        if not self.state and status.state in PULL_FINISHED:
            # The thread's verdict counts once the loop has applied it (a done download is then
            # installed first): until then the job is where it was.
            state = "installing" if status.state == "done" else "downloading" if status.total_bytes else "listing"
        return PullJob(
            id=self.id,
            repo=self.pull.repo_id,
            revision=self.pull.revision,
            state=state,
            seq=seq,
            quant=self.quant,
            files=list(status.files),
            current_file=status.current_file,
            file_done=status.file_done,
            file_bytes=status.file_bytes,
            done_bytes=status.done_bytes,
            total_bytes=status.total_bytes,
            message=self.message,
            error=self.error,
            model=self.model,
            path=self.path,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


class PullJobs:
    """The supervisor's pull jobs. Call from the event loop only (the threads hand over)."""

    def __init__(self, store: ModelStore, publish: Publish, seq: Callable[[], int], installed: Installed) -> None:
        self._store = store
        self._publish = publish
        self._seq = seq
        self._installed = installed
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, request: PullModel) -> ControlReply:
        """A new job for ``request`` (``invalid_request`` for a malformed name), or the running
        job of the same repository if it pulls the same revision and quantization
        (``pull_in_progress`` if it pulls another)."""
        spec = f"{request.repo}@{request.revision}" if request.revision else request.repo
        job = _Job(secrets.token_hex(6), request.quant or None)
        loop = asyncio.get_running_loop()
        try:
            pull = self._store.pull(spec, job.quant, lambda status: self._progress(loop, job, status))
        except ModelStoreError as exc:
            return CommandResult(ok=False, message=str(exc), code="invalid_request")
        for other in self._jobs.values():
            if other.finished or other.pull is None or other.pull.repo_id != pull.repo_id:
                continue
            if (other.pull.revision, other.quant) == (pull.revision, job.quant):
                return PullsReply([other.snapshot(self._seq())])
            return CommandResult(
                ok=False,
                message=f"{pull.repo_id} is being pulled already (job {other.id}, revision {other.pull.revision}"
                f"{', ' + other.quant if other.quant else ''}); wait for it or cancel it first",
                code="pull_in_progress",
            )
        job.pull = pull
        self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(loop, job), name=f"pull-{job.id}", daemon=True).start()
        log.info("pull %s: %s started", job.id, spec)
        snapshot = job.snapshot(self._seq())
        self._publish(snapshot)
        return PullsReply([snapshot])

    def get(self, job_id: str | None) -> ControlReply:
        if job_id is None:
            return PullsReply([job.snapshot(self._seq()) for job in self._jobs.values()])
        job = self._jobs.get(job_id)
        if job is None:
            return _not_found(job_id)
        return PullsReply([job.snapshot(self._seq())])

    def cancel(self, job_id: str) -> CommandResult:
        job = self._jobs.get(job_id)
        if job is None:
            return _not_found(job_id)
        if job.finished or job.state == "installing":
            state = job.state
            return CommandResult(ok=False, message=f"pull {job_id} is {state}: nothing to cancel", code="not_running")
        assert job.pull is not None
        job.pull.cancel()
        return CommandResult(ok=True, message=f"pull {job_id} of {job.pull.repo_id}: cancelling")

    def cancel_all(self) -> None:
        """At shutdown: every running pull stops at its next chunk (the partials are kept)."""
        for job in self._jobs.values():
            if job.pull is not None and not job.state:
                job.pull.cancel()

    # -- in the pull's thread -----------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        assert job.pull is not None
        outcome: Path | BaseException
        try:
            outcome = job.pull.run()
        except Exception as exc:  # the pull's own errors, and any bug: the job fails, never hangs
            outcome = exc
        try:
            loop.call_soon_threadsafe(self._finish, job, outcome)
        except RuntimeError:
            pass  # the loop is closed: the supervisor is gone

    def _progress(self, loop: asyncio.AbstractEventLoop, job: _Job, status: PullProgress) -> None:
        now = time.monotonic()
        changed = status.state != job.sent_state or status.current_file != job.sent_file
        if not changed and now - job.sent_at < PUBLISH_INTERVAL:
            return
        job.sent_state, job.sent_file, job.sent_at = status.state, status.current_file, now
        try:
            loop.call_soon_threadsafe(self._publish_progress, job)
        except RuntimeError:
            pass

    # -- on the loop --------------------------------------------------------------------------

    def _publish_progress(self, job: _Job) -> None:
        if job.pull is not None and not job.state:
            self._publish(job.snapshot(self._seq()))

    def _finish(self, job: _Job, outcome: Path | BaseException) -> None:
        if isinstance(outcome, Path):
            job.state = "installing"
            job.path = str(outcome)
            self._publish(job.snapshot(self._seq()))
            task = asyncio.create_task(self._install(job, outcome), name=f"install:{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        assert job.pull is not None
        job.error = _error_code(outcome)
        job.state = "cancelled" if job.error == "cancelled" else "failed"
        job.message = str(outcome)
        if job.error == "internal":
            log.error("pull %s failed", job.id, exc_info=outcome)
        self._end(job)

    async def _install(self, job: _Job, path: Path) -> None:
        assert job.pull is not None
        try:
            job.model = await self._installed(path)
        except Exception as exc:  # a scan failure: the files are in place, the job says what failed
            log.exception("pull %s: scanning for the new model failed", job.id)
            job.state, job.error, job.message = "failed", "internal", f"{path} is in place, but the scan failed: {exc}"
            self._end(job)
            return
        job.state = "done"
        served = f"served as {job.model}" if job.model else "not served (serve_local_models is off)"
        job.message = f"{job.pull.repo_id} is at {path}; {served}"
        self._end(job)

    def _end(self, job: _Job) -> None:
        job.finished_at = time.time()
        log.info("pull %s: %s: %s", job.id, job.state, job.message)
        self._publish(job.snapshot(self._seq()))
        finished = [j for j in self._jobs.values() if j.finished]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[old.id]


def _error_code(exc: BaseException) -> str:
    status = getattr(exc, "status", 0) if isinstance(exc, ModelStoreError) else 0
    if status == 499:
        return "cancelled"
    if status == 404:
        return "not_found"
    if status == 507:
        return "disk_full"
    if isinstance(exc, DownloadError):
        return "download_failed"
    if isinstance(exc, ModelStoreError):
        return "download_failed"  # a file could not be put in place (the message says which)
    return "internal"


def _not_found(job_id: str) -> CommandResult:
    return CommandResult(ok=False, message=f"no pull job {job_id!r}", code="pull_not_found")
