"""POST /api/generate: a prompt (and system prompt) through the model's chat template, or as it
is with ``raw``; translated to one ``Generate`` through ``jobs``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.jobs import choices, constraints, thinking
from opta_lmx.gateway.ollama.options import sampling_params
from opta_lmx.gateway.ollama.replies import Reply, Timer
from opta_lmx.gateway.ollama.requests import GenerateRequest, decode_generate, json_schema, keep_alive_seconds
from opta_lmx.gateway.ollama.serving import (
    check_capabilities,
    context_length,
    load_or_unload,
    model_facts,
    resolve_ollama,
    run,
    set_keep_alive,
)
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import ChatMessage


async def generate(request: Request) -> Response:
    timer = Timer()
    state: GatewayState = request.app.state.gateway
    body = decode_generate(await request.body())
    target = resolve_ollama(state, body.model)
    keep_alive = keep_alive_seconds(body.keep_alive)
    reply = Reply("generate", body.model, thinking=body.think is not False, logprobs=bool(body.logprobs))
    if not body.prompt:
        return await load_or_unload(state, target, reply, keep_alive)
    facts = await model_facts(target)
    check_capabilities(facts, body.model, body.think, tools=False)
    fields = {
        **prompt_fields(body),
        **constraints(json_schema(body.format)),
        **thinking(None if body.think is None else body.think is not False),
    }
    params = sampling_params(
        body.options, target.preset, context_length(state, target, facts), bool(body.logprobs), body.top_logprobs
    )
    await set_keep_alive(state, target, keep_alive)
    [job] = choices(target.model.name, fields, params)
    return await run(request, state, target, job, reply, timer, stream=body.stream is not False)


def prompt_fields(body: GenerateRequest) -> dict[str, Any]:
    """``raw``: the prompt as it is; otherwise a user turn (after the system prompt, if any)
    rendered by the model's chat template, as Ollama renders it with the model's template."""
    if body.raw:
        return {"prompt": body.prompt}
    system = [ChatMessage("system", body.system)] if body.system else []
    return {"messages": [*system, ChatMessage("user", body.prompt or "")]}
