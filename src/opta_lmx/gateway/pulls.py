"""What every API that pulls or removes models shares (the admin API, Ollama's): the supervisor's
store commands, their refusals as errors, and a pull job's progress as a stream.

A job's progress reaches the gateway on the supervisor's events socket (``PullJob``s, at most a
few a second per job); a follower subscribes before it asks for the job's current state, so it
misses nothing, and holds at most one waiting update (``status_feed.PullFeed``), so a slow
client costs no memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator

from opta_lmx.errors import (
    ApiError,
    InvalidRequest,
    ModelNotFound,
    PullFailed,
    PullNotFound,
    StateConflict,
)
from opta_lmx.proto import (
    PULL_FINISHED,
    PULL_STATES,
    CancelPull,
    CommandResult,
    ControlReply,
    ControlRequest,
    GetPulls,
    PullJob,
    PullModel,
    PullsReply,
    RemoveModel,
)

if TYPE_CHECKING:
    from opta_lmx.gateway.state import GatewayState

_TIMEOUT = 10.0
# A removal deletes files and rescans: a large model on a slow disk takes a while.
_REMOVE_TIMEOUT = 120.0
# How long an answer about a finished job waits for the gateway to apply the statuses published
# before it (the new model's); they are on their way, so this is a bound, not a wait.
_CATCH_UP = 2.0


async def command(state: GatewayState, request: ControlRequest, timeout: float = _TIMEOUT) -> ControlReply:
    """The supervisor's reply to a store command; a refusal raised as its error."""
    reply = await state.models.command(request, timeout)
    if isinstance(reply, CommandResult) and not reply.ok:
        raise refusal(reply)
    return reply


def refusal(result: CommandResult) -> ApiError:
    match result.code:
        case "invalid_request":
            return InvalidRequest(result.message, param="repo")
        case "pull_not_found":
            return PullNotFound(result.message, param="id")
        case "model_not_found":
            return ModelNotFound(result.message, param="name")
        case "pull_in_progress" | "model_loaded" | "model_configured" | "not_running":
            return StateConflict(result.message, result.code)
    error = ApiError(result.message)
    error.code = result.code or None
    return error


async def start_pull(state: GatewayState, repo: str, revision: str = "", quant: str | None = None) -> PullJob:
    reply = await command(state, PullModel(repo, revision, quant))
    assert isinstance(reply, PullsReply) and reply.jobs
    return reply.jobs[0]


async def pull_job(state: GatewayState, job_id: str) -> PullJob:
    """The job as the supervisor has it now; once it is finished, the statuses before it (the
    new model's) are applied here too."""
    reply = await command(state, GetPulls(job_id))
    assert isinstance(reply, PullsReply) and reply.jobs
    job = reply.jobs[0]
    if job.state in PULL_FINISHED:
        await state.models.caught_up(job.seq, _CATCH_UP)
    return job


async def pull_jobs(state: GatewayState) -> list[PullJob]:
    reply = await command(state, GetPulls())
    assert isinstance(reply, PullsReply)
    return reply.jobs


async def cancel_pull(state: GatewayState, job_id: str) -> str:
    reply = await command(state, CancelPull(job_id))
    assert isinstance(reply, CommandResult)
    return reply.message


async def remove(state: GatewayState, name: str) -> str:
    reply = await command(state, RemoveModel(name), _REMOVE_TIMEOUT)
    assert isinstance(reply, CommandResult)
    await state.models.caught_up(reply.seq, _CATCH_UP)
    return reply.message


async def follow(state: GatewayState, job_id: str, quiet: float) -> AsyncIterator[PullJob | None]:
    """The job's state now, then each change until it is finished (its last one included);
    None after ``quiet`` seconds without a change (a stream's keep-alive is due). Ends early if
    the server shuts down. ``PullNotFound`` before the first item for an unknown id."""
    subscription = state.pulls.subscribe(only=job_id)  # before the snapshot: nothing falls between
    try:
        last = await pull_job(state, job_id)
        yield last
        while last.state not in PULL_FINISHED and not subscription.closed:
            jobs = await subscription.next(quiet)
            if jobs is None:
                if not subscription.closed:
                    yield None
                continue
            for job in jobs:
                if _newer(job, last):
                    last = job
                    yield job
    finally:
        state.pulls.unsubscribe(subscription)


def job_error(job: PullJob) -> PullFailed:
    """The error a client gets for a job that ended without a model."""
    return PullFailed(job.message or f"pull of {job.repo} {job.state}", job.error or job.state)


def _newer(job: PullJob, last: PullJob) -> bool:
    """A change not older than what was sent (an event may have left the supervisor before the
    snapshot was taken): later in its states, its bytes, its files."""
    return job != last and _progress(job) >= _progress(last)


def _progress(job: PullJob) -> tuple[int, int, int]:
    file = job.files.index(job.current_file) if job.current_file in job.files else -1
    return PULL_STATES.index(job.state), job.done_bytes, file
