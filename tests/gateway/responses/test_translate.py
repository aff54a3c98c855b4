"""A Responses request as ``Generate`` fields: messages from items, tools shown as functions,
forced custom tools as a grammar, the text format as a JSON schema."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.responses.requests import decode_request
from opta_lmx.gateway.responses.tools import GrammarFormat
from opta_lmx.gateway.responses.translate import lark_of, plan
from opta_lmx.proto import ChatMessage, ToolCall

F = {"type": "function", "name": "f", "description": "Does f.", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}
C = {"type": "custom", "name": "c", "description": "Edits.", "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "ok"'}}
NS = {"type": "namespace", "name": "crm", "description": "CRM.", "tools": [{"type": "function", "name": "lookup"}]}


def planned(history: list[ChatMessage] | None = None, **fields: Any) -> Any:
    return plan(decode_request(json.dumps({"model": "m", "input": "hi", **fields}).encode()), history or [])


def test_items_become_chat_turns() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Rules."}, {"type": "input_text", "text": "More rules."}]},
        {"role": "user", "content": "Add 1 and 2, then patch."},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
        {"type": "custom_tool_call", "call_id": "c2", "name": "c", "input": "ok"},
        {"type": "function_call_output", "call_id": "c1", "output": "3"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "patched"}]},
        {"role": "system", "content": "Later note."},
    ]
    result = planned(instructions="Be brief.", input=items, tools=[F, C])
    assert result.fields["messages"] == [
        ChatMessage("system", "Be brief.\n\nRules.\n\nMore rules."),
        ChatMessage("user", "Add 1 and 2, then patch."),
        ChatMessage("assistant", "Sure.", [ToolCall("c1", "f", '{"x": 1}'), ToolCall("c2", "c", '{"input": "ok"}')]),
        ChatMessage("tool", "3", tool_call_id="c1", name="f"),
        ChatMessage("tool", "patched", tool_call_id="c2", name="c"),
        ChatMessage("system", "Later note."),  # stays in place: the conversation's prefix does not change
    ]
    # The conversation kept for a follow-up has no instructions (a follow-up brings its own).
    assert result.conversation[0] == ChatMessage("system", "Rules.\n\nMore rules.")


def test_history_comes_before_the_new_input() -> None:
    history = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello")]
    result = planned(history, instructions="New rules.", input="Again")
    assert result.fields["messages"] == [ChatMessage("system", "New rules."), *history, ChatMessage("user", "Again")]


def test_media_input_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        planned(input=[{"role": "user", "content": [{"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": "x"}]}])
    assert caught.value.param == "input[0].content[1]" and "image" in caught.value.message


def test_tools_shown_as_functions_hosted_ones_not_at_all() -> None:
    result = planned(tools=[F, C, NS, {"type": "web_search"}])
    shown = {t.name: t for t in result.fields["tools"]}
    assert list(shown) == ["f", "c", "crm__lookup"]
    assert shown["f"].parameters == F["parameters"]
    assert shown["c"].parameters["properties"] == {"input": {"type": "string", "description": "The tool's input, as free text."}}
    assert 'start: "ok"' in (shown["c"].description or "")
    assert result.fields["tool_choice"] == "auto" and result.forced_custom is None
    assert result.tools.target("crm__lookup").namespace == "crm"


def test_only_hosted_tools_show_none() -> None:
    assert "tools" not in planned(tools=[{"type": "web_search"}], tool_choice="auto").fields
    with pytest.raises(InvalidRequest) as caught:
        planned(tools=[{"type": "web_search"}], tool_choice="required")
    assert caught.value.param == "tool_choice"


@pytest.mark.parametrize(
    "choice",
    [{"type": "custom", "name": "c"}, "required", {"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "c"}]}],
)
def test_a_forced_custom_tool_constrains_the_whole_output_to_its_grammar(choice: Any) -> None:
    tools = [F, C] if not isinstance(choice, str) else [C]
    result = planned(tools=tools, tool_choice=choice)
    assert result.fields["grammar"] == 'start: "ok"'
    assert "tools" not in result.fields and "json_schema" not in result.fields
    assert result.forced_custom is not None and result.forced_custom.name == "c"


def test_a_forced_custom_tool_with_a_text_format_is_free_text() -> None:
    result = planned(tools=[{"type": "custom", "name": "note"}], tool_choice="required")
    assert "grammar" not in result.fields and result.forced_custom is not None


def test_forced_functions_and_tool_choice_none() -> None:
    named = planned(tools=[F, C], tool_choice={"type": "function", "name": "f"}, parallel_tool_calls=False)
    assert [t.name for t in named.fields["tools"]] == ["f"] and named.fields["tool_choice"] == "required"
    assert named.fields["parallel_tool_calls"] is False
    several = planned(tools=[F, C], tool_choice="required")
    assert [t.name for t in several.fields["tools"]] == ["f", "c"] and several.forced_custom is None
    assert "tools" not in planned(tools=[F], tool_choice="none").fields


def test_text_format_is_a_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert json.loads(planned(text={"format": {"type": "json_schema", "name": "n", "schema": schema}}).fields["json_schema"]) == schema
    assert json.loads(planned(text={"format": {"type": "json_object"}}).fields["json_schema"]) == {"type": "object"}
    assert "json_schema" not in planned(text={"format": {"type": "text"}, "verbosity": "low"}).fields


@pytest.mark.parametrize("regex", [r"[a-z]+/[0-9]{2}", r"a\/b", r"x\\/y", r"\d{3}"])
def test_a_regex_grammar_becomes_lark_with_the_same_language(regex: str) -> None:
    lark = lark_of(GrammarFormat("regex", regex))
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark)) == ""
    # The language is llguidance's own regex grammar's.
    theirs = json.loads(llguidance.LLMatcher.grammar_from_regex(regex))["grammars"][0]["lark_grammar"]
    assert lark == theirs + "\n"
