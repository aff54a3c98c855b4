"""``lmxctl pull REPO[@REVISION] [--quant Q]``: a pull job started on the server and followed to
its end, with a progress bar on a terminal (a line per step otherwise). Ctrl-C cancels the job
(the server keeps the partial download, which the next pull continues) and waits for it to stop;
a second Ctrl-C leaves at once.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from opta_lmx.proto import PULL_FINISHED, CancelPull, CommandResult, ControlReply, GetPulls, PullJob, PullModel, PullsReply

if TYPE_CHECKING:
    from opta_lmx.ctl.main import Control

EXIT_DONE = 0
EXIT_FAILED = 2
EXIT_CANCELLED = 130
_POLL_SECONDS = 0.25


class PullRefused(Exception):
    """The server refused the pull, or forgot the job (its reply, to print)."""

    def __init__(self, reply: CommandResult) -> None:
        super().__init__(reply.message)
        self.reply = reply


def pull(client: Control, spec: str, quant: str | None) -> int:
    """Start the pull and follow it; the exit status says how it ended."""
    repo, _, revision = spec.partition("@")
    job = _job(client.call(PullModel(repo, revision, quant)))
    progress = _Progress(job.repo)
    try:
        try:
            job = _follow(client, job, progress.show)
        except KeyboardInterrupt:
            progress.say(f"cancelling the pull of {job.repo} ...")
            reply = client.call(CancelPull(job.id))
            if isinstance(reply, CommandResult) and not reply.ok and reply.code != "not_running":
                raise PullRefused(reply) from None
            job = _follow(client, job, progress.show)
    finally:
        progress.close()
    if job.state == "done":
        print(f"{job.repo}: {job.path}" + (f" (served as {job.model})" if job.model else ""))
        return EXIT_DONE
    print(f"lmxctl: {job.message or job.state}", file=sys.stderr)
    return EXIT_CANCELLED if job.state == "cancelled" else EXIT_FAILED


def _follow(client: Control, job: PullJob, show: Callable[[PullJob], None]) -> PullJob:
    show(job)
    while job.state not in PULL_FINISHED:
        time.sleep(_POLL_SECONDS)
        job = _job(client.call(GetPulls(job.id)))
        show(job)
    return job


def _job(reply: ControlReply) -> PullJob:
    if isinstance(reply, CommandResult):
        raise PullRefused(reply)
    assert isinstance(reply, PullsReply) and reply.jobs
    return reply.jobs[0]


class _Progress:
    """A byte progress bar on a terminal; elsewhere one line per step (state or file)."""

    def __init__(self, repo: str) -> None:
        self._repo = repo
        self._bar: Any = None
        self._said = ("", "")
        if sys.stderr.isatty():
            from huggingface_hub.utils import tqdm

            self._bar = tqdm(desc=repo, unit="B", unit_scale=True, unit_divisor=1024, total=0, file=sys.stderr)

    def show(self, job: PullJob) -> None:
        if self._bar is not None:
            if job.total_bytes and self._bar.total != job.total_bytes:
                self._bar.total = job.total_bytes
                self._bar.refresh()
            self._bar.update(job.done_bytes - self._bar.n)
            return
        step = (job.state, job.current_file)
        if step != self._said and job.state not in PULL_FINISHED:
            self._said = step
            where = f" {job.current_file} ({job.done_bytes}/{job.total_bytes} bytes)" if job.current_file else ""
            self.say(f"{job.repo}: {job.state}{where}")

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
