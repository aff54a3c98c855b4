"""POST /api/chat: Ollama's chat, translated to one ``Generate`` through ``jobs``."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.jobs import choices, constraints, thinking
from opta_lmx.gateway.ollama.options import sampling_params
from opta_lmx.gateway.ollama.replies import Reply, Timer
from opta_lmx.gateway.ollama.requests import Message, decode_chat, json_schema, keep_alive_seconds
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
from opta_lmx.proto import ChatMessage, Tool, ToolCall


async def chat(request: Request) -> Response:
    timer = Timer()
    state: GatewayState = request.app.state.gateway
    body = decode_chat(await request.body())
    target = resolve_ollama(state, body.model)
    keep_alive = keep_alive_seconds(body.keep_alive)
    reply = Reply("chat", body.model, thinking=body.think is not False, logprobs=bool(body.logprobs))
    if not body.messages:
        return await load_or_unload(state, target, reply, keep_alive)
    facts = await model_facts(target)
    check_capabilities(facts, body.model, body.think, bool(body.tools))
    tools = [Tool(t.function.name, t.function.description, t.function.parameters or {}) for t in body.tools or ()]
    fields = {
        "messages": chat_messages(body.messages),
        **constraints(json_schema(body.format), tools),
        **thinking(None if body.think is None else body.think is not False),
    }
    params = sampling_params(
        body.options, target.preset, context_length(state, target, facts), bool(body.logprobs), body.top_logprobs
    )
    await set_keep_alive(state, target, keep_alive)
    [job] = choices(target.model.name, fields, params)
    return await run(request, state, target, job, reply, timer, stream=body.stream is not False)


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """Ollama's messages for the chat template. An assistant turn's ``thinking`` is left out, as
    Ollama leaves it out of the next prompt; a tool turn names its tool (``tool_name``)."""
    out = []
    for turn, message in enumerate(messages):
        calls = [
            ToolCall(call.id or f"call_{turn}_{index}", call.function.name, json.dumps(call.function.arguments))
            for index, call in enumerate(message.tool_calls or ())
        ]
        out.append(
            ChatMessage(
                role=message.role,
                content=message.content or "",
                tool_calls=calls,
                tool_call_id=message.tool_call_id or None,
                name=message.tool_name or None,
            )
        )
    return out
