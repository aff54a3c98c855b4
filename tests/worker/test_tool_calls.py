"""Tool-call text parsed into calls, with mlx-lm's own parser for the JSON format: scripted model
outputs fed in every possible split, since a detokenizer may cut a marker anywhere."""

from __future__ import annotations

import json

import pytest
from mlx_lm.tool_parsers import json_tools

from opta_lmx.proto import ChatMessage, ToolCall
from opta_lmx.worker.tool_calls import ToolCallSplitter, template_messages

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def splitter() -> ToolCallSplitter:
    return ToolCallSplitter(json_tools.tool_call_start, json_tools.tool_call_end, json_tools.parse_tool_call, [])


def feed_in_two(text: str, at: int) -> tuple[str, list[ToolCall], bool]:
    s = splitter()
    content, calls = s.feed(text[:at])
    more_content, more_calls = s.feed(text[at:])
    tail, last_calls = s.flush()
    return content + more_content + tail, calls + more_calls + last_calls, s.called


@pytest.mark.parametrize(
    ("output", "content", "calls"),
    [
        (CALL, "", [("add", {"a": 1, "b": 2})]),
        ("Let me add.\n" + CALL, "Let me add.", [("add", {"a": 1, "b": 2})]),
        ("A\n\nB \n", "A\n\nB \n", []),
        (CALL + "\n" + CALL.replace("add", "mul"), "", [("add", {"a": 1, "b": 2}), ("mul", {"a": 1, "b": 2})]),
        ("no calls, just < and </ and <tool", "no calls, just < and </ and <tool", []),
        ("  \n", "  \n", []),
    ],
)
def test_scripted_outputs_split_anywhere(output: str, content: str, calls: list) -> None:
    for at in range(len(output) + 1):
        got_content, got_calls, called = feed_in_two(output, at)
        assert got_content == content, at
        assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls, at
        assert called == bool(calls)
        assert all(c.id.startswith("call_") and len(c.id) == 29 for c in got_calls)


def test_a_block_that_does_not_parse_is_given_back_as_text() -> None:
    bad = "<tool_call>\n{not json}\n</tool_call> after"
    content, calls, called = feed_in_two(bad, 5)
    assert (content, calls, called) == (bad, [], False)


def test_a_block_cut_off_at_the_end_is_parsed_if_it_can_be_and_kept_as_text_if_not() -> None:
    content, calls, _ = feed_in_two('<tool_call>\n{"name": "f", "arguments": {}}', 3)
    assert content == "" and [c.name for c in calls] == ["f"]
    content, calls, _ = feed_in_two('<tool_call>\n{"name": "f", "argu', 3)
    assert content == '<tool_call>\n{"name": "f", "argu' and calls == []


def test_calls_come_out_as_soon_as_their_block_closes() -> None:
    s = splitter()
    assert s.feed("Sure.") == ("Sure.", [])
    assert s.feed("\n<tool_call>\n{") == ("", [])
    content, calls = s.feed('"name": "add", "arguments": {"a": 1}}\n</tool_call>')
    assert content == "" and calls[0].arguments == '{"a": 1}'


def test_history_tool_calls_reach_the_template_with_object_arguments() -> None:
    messages = template_messages(
        [
            ChatMessage("assistant", "", [ToolCall("call_1", "add", '{"a": 1}')]),
            ChatMessage("tool", "3", tool_call_id="call_1"),
            ChatMessage("assistant", "", [ToolCall("call_2", "add", "not json")]),
        ]
    )
    assert messages[0]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]
    assert messages[1] == {"role": "tool", "content": "3", "tool_call_id": "call_1"}
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == "not json"


def test_whitespace_before_a_block_that_does_not_parse_is_kept() -> None:
    text = "Sure:\n\n<tool_call>{bad}</tool_call>"
    for at in range(len(text) + 1):
        assert feed_in_two(text, at)[0] == text, at


def test_a_format_without_an_end_marker_closes_its_block_at_the_end() -> None:
    from mlx_lm.tool_parsers import mistral

    s = ToolCallSplitter(mistral.tool_call_start, mistral.tool_call_end, mistral.parse_tool_call, [])
    output = '[TOOL_CALLS]add[ARGS]{"a": 1}'
    content, calls = s.feed(output[:15])
    more, more_calls = s.feed(output[15:])
    tail, last = s.flush()
    assert content + more + tail == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls + more_calls + last] == [("add", {"a": 1})]
