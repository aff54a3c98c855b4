"""POST /api/generate: a prompt (and system prompt) through the model's chat template, or as it
is with ``raw``; translated to one ``Generate`` through ``jobs``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.jobs import constraints
from opta_lmx.gateway.ollama.replies import Timer
from opta_lmx.gateway.ollama.requests import GenerateRequest, decode_generate, json_schema
from opta_lmx.gateway.ollama.serving import answer
from opta_lmx.proto import ChatMessage


async def generate(request: Request) -> Response:
    timer = Timer()
    body = decode_generate(await request.body())
    fields = {**prompt_fields(body), **constraints(json_schema(body.format))}
    return await answer(request, timer, "generate", body, bool(body.prompt), fields)


def prompt_fields(body: GenerateRequest) -> dict[str, Any]:
    """``raw``: the prompt as it is; otherwise a user turn (after the system prompt, if any)
    rendered by the model's chat template, as Ollama renders it with the model's template."""
    if body.raw:
        return {"prompt": body.prompt}
    system = [ChatMessage("system", body.system)] if body.system else []
    return {"messages": [*system, ChatMessage("user", body.prompt or "")]}
