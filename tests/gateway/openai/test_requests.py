import json

import pytest

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.openai.requests import decode_chat_request, message_text, stop_list

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes: object) -> bytes:
    return json.dumps({**OK, **changes}).encode()


def test_minimal_request() -> None:
    request = decode_chat_request(body())
    assert request.model == "m" and request.stream is False
    assert message_text(request.messages[0]) == "hi"


def test_text_parts_are_joined_and_neutral_values_accepted() -> None:
    request = decode_chat_request(
        body(
            messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            n=1,
            presence_penalty=0,
            logprobs=False,
            user="bot-7",
            stop="x",
        )
    )
    assert message_text(request.messages[0]) == "ab"
    assert stop_list(request.stop) == ["x"]


TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def test_tools_tool_turns_and_response_formats_are_accepted() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    request = decode_chat_request(
        body(
            messages=[
                {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "3", "tool_call_id": "call_1"},
            ],
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "add"}},
            parallel_tool_calls=False,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}},
            n=3,
        )
    )
    assert request.messages[1].tool_calls[0].function.arguments == '{"a": 1}'
    assert request.tools[0].function.name == "add"
    assert request.n == 3


@pytest.mark.parametrize(
    ("raw", "error", "param"),
    [
        (b"{not json", InvalidRequest, None),
        (b"[]", InvalidRequest, None),
        (json.dumps({"model": "m"}).encode(), InvalidRequest, "messages"),
        (json.dumps({"messages": OK["messages"]}).encode(), InvalidRequest, "model"),
        (body(messages="hi"), InvalidRequest, "messages"),
        (body(messages=[]), InvalidRequest, "messages"),
        (body(messages=[{"role": "wizard", "content": "x"}]), InvalidRequest, "messages[0].role"),
        (body(messages=[{"role": "user", "content": 5}]), InvalidRequest, "messages[0].content"),
        (body(temperature="hot"), InvalidRequest, "temperature"),
        (body(temperature=3), InvalidRequest, "temperature"),
        (body(max_tokens=0), InvalidRequest, "max_tokens"),
        (body(stream="yes"), InvalidRequest, "stream"),
        (body(stop=["a", "b", "c", "d", "e"]), InvalidRequest, "stop"),
        (body(frobnicate=True), UnsupportedParameter, "frobnicate"),
        (body(messages=[{"role": "user", "content": "x", "mood": 1}]), UnsupportedParameter, "messages[0].mood"),
        (body(n=0), InvalidRequest, "n"),
        (body(n=17), InvalidRequest, "n"),
        (body(response_format={"type": "xml"}), InvalidRequest, "response_format.type"),
        (body(response_format={"type": "json_schema"}), InvalidRequest, "response_format.json_schema"),
        (body(response_format={"type": "json_schema", "json_schema": {"schema": 1}}), InvalidRequest, "response_format.json_schema.schema"),
        (body(tools=[{"type": "function"}]), InvalidRequest, "tools[0].function"),
        (body(tools=[{"type": "function", "function": {"name": "no spaces"}}]), InvalidRequest, "tools[0].function.name"),
        (body(tool_choice="required"), InvalidRequest, "tool_choice"),
        (body(tools=[TOOL], tool_choice="sometimes"), InvalidRequest, "tool_choice"),
        (body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}), InvalidRequest, "tool_choice"),
        (body(messages=[{"role": "tool", "content": "3"}]), InvalidRequest, "messages[0].tool_call_id"),
        (body(messages=[{"role": "user", "content": "x", "tool_calls": []}]), InvalidRequest, "messages[0].tool_calls"),
        (body(top_logprobs=2), InvalidRequest, "top_logprobs"),
        (body(seed="three"), InvalidRequest, "seed"),
        (body(presence_penalty=3), InvalidRequest, "presence_penalty"),
        (body(logit_bias={"12": 101}), InvalidRequest, "logit_bias[...]"),
        (body(logit_bias={"fox": 1}), InvalidRequest, "logit_bias"),
        (body(top_logprobs=21), InvalidRequest, "top_logprobs"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            UnsupportedParameter,
            "messages[0].content",
        ),
    ],
)
def test_bad_input_names_the_field(raw: bytes, error: type, param: str | None) -> None:
    with pytest.raises(error) as info:
        decode_chat_request(raw)
    assert type(info.value) is error
    assert info.value.param == param
    assert info.value.body()["error"]["param"] == param
    if param:
        assert param.split(".")[-1].split("[")[0] in info.value.message
