"""POST /api/chat: Ollama's chat, translated to one ``Generate`` through ``jobs``."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.jobs import constraints
from opta_lmx.gateway.ollama.replies import Timer
from opta_lmx.gateway.ollama.requests import Message, decode_chat, json_schema
from opta_lmx.gateway.ollama.serving import answer
from opta_lmx.proto import ChatMessage, Tool, ToolCall


async def chat(request: Request) -> Response:
    timer = Timer()
    body = decode_chat(await request.body())
    tools = [Tool(t.function.name, t.function.description, t.function.parameters or {}) for t in body.tools or ()]
    fields = {"messages": chat_messages(body.messages or []), **constraints(json_schema(body.format), tools)}
    return await answer(request, timer, "chat", body, bool(body.messages), fields, tools=bool(body.tools))


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
