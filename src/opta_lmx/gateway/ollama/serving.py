"""What ``/api/chat`` and ``/api/generate`` share: Ollama's model names, ``keep_alive``, the
requests that only load or unload a model, and running one ``Job`` on the shared generation path
to an NDJSON stream or one object.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from functools import partial
from typing import Any, AsyncIterator, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opta_lmx.errors import ApiError, InvalidRequest, ModelNotFound
from opta_lmx.gateway.generation import Job, merged, prepare_all, respond, unless_disconnected
from opta_lmx.gateway.jobs import Target, choices, resolve, thinking
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.ollama.facts import ModelFacts
from opta_lmx.gateway.ollama.model_files import read_model_files
from opta_lmx.gateway.ollama.names import candidates
from opta_lmx.gateway.ollama.options import sampling_params
from opta_lmx.gateway.ollama.replies import STREAM, Reply, Timer
from opta_lmx.gateway.ollama.requests import GenerationRequest, keep_alive_seconds
from opta_lmx.gateway.sse import json_line_safe
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import Finished, TokenChunk, TokenLogprobs, ToolCall

log = logging.getLogger("opta_lmx.gateway")

# States in which a model is loaded or loading: an unload request has something to unload.
_ALIVE = ("STARTING", "RUNNING", "BACKOFF")


def resolve_ollama(state: GatewayState, name: str) -> Target:
    """The model ``name`` names (``names.candidates``: ``name:latest`` also names a model
    configured without a tag, ``hf.co/ORG/REPO:QUANT`` the model a pull of it made). Not found:
    Ollama's message, status 404."""
    for candidate in candidates(name, state.config):
        try:
            return resolve(state, candidate)
        except ModelNotFound:
            continue
    raise ModelNotFound(f"model '{name}' not found", param="model")


async def model_facts(target: Target) -> ModelFacts:
    """The model's files read off the event loop (the first read of a large tokenizer or GGUF
    takes a moment; later ones come from the cache)."""
    return await asyncio.to_thread(read_model_files, target.model.path)


def context_length(state: GatewayState, target: Target, facts: ModelFacts) -> int:
    """The context the worker reports once loaded, else the one the model's files give."""
    status = state.models.get(target.model.name)
    return status.ctx_len if status is not None and status.ctx_len else facts.context_length


def check_capabilities(facts: ModelFacts, asked: str, think: bool | str | None, tools: bool) -> None:
    """Ollama's refusals for what the model cannot do (``asked`` is the name the client used)."""
    if think not in (None, False) and "thinking" not in facts.capabilities:
        raise InvalidRequest(f'"{asked}" does not support thinking', param="think")
    if tools and "tools" not in facts.capabilities:
        raise InvalidRequest(f'"{asked}" does not support tools', param="tools")


async def set_keep_alive(state: GatewayState, target: Target, seconds: float | None) -> None:
    if seconds is not None:
        await state.models.keep_alive(target.model.name, seconds)


async def load_or_unload(state: GatewayState, target: Target, reply: Reply, keep_alive: float | None) -> Response:
    """A request with no prompt: ``keep_alive`` 0 unloads the model, anything else loads it."""
    name = target.model.name
    if keep_alive == 0:
        if target.model.pinned:
            raise InvalidRequest(f"model '{reply.model}' is pinned in the server's configuration: it stays loaded")
        status = state.models.get(name)
        if status is not None and status.state in _ALIVE:
            await state.models.keep_alive(name, 0)
            await _wait_unloading(state, name)
        return JSONResponse(reply.status("unload"))
    await set_keep_alive(state, target, keep_alive)
    settings = state.config
    await state.models.ready(name, settings.server.ready_wait, settings.supervisor.load_timeout)
    return JSONResponse(reply.status("load"))


async def _wait_unloading(state: GatewayState, name: str) -> None:
    """Until the supervisor starts the unload (it waits for requests in flight, and for two
    heartbeats after the last one), so that ``/api/ps`` no longer lists the model; a model still
    busy after that is unloaded when it goes idle."""

    def unloading() -> bool:
        status = state.models.get(name)
        return status is None or status.state not in ("RUNNING", "STARTING")

    await state.models.wait_until(unloading, 3 * state.config.supervisor.heartbeat_interval + 1.0)


async def answer(
    request: Request,
    timer: Timer,
    kind: Literal["chat", "generate"],
    body: GenerationRequest,
    has_input: bool,
    fields: dict[str, Any],
    tools: bool = False,
) -> Response:
    """What /api/chat and /api/generate share once their body is decoded: the model, its
    keep-alive, a load or unload when there is no input (no messages, no prompt), else one job
    with ``fields`` (the prompt and its constraints) on the shared generation path."""
    state: GatewayState = request.app.state.gateway
    target = resolve_ollama(state, body.model)
    keep_alive = keep_alive_seconds(body.keep_alive)
    reply = Reply(kind, body.model, thinking=body.think is not False, logprobs=bool(body.logprobs))
    if not has_input:
        return await load_or_unload(state, target, reply, keep_alive)
    facts = await model_facts(target)
    check_capabilities(facts, body.model, body.think, tools)
    fields = {**fields, **thinking(None if body.think is None else body.think is not False)}
    limit = context_length(state, target, facts)
    params = sampling_params(body.options, target.preset, limit, bool(body.logprobs), body.top_logprobs)
    await set_keep_alive(state, target, keep_alive)
    [job] = choices(target.model.name, fields, params)
    return await run(request, state, target, job, reply, timer, stream=body.stream is not False)


async def run(
    request: Request, state: GatewayState, target: Target, job: Job, reply: Reply, timer: Timer, stream: bool
) -> Response:
    """Generate ``job``: a stream of NDJSON lines, or the one ``done`` object with everything.
    ``timer`` started when the request came in."""
    if stream:
        return await respond(
            request, state, [job], target.running, partial(_lines, state, reply, timer), _unused, STREAM
        )
    # Not ``respond``'s collected reply: Ollama's durations need to know when each phase ended.
    pendings = await prepare_all(state, [job])
    timer.mark_loaded()
    whole = await unless_disconnected(request, _collect(state, pendings, reply, timer))
    if whole is None:
        return Response(status_code=499)
    return JSONResponse(whole)


def _unused(_: Any) -> Any:
    raise AssertionError("a stream has no collected reply")


def _lines(state: GatewayState, reply: Reply, timer: Timer, pendings: list[Pending]) -> AsyncIterator[bytes]:
    timer.mark_loaded()  # called once the model accepted the request
    return _stream(state, pendings, reply, timer)


async def _stream(state: GatewayState, pendings: list[Pending], reply: Reply, timer: Timer) -> AsyncIterator[bytes]:
    try:
        async with aclosing(merged(state, pendings)) as messages:
            async for _, message in messages:
                if isinstance(message, TokenChunk):
                    timer.mark_token()
                    piece = reply.piece(message)
                    if piece is not None:
                        yield json_line_safe(piece) + b"\n"
                elif isinstance(message, Finished):
                    yield json_line_safe(reply.done(message, timer)) + b"\n"
    except ApiError as error:
        log.warning("ollama stream for %s ended with %s: %s", reply.model, error.code, error.message)
        yield STREAM.error_line(error)


async def _collect(state: GatewayState, pendings: list[Pending], reply: Reply, timer: Timer) -> dict[str, Any]:
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprobs] = []
    async with aclosing(merged(state, pendings)) as messages:
        async for _, message in messages:
            if isinstance(message, TokenChunk):
                timer.mark_token()
                text.append(message.text)
                reasoning.append(message.reasoning)
                calls.extend(message.tool_calls)
                logprobs.extend(message.logprobs or ())
            elif isinstance(message, Finished):
                return reply.done(message, timer, "".join(text), "".join(reasoning), calls, logprobs)
    raise AssertionError("merged() ends with a Finished or raises")
