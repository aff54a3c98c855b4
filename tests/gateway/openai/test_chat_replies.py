"""The SSE lines of a streamed chat completion: the per-token template against the plain encoding."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from opta_lmx.errors import ApiError
from opta_lmx.gateway.openai.chat_replies import DONE_LINE, ChatStream, error_line
from opta_lmx.proto import Finished, TokenChunk, ToolCall

TEXTS = [
    "",
    "hello",
    " world",
    'a "quoted" word',
    "back\\slash and /slash",
    "new\nline, tab\t, return\r",
    "\x00\x01\x1f\x7f",
    "é, 日本語, 🎉",
    "</script><!--",
    "\ufffd",
]
# JSON lets these stay raw inside a string; str.splitlines (httpx's aiter_lines) breaks on them.
LINE_BREAKS = ["\u2028", "\u2029", "\x85", "a\u2028b\u2029c\x85d", "\u2027\u202a"]


def previous_line(stream: ChatStream, text: str) -> bytes:
    """How a content chunk was encoded before the template: a dict, JSON-encoded per token."""
    chunk: dict[str, Any] = {
        "id": stream.id,
        "object": "chat.completion.chunk",
        "created": stream.created,
        "model": stream.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}],
    }
    if stream.include_usage:
        chunk["usage"] = None
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def payload(line: bytes) -> Any:
    assert line.startswith(b"data: ") and line.endswith(b"\n\n")
    return json.loads(line[len(b"data: ") : -2])


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_chunk_line_is_byte_for_byte_the_previous_encoding(text: str, include_usage: bool) -> None:
    stream = ChatStream("tiny", include_usage)
    assert stream.chunk_line(text) == previous_line(stream, text)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", LINE_BREAKS)
def test_line_breaking_characters_are_escaped_with_the_same_content(text: str, include_usage: bool) -> None:
    stream = ChatStream("tiny", include_usage)
    line = stream.chunk_line(text)
    assert payload(line) == payload(previous_line(stream, text))
    assert payload(line)["choices"][0]["delta"]["content"] == text
    assert line.decode().splitlines() == [line.decode()[:-2], ""]


@pytest.mark.parametrize("model", ['a "model"', "m\u2028odel", "日本"])
def test_the_template_holds_for_any_model_name(model: str) -> None:
    stream = ChatStream(model, include_usage=True)
    for text in TEXTS + LINE_BREAKS:
        line = stream.chunk_line(text)
        assert payload(line) == payload(previous_line(stream, text))
        assert len(line.decode().splitlines()) == 2
    assert payload(stream.role_line())["model"] == model


def test_role_and_finish_lines_keep_their_shape() -> None:
    stream = ChatStream("tiny", include_usage=True)
    role = payload(stream.role_line())
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert role["usage"] is None
    lines = stream.finish_line(Finished(1, "length", 5, 7, 3)) + stream.end_lines()
    assert lines.endswith(DONE_LINE)
    finish, usage = (payload(part + b"\n\n") for part in lines[: -len(DONE_LINE)].split(b"\n\n")[:2])
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert list(finish) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]


def test_without_usage_there_is_no_usage_key() -> None:
    stream = ChatStream("tiny", include_usage=False)
    assert "usage" not in payload(stream.chunk_line("x"))
    assert (stream.finish_line(Finished(1, "stop", 5, 7)) + stream.end_lines()).count(b"data: ") == 2  # finish + [DONE]


def test_n_choices_share_one_usage_with_the_prompt_counted_once() -> None:
    stream = ChatStream("tiny", include_usage=True)
    second = payload(stream.finish_line(Finished(2, "stop", 5, 3), index=1))
    assert second["choices"] == [{"index": 1, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    stream.finish_line(Finished(1, "length", 5, 7), index=0)
    usage = payload(stream.end_lines()[: -len(DONE_LINE)])
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 10,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_tool_call_deltas_are_indexed_within_their_choice() -> None:
    stream = ChatStream("tiny", include_usage=False)
    first = payload(stream.delta_line(TokenChunk(1, "", 1, None, "", [ToolCall("call_a", "f", '{"x": 1}')]), index=1))
    second = payload(stream.delta_line(TokenChunk(1, "", 1, None, "", [ToolCall("call_b", "g", "{}")]), index=1))
    other = payload(stream.delta_line(TokenChunk(1, "", 1, None, "", [ToolCall("call_c", "g", "{}")]), index=0))
    assert first["choices"][0]["index"] == 1
    assert first["choices"][0]["delta"] == {
        "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}, "index": 0}]
    }
    assert second["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert other["choices"][0]["delta"]["tool_calls"][0]["index"] == 0


def test_error_line_is_the_error_body() -> None:
    error = ApiError("broke\u2028here")
    line = error_line(error)
    assert payload(line) == error.body()
    assert len(line.decode().splitlines()) == 2
