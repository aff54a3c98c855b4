"""Structured output, tools and n choices through the real server and the openai SDK, on the
tiny random-weight model: every valid JSON object and tool call here is the grammar's doing."""

from __future__ import annotations

import json
import random
from typing import Iterator

import jsonschema
import openai
import pytest

from tests.conftest import Server
from tests.support.schemas import random_schema

MESSAGES = [{"role": "user", "content": "Answer in JSON."}]
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}}, "required": ["city"], "additionalProperties": False},
    },
}


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    yield client
    client.close()


def test_json_schema_replies_validate(client: openai.OpenAI) -> None:
    rng = random.Random(3)
    for seed in range(6):
        schema = random_schema(rng)
        reply = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
            max_tokens=1500,
            seed=seed,
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_json_schema_streamed_text_is_the_same_json(client: openai.OpenAI) -> None:
    schema = random_schema(random.Random(5))
    args = dict(
        model="tiny",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        max_tokens=1500,
        temperature=0,
    )
    whole = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True) if c.choices)  # type: ignore[call-overload]
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), schema)


def test_json_object_mode_starts_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=50, seed=1
    )
    text = reply.choices[0].message.content or ""
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_required_tool_choice_returns_tool_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        tools=[ADD, WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=300,
        seed=4,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    specs = {t["function"]["name"]: t["function"]["parameters"] for t in (ADD, WEATHER)}  # type: ignore[index]
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), specs[call.function.name])


def test_named_tool_choice_streams_that_call_and_the_next_turn_takes_its_result(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[ADD, WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "weather"}},
            parallel_tool_calls=False,
            max_tokens=100,
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    (call,) = deltas
    assert call.index == 0 and call.function and call.function.name == "weather"
    assert json.loads(call.function.arguments or "") in ({"city": "Oslo"}, {"city": "Lima"})
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # The call and its result go back in the next turn, rendered by the model's template.
    follow_up = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": call.id or "", "type": "function", "function": {"name": "weather", "arguments": call.function.arguments or ""}}]},
            {"role": "tool", "tool_call_id": call.id or "", "content": '{"celsius": -3}'},
        ],
        tools=[ADD, WEATHER],  # type: ignore[list-item]
        max_tokens=5,
        temperature=0,
    )
    assert follow_up.choices[0].message.content is not None
    assert follow_up.usage and follow_up.usage.prompt_tokens > 100  # the tools and the call are in the prompt


def test_n_choices_each_have_their_index_and_usage_counts_them_all(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=8, seed=9, logit_bias={"2": -100}
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # n seeded choices differ
    assert reply.usage and reply.usage.completion_tokens == 24
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            n=3,
            max_tokens=8,
            seed=9,
            logit_bias={"2": -100},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [c.message.content for c in reply.choices]
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 24


def test_json_object_with_a_schema_is_enforced(client: openai.OpenAI) -> None:
    # What instructor's JSON mode sends (vLLM's and llama.cpp's extension of json_object).
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=200, seed=seed,
            response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-unknown-key]
        )
        value = json.loads(reply.choices[0].message.content or "")
        jsonschema.validate(value, {**schema, "additionalProperties": False})
