"""``/admin/models/pull``: model pulls as jobs the supervisor runs (start, poll, follow as
server-sent events, cancel), and ``DELETE /admin/models/{name}``.

A job's id is 12 hex digits; the routes with an id accept only that (``{id:pull_id}``), so a
model whose name starts with ``pull/`` is still reached by ``/admin/models/{name}``.
"""

from __future__ import annotations

from typing import AsyncIterator

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from opta_lmx.gateway import pulls
from opta_lmx.gateway.admin.control import json_response, model_name, state_of
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.admin.events import KEEPALIVE_SECONDS
from opta_lmx.gateway.sse import named_event
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import PullJob

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class PullIdConvertor(Convertor[str]):
    regex = "[0-9a-f]{12}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("pull_id", PullIdConvertor())


class PullBody(msgspec.Struct, forbid_unknown_fields=True):
    """``repo``: ``ORG/NAME`` (or ``ORG/NAME@REVISION``); ``quant``: which GGUF quantization."""

    repo: str
    revision: str = ""
    quant: str | None = None


_PULL = msgspec.json.Decoder(PullBody)


async def start(request: Request) -> Response:
    """202 with the job; the same job when this repository is being pulled with the same
    settings; 400 for a malformed name, 409 ``pull_in_progress`` for other settings."""
    body = decode_body(_PULL, await request.body() or b"{}")
    job = await pulls.start_pull(state_of(request), body.repo, body.revision, body.quant)
    return json_response(job, 202)


async def list_jobs(request: Request) -> Response:
    return json_response({"jobs": await pulls.pull_jobs(state_of(request))})


async def get_job(request: Request) -> Response:
    return json_response(await pulls.pull_job(state_of(request), request.path_params["id"]))


async def cancel(request: Request) -> Response:
    """The pull stops at its next network chunk (its partial download is kept); the job then
    says ``cancelled``. 409 ``not_running`` for a job that has finished."""
    state, job_id = state_of(request), request.path_params["id"]
    message = await pulls.cancel_pull(state, job_id)
    return json_response({"ok": True, "message": message, "job": await pulls.pull_job(state, job_id)})


async def events(request: Request) -> Response:
    """The job now, then each change, as ``event: pull`` with the job as JSON; the stream ends
    after the job's last state (done, failed or cancelled)."""
    state, job_id = state_of(request), request.path_params["id"]
    updates = pulls.follow(state, job_id, KEEPALIVE_SECONDS)
    first = await anext(updates)  # an unknown id is a 404 before the stream starts
    return StreamingResponse(_lines(first, updates), media_type="text/event-stream", headers=_HEADERS)


async def _lines(first: PullJob | None, updates: AsyncIterator[PullJob | None]) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield named_event("pull", first)
        async for job in updates:
            yield b": keep-alive\n\n" if job is None else named_event("pull", job)
    finally:
        await updates.aclose()  # type: ignore[attr-defined]


async def remove(request: Request) -> Response:
    """Delete a local model's files: 409 ``model_loaded`` while it is loaded (unload it first),
    409 ``model_configured`` for a model the config file names, 404 for an unknown one."""
    state: GatewayState = state_of(request)
    message = await pulls.remove(state, model_name(request))
    return json_response({"ok": True, "message": message})
