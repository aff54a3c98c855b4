"""Ollama request bodies: what is accepted, what is refused and how, and keep_alive's forms."""

from __future__ import annotations

import json

import pytest

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.ollama.requests import decode_chat, decode_generate, decode_show, json_schema, keep_alive_seconds

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**changes: object) -> bytes:
    return json.dumps({**CHAT, **changes}).encode()


def test_what_ollamas_python_client_sends_is_accepted() -> None:
    request = decode_chat(
        chat(
            messages=[
                {"role": "SYSTEM", "content": "be brief"},
                {"role": "user", "content": "add"},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "hm",
                    "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "1", "tool_name": "add"},
            ],
            tools=[{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
            options={"temperature": 0, "num_predict": 5, "num_gpu": 99, "mirostat": 0, "stop": ["x"]},
            format={"type": "object"},
            keep_alive="5m",
            think="high",
            logprobs=True,
            top_logprobs=3,
            stream=False,
        )
    )
    assert [m.role for m in request.messages or ()] == ["system", "user", "assistant", "tool"]  # lowercased
    assert request.stream is False and request.think == "high" and request.options is not None
    assert (
        request.messages
        and request.messages[2].tool_calls
        and request.messages[2].tool_calls[0].function.arguments == {"a": 1}
    )


def test_nulls_read_as_absent_as_in_go() -> None:
    request = decode_chat(chat(messages=[{"role": "user", "content": None}], stream=None, options=None, format=None))
    assert request.messages and request.messages[0].content is None and request.stream is None


@pytest.mark.parametrize(
    ("changes", "error", "param"),
    [
        ({"model": ""}, InvalidRequest, "model"),
        ({"messages": [{"role": "robot", "content": "x"}]}, InvalidRequest, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            UnsupportedParameter,
            "messages[0].images",
        ),
        ({"messages": [{"role": "user", "content": "x", "mood": "ok"}]}, UnsupportedParameter, "messages[0].mood"),
        ({"options": {"temprature": 0.5}}, UnsupportedParameter, "options.temprature"),
        ({"options": {"top_k": 1.5}}, InvalidRequest, "options.top_k"),
        ({"options": {"seed": 2**70}}, InvalidRequest, "options.seed"),  # beyond Go's int
        ({"format": "xml"}, InvalidRequest, "format"),
        ({"think": "maximum"}, InvalidRequest, "think"),
        ({"top_logprobs": 21}, InvalidRequest, "top_logprobs"),
        ({"truncate": True}, UnsupportedParameter, "truncate"),
        ({"shift": True}, UnsupportedParameter, "shift"),
        ({"_debug_render_only": True}, UnsupportedParameter, "_debug_render_only"),
        ({"keep_alive": "a while"}, InvalidRequest, "keep_alive"),
        ({"warp": 9}, UnsupportedParameter, "warp"),
    ],
)
def test_refusals_name_the_field(changes: dict, error: type, param: str) -> None:
    with pytest.raises(error) as info:
        decode_chat(chat(**changes))
    assert type(info.value) is error and info.value.param == param


def test_generate_refuses_what_it_cannot_honour() -> None:
    ok = {"model": "m", "prompt": "p"}
    assert decode_generate(json.dumps({**ok, "system": "s", "suffix": "", "raw": False}).encode()).system == "s"
    for changes, param in [
        ({"suffix": "end"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1]}, "context"),
        ({"images": ["aGk="]}, "images"),
    ]:
        with pytest.raises(UnsupportedParameter) as info:
            decode_generate(json.dumps({**ok, **changes}).encode())
        assert info.value.param == param
    with pytest.raises(InvalidRequest, match="raw mode"):
        decode_generate(json.dumps({**ok, "raw": True, "system": "s"}).encode())


def test_show_takes_model_or_its_old_name() -> None:
    assert decode_show(b'{"model": "a"}') == "a"
    assert decode_show(b'{"name": "b", "verbose": true}') == "b"
    with pytest.raises(InvalidRequest, match="model is required"):
        decode_show(b"{}")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (300, 300.0),
        (2.5, 2.5),
        (-1, -1.0),
        (-30, -1.0),
        ("0", 0.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("-1m", -1.0),
        ("-1", -1.0),
        ("45", 45.0),
        ("inf", -1.0),
    ],
)
def test_keep_alive_forms(value: float | str | None, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5d", "nan", "1h 30m"])
def test_keep_alive_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        keep_alive_seconds(value)


def test_format_json_is_any_object() -> None:
    assert json_schema("json") == {"type": "object"}
    assert json_schema("") is None and json_schema(None) is None
    assert json_schema({"type": "array"}) == {"type": "array"}
