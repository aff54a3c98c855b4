"""Decoding ``POST /v1/responses`` bodies: what is accepted (also what Codex sends), what is
refused, and that every error names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.responses.items import (
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningItem,
)
from opta_lmx.gateway.responses.requests import decode_request
from opta_lmx.gateway.responses.tools import AllowedTools, CustomTool, FunctionTool, GrammarFormat, HostedTool, NamedTool, NamespaceTool


def decode(**fields: Any) -> Any:
    return decode_request(json.dumps({"model": "m", "input": "hi", **fields}).encode())


def test_a_string_input_is_one_user_message() -> None:
    request = decode()
    assert request.items == [MessageItem(role="user", content="hi")]
    assert request.tools == [] and request.tool_choice == "auto" and request.body.store is True


# The shape of what Codex 0.171 sends (captured from `codex exec "say hi"`), shortened.
CODEX = {
    "model": "m",
    "stream": True,
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are a coding agent."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}, {"type": "input_text", "text": "say hi"}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}], "encrypted_content": None},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}], "phase": "final_answer"},
        {"type": "function_call", "name": "exec_command", "arguments": "{\"cmd\": \"ls\"}", "call_id": "call_1"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch", "call_id": "call_2", "status": "completed"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "done"},
    ],
    "tools": [
        {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": False, "parameters": {"type": "object"}},
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Sub-agents.",
            "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawns.", "strict": False, "parameters": {"type": "object"}}],
        },
        {"type": "custom", "name": "apply_patch", "description": "Edits files.", "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "x"'}},
        {"type": "web_search", "external_web_access": False},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"summary": "auto"},
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "0199",
    "client_metadata": {"session_id": "0199", "x-codex-turn-metadata": "{}"},
}


def test_what_codex_sends_is_accepted() -> None:
    request = decode_request(json.dumps(CODEX).encode())
    assert [type(item) for item in request.items] == [
        MessageItem,
        MessageItem,
        ReasoningItem,
        MessageItem,
        FunctionCallItem,
        FunctionCallOutputItem,
        CustomToolCallItem,
        CustomToolCallOutputItem,
    ]
    tools = request.tools
    assert [type(t) for t in tools] == [FunctionTool, NamespaceTool, CustomTool, HostedTool]
    assert isinstance(tools[2], CustomTool) and tools[2].format == GrammarFormat("lark", 'start: "x"')
    assert request.body.store is False and request.body.stream is True


def test_tool_choices() -> None:
    tools = [{"type": "function", "name": "f"}, {"type": "custom", "name": "c"}]
    assert decode(tools=tools, tool_choice={"type": "function", "name": "f"}).tool_choice == NamedTool(type="function", name="f")
    assert decode(tools=tools, tool_choice={"type": "custom", "name": "c"}).tool_choice == NamedTool(type="custom", name="c")
    allowed = decode(tools=tools, tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "c"}]})
    assert isinstance(allowed.tool_choice, AllowedTools) and allowed.tool_choice.mode == "required"


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}, InvalidRequest, "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": "x", "colour": 1}]}, UnsupportedParameter, "input[0].colour"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, InvalidRequest, "input[0].call_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, UnsupportedParameter, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, InvalidRequest, "input[0].role"),
        ({"tools": [{"type": "function", "name": "two words"}]}, InvalidRequest, "tools[0].name"),
        ({"tools": [{"type": "telepathy"}]}, InvalidRequest, "tools[0].type"),
        ({"tools": [{"type": "custom", "name": "c", "format": {"type": "grammar", "syntax": "ebnf", "definition": ""}}]}, InvalidRequest, "tools[0].format.syntax"),
        ({"tool_choice": {"type": "web_search_preview"}}, UnsupportedParameter, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "missing"}}, InvalidRequest, "tool_choice"),
        ({"tool_choice": "sometimes"}, InvalidRequest, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "n"}}}, InvalidRequest, "text.format.schema"),
        ({"include": ["everything"]}, InvalidRequest, "include[0]"),
        ({"temperature": 3}, InvalidRequest, "temperature"),
        ({"max_output_tokens": 0}, InvalidRequest, "max_output_tokens"),
        ({"background": True}, UnsupportedParameter, "background"),
        ({"conversation": "conv_1"}, UnsupportedParameter, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, UnsupportedParameter, "prompt"),
        ({"truncation": "auto"}, UnsupportedParameter, "truncation"),
        ({"seed": 1}, UnsupportedParameter, "seed"),
    ],
)
def test_bad_input_names_its_field(fields: dict[str, Any], error: type[Exception], param: str) -> None:
    with pytest.raises(error) as caught:
        decode(**fields)
    assert caught.value.param == param  # type: ignore[attr-defined]


def test_input_or_a_previous_response_is_needed() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_request(b'{"model": "m"}')
    assert caught.value.param == "input"
    assert decode_request(b'{"model": "m", "previous_response_id": "resp_1"}').items == []
