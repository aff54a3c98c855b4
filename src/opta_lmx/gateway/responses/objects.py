"""The Responses API's objects as JSON-ready dicts: the response, its output items, its usage.

Shapes follow openai-python's ``types/responses`` (``Response``, ``ResponseOutputMessage``,
``ResponseReasoningItem``, ``ResponseFunctionToolCall``, ``ResponseCustomToolCall``,
``ResponseUsage``); Codex parses the same ones.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from opta_lmx.gateway.responses.requests import JsonFormat, ResponseRequest
from opta_lmx.gateway.responses.translate import CallTarget
from opta_lmx.proto import Finished, SamplingParams, ToolCall


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _text_config(format: JsonFormat | None, verbosity: str | None) -> dict[str, Any]:
    if format is None or format.type != "json_schema":
        shown: dict[str, Any] = {"type": format.type if format is not None else "text"}
    else:
        shown = {"type": "json_schema", "name": format.name, "schema": format.schema, "strict": format.strict}
        if format.description is not None:
            shown["description"] = format.description
    return {"format": shown, "verbosity": verbosity or "medium"}


class Envelope:
    """The fields of a response that do not change while it is made: its id, and what the request
    asked for, echoed back as OpenAI does."""

    def __init__(self, request: ResponseRequest, model: str, params: SamplingParams) -> None:
        body = request.body
        self.id = new_id("resp")
        self.created_at = int(time.time())
        reasoning = body.reasoning
        text = body.text
        self._echo: dict[str, Any] = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": model,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "prompt_cache_key": body.prompt_cache_key,
            "reasoning": {
                "effort": reasoning.effort if reasoning else None,
                "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
            },
            "safety_identifier": body.safety_identifier,
            "service_tier": "default",
            "store": body.store,
            "temperature": params.temperature,
            "text": _text_config(text.format if text else None, text.verbosity if text else None),
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_logprobs": body.top_logprobs or 0,
            "top_p": params.top_p,
            "truncation": "disabled",
            "user": body.user,
            "metadata": body.metadata or {},
            "background": False,
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete_reason: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "output": output,
            "usage": usage,
            **self._echo,
        }



def output_text(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def reasoning_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    # No summary: the model's reasoning is given whole, as ``content`` (see the docs).
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content, "encrypted_content": None}


def call_item(item_id: str, call_id: str, target: CallTarget, payload: str, status: str) -> dict[str, Any]:
    """A ``function_call`` (``payload``: JSON arguments) or a ``custom_tool_call`` (its input)."""
    if target.kind == "custom":
        item: dict[str, Any] = {"id": item_id, "type": "custom_tool_call", "call_id": call_id, "name": target.name, "input": payload}
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": target.name, "arguments": payload}
    if target.namespace is not None:
        item["namespace"] = target.namespace
    return item


def custom_input(call: ToolCall) -> str:
    """The input of a custom tool the model called as a function (``{"input": "..."}``); the raw
    arguments when they are not that object."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return call.arguments
    if isinstance(arguments, dict) and isinstance(arguments.get("input"), str):
        return arguments["input"]
    return call.arguments


def usage(finished: Finished, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": finished.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, finished.completion_tokens)},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }
