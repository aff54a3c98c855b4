"""``POST /api/pull`` and ``DELETE /api/delete`` over the supervisor's pull jobs and removal.

Only Hugging Face names can be pulled (``hf.co/ORG/REPO[:QUANT]``, as Ollama pulls them; this
server does not download from Ollama's library). The pull is a supervisor job like the admin
API's: a client that leaves does not stop it, and a second pull of the same name follows the
same job, as in Ollama. Progress lines are Ollama's: ``{"status": "pulling manifest"}``, then
``{"status": "downloading FILE", "digest": FILE, "total", "completed"}`` per file of the
repository, then ``{"status": "success"}``, or a last ``{"error": ...}`` line.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from opta_lmx.errors import ApiError, InvalidRequest, ModelNotFound, ServerShuttingDown
from opta_lmx.gateway import pulls
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.generation import unless_disconnected
from opta_lmx.gateway.ollama.names import hugging_face_repo, served_name
from opta_lmx.gateway.sse import json_line_safe
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import PULL_FINISHED, PullJob

# Seconds between checks that the server is not shutting down while a pull is quiet.
_QUIET = 15.0
_STOPPING = "the server is shutting down; pull again once it is back to continue the download"


class PullRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str = ""
    name: str = ""  # Ollama's older spelling of ``model``
    insecure: bool | None = None  # for Ollama's own registry; the hub is always HTTPS
    stream: bool | None = None
    username: str | None = None  # Ollama's registry credentials: a hub token is $HF_TOKEN
    password: str | None = None


class DeleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str = ""
    name: str = ""


_PULL = msgspec.json.Decoder(PullRequest)
_DELETE = msgspec.json.Decoder(DeleteRequest)


async def pull(request: Request) -> Response:
    body = decode_body(_PULL, await request.body())
    asked = body.model or body.name
    if not asked:
        raise InvalidRequest("model is required", param="model")
    hf = hugging_face_repo(asked)
    if hf is None:
        raise InvalidRequest(
            f"cannot pull {asked!r}: this server pulls only Hugging Face models, named "
            "hf.co/ORG/REPO or hf.co/ORG/REPO:QUANT (e.g. hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M); "
            "it does not download from Ollama's library",
            param="model",
        )
    state: GatewayState = request.app.state.gateway
    repo, quant = hf
    job = await pulls.start_pull(state, repo, "", quant)
    if body.stream is False:
        last = await unless_disconnected(request, _last(state, job.id))
        if last is None:
            return Response(status_code=499)
        if last.state != "done":
            raise pulls.job_error(last)
        return JSONResponse({"status": "success"})
    return StreamingResponse(_lines(state, job.id), media_type="application/x-ndjson")


async def _last(state: GatewayState, job_id: str) -> PullJob:
    last: PullJob | None = None
    async for job in pulls.follow(state, job_id, _QUIET):
        last = job or last
    if last is None or last.state not in PULL_FINISHED:
        raise ServerShuttingDown(_STOPPING)
    return last


async def _lines(state: GatewayState, job_id: str) -> AsyncIterator[bytes]:
    sent: dict[str, Any] = {"status": "pulling manifest"}
    yield json_line_safe(sent) + b"\n"
    try:
        async for job in pulls.follow(state, job_id, _QUIET):
            line = _progress_line(job) if job is not None else None
            if line is not None and line != sent:
                sent = line
                yield json_line_safe(line) + b"\n"
    except ApiError as error:  # the supervisor stopped answering: the stream ends with the error
        sent = {"error": error.message}
        yield json_line_safe(sent) + b"\n"
    if "error" not in sent and sent.get("status") != "success":  # the follow ended at shutdown
        yield json_line_safe({"error": _STOPPING}) + b"\n"


def _progress_line(job: PullJob) -> dict[str, Any] | None:
    if job.state == "done":
        return {"status": "success"}
    if job.state in ("failed", "cancelled"):
        return {"error": pulls.job_error(job).message}
    if job.state == "downloading" and job.current_file:
        line: dict[str, Any] = {"status": f"downloading {job.current_file}", "digest": job.current_file}
        line["total"] = job.file_bytes
        if job.file_done:  # Ollama leaves it out until some of the file is in
            line["completed"] = job.file_done
        return line
    return None


async def delete(request: Request) -> Response:
    """200 with no body once the files are gone; 404 for an unknown model, 409 while it is
    loaded (unload it first: ``keep_alive: 0``) or when the config file names it."""
    body = decode_body(_DELETE, await request.body())
    asked = body.model or body.name
    if not asked:
        raise InvalidRequest("model is required", param="model")
    state: GatewayState = request.app.state.gateway
    name = served_name(asked, state.config)
    if name is None:
        raise ModelNotFound(f"model '{asked}' not found", param="model")
    try:
        await pulls.remove(state, name)
    except ModelNotFound:
        raise ModelNotFound(f"model '{asked}' not found", param="model") from None
    return Response(status_code=200)
